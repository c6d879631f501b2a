"""The SDK README documents arkctl's real exit codes and every command group."""

from __future__ import annotations

import re

from agentready import cli
from agentready.cli.commands import cli as root

from servicekit.devstack import REPO_ROOT

README = (REPO_ROOT / "sdk" / "README.md").read_text()


def test_every_exit_code_is_documented() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \| ", README, flags=re.MULTILINE)}
    codes = {
        value for name, value in vars(cli).items() if name.isupper() and isinstance(value, int)
    }
    assert codes == documented
    assert cli.NOT_FOUND != cli.PERMISSION_DENIED != cli.INVALID_INPUT != cli.UNAVAILABLE


def test_every_command_group_is_in_the_readme() -> None:
    for name in root.commands:
        assert f"`{name}" in README, name
