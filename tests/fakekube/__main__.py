"""Run the fake API server standalone: ``python -m tests.fakekube --port 8001``.

Latency (how long a request takes to answer, from its arrival, the fake's own work
included) is chosen per request by verb and resource; the first match wins among
``VERB:RESOURCE``, ``VERB``, ``RESOURCE`` (``--namespace-latency``) and the default
(``--latency``). Creating a namespace in 50 ms and every other write in 20 ms::

    python -m tests.fakekube --latency-rule create:namespaces=0.05 \
        --latency-rule create=0.02 --latency-rule update=0.02 --latency-rule delete=0.02
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from types import FrameType

from .faults import VERBS, latency_rule_key
from .server import DEFAULT_TOKEN, FakeKubeServer


def latency_rule(text: str) -> tuple[str, float]:
    """Parse ``VERB[:RESOURCE]=SECONDS`` (or ``RESOURCE=SECONDS``) for argparse."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected VERB[:RESOURCE]=SECONDS, got {text!r}")
    try:
        seconds = float(value)
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        return latency_rule_key(key), seconds
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakekube",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--token", default=DEFAULT_TOKEN, help="bearer token to require; empty accepts any request"
    )
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server to this path")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds a resource request takes when no rule matches (default 0)",
    )
    parser.add_argument(
        "--namespace-latency",
        type=float,
        default=None,
        help="seconds every namespace request takes, unless a verb rule matches "
        "(default: --latency)",
    )
    parser.add_argument(
        "--latency-rule",
        type=latency_rule,
        action="append",
        default=[],
        metavar="VERB[:RESOURCE]=SECONDS",
        help=f"seconds a request of this verb (one of {', '.join(VERBS)}), on this "
        "resource or any, takes; repeatable, e.g. create:namespaces=0.05",
    )
    parser.add_argument("--namespace-deletion-delay", type=float, default=0.2)
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="lower the CPU priority of request handling by this much (0-19; default 0). "
        "On a machine shared with the processes being measured, 19 keeps the fake's own "
        "work from preempting them, as an API server on other machines would not; held "
        "answers are still sent at the process's priority, on time",
    )
    parser.add_argument(
        "--idle",
        action="store_true",
        help="serve requests under the idle scheduling policy (Linux; --nice elsewhere): "
        "only on a processor nothing else wants, so the fake never preempts the process "
        "being measured; held answers are still sent at the process's priority, on time",
    )
    parser.add_argument(
        "--request-log",
        metavar="PATH",
        help="on stopping, write every served request to this file, one JSON object per "
        "line (the fields of RequestRecord; times on the monotonic clock, which other "
        "processes on the machine share)",
    )
    args = parser.parse_args(argv)

    # A process of its own: a handler thread whose latency is up takes the GIL from
    # a busy one within 0.1 ms rather than the default 5 ms, so answers leave on time.
    sys.setswitchinterval(0.0001)
    per_resource = {} if args.namespace_latency is None else {"namespaces": args.namespace_latency}
    server = FakeKubeServer(
        host=args.host,
        port=args.port,
        token=args.token or None,
        namespace_deletion_delay=args.namespace_deletion_delay,
        latency=args.latency,
        latency_by_resource=per_resource,
        latency_rules=dict(args.latency_rule),
        handler_niceness=args.nice,
        idle_handlers=args.idle,
    )
    server.start()
    print(f"fake Kubernetes API server on {server.url}", flush=True)
    rules = server.latency_rules()
    default = rules.pop("")
    described = ", ".join(f"{key}={value:g}s" for key, value in rules.items())
    print(f"latency: default {default:g}s; rules: {described or 'none'}", flush=True)
    if args.kubeconfig:
        print(f"kubeconfig: {server.write_kubeconfig(args.kubeconfig)}", flush=True)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed explicitly: a shell starting this in the background ignores SIGINT,
    # and SIGTERM (from a benchmark harness) should stop it just as cleanly.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stop.wait()
    finally:
        server.stop()
        if args.request_log:
            with open(args.request_log, "w", encoding="utf-8") as out:
                for record in server.requests():
                    out.write(json.dumps(dataclasses.asdict(record)) + "\n")
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
