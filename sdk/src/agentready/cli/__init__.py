"""``arkctl``: the operators' command line of agent-ready (installed with the SDK).

Exit codes (also in ``arkctl --help`` and the SDK README):

===  =====================================================================
0    success
1    any other failure (a server-side error, a broken settings file, ...)
2    invalid input: a usage error, or ``INVALID_ARGUMENT`` from a server
3    not found (``NOT_FOUND``)
4    permission denied (``PERMISSION_DENIED``)
5    not authenticated: not logged in, or the token was refused
6    unavailable: the server could not be reached, timed out, or rate-limited the call
7    conflict: ``ALREADY_EXISTS``, ``ABORTED`` (etag/revision), ``FAILED_PRECONDITION``
8    rollout incomplete: ``config rollout --wait`` found clients that refused the
     revision, or did not apply it in time
130  interrupted (Ctrl-C)
===  =====================================================================
"""

from __future__ import annotations

import sys

import click

from agentready import errors

OK = 0
FAILURE = 1
INVALID_INPUT = 2
NOT_FOUND = 3
PERMISSION_DENIED = 4
UNAUTHENTICATED = 5
UNAVAILABLE = 6
CONFLICT = 7
ROLLOUT_INCOMPLETE = 8
INTERRUPTED = 130

_EXIT_CODES: dict[type[errors.AgentReadyError], int] = {
    errors.InvalidArgument: INVALID_INPUT,
    errors.NotFound: NOT_FOUND,
    errors.PermissionDenied: PERMISSION_DENIED,
    errors.Unauthenticated: UNAUTHENTICATED,
    errors.Unavailable: UNAVAILABLE,
    errors.DeadlineExceeded: UNAVAILABLE,
    errors.ResourceExhausted: UNAVAILABLE,
    errors.AlreadyExists: CONFLICT,
    errors.Conflict: CONFLICT,
    errors.FailedPrecondition: CONFLICT,
}


def exit_code(error: errors.AgentReadyError) -> int:
    """The exit code for a failed call (see the module doc)."""
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is None:
        return FAILURE  # a limit of what is stored, not a rate: retrying won't help
    for kind, code in _EXIT_CODES.items():
        if isinstance(error, kind):
            return code
    return FAILURE


def main(argv: list[str] | None = None) -> int:
    """Runs ``arkctl`` and returns its exit code (the console script exits with it)."""
    from agentready.cli.commands import cli

    try:
        result = cli.main(args=argv, prog_name="arkctl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return INTERRUPTED
    except click.ClickException as error:
        error.show()
        return INVALID_INPUT if error.exit_code == 2 else FAILURE
    except errors.AgentReadyError as error:
        detail = f"error: {error}"
        for field, description in error.field_violations.items():
            detail += f"\n  {field}: {description}"
        click.echo(detail, err=True)
        return exit_code(error)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return INTERRUPTED
    return result if isinstance(result, int) else OK


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
