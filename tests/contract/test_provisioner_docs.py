"""The README documents every ProvisionerService setting, with its real default."""

from __future__ import annotations

import re

from provisioner.app import SETTINGS
from servicekit.devstack import REPO_ROOT
from servicekit.settings import load_settings

README = (REPO_ROOT / "README.md").read_text()


def test_every_provisioner_setting_is_in_the_readme_table() -> None:
    for name, setting in SETTINGS.items():
        assert f"| `{name}` | {setting.default} | {setting.description} |" in README, name


def test_documented_provisioner_defaults_are_the_real_ones() -> None:
    settings = load_settings("provisioner", {}, extra=SETTINGS)
    table = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, flags=re.MULTILINE))
    for name, value in settings.extra.items():
        documented = table[name].strip()
        if isinstance(value, float):
            assert float(documented) == value, name
        else:
            assert documented == str(value), name
