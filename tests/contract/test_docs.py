"""The README documents every setting the code reads, and the two commands."""

from __future__ import annotations

import re

from servicekit.devstack import REPO_ROOT
from servicekit.settings import COMMON_SETTINGS, load_settings

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    for name, default, _ in COMMON_SETTINGS:
        assert f"| `{name}` | {default} |" in README, name


def test_documented_defaults_are_the_real_ones() -> None:
    settings = load_settings("config", {})
    table = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, flags=re.MULTILINE))
    assert table["LOG_LEVEL"].strip() == settings.log_level
    assert table["LOG_FORMAT"].strip() == settings.log_format
    assert float(table["SHUTDOWN_GRACE_SECONDS"]) == settings.shutdown_grace_seconds
    assert int(table["DB_POOL_MAX"]) == settings.db_pool_max
    assert table["DATABASE_URL"].strip() == settings.database_url


def test_readme_shows_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README


def test_every_config_setting_is_in_the_readme_with_its_real_default() -> None:
    from config_service.app import SETTINGS

    settings = load_settings("config", {}, extra=SETTINGS)
    for name, setting in SETTINGS.items():
        assert f"| `{name}` | {setting.default} | {setting.description} |" in README, name
        value = settings.extra[name]
        assert value == type(value)(setting.default), name


def test_every_tenant_setting_is_in_the_readme_with_its_real_default() -> None:
    from tenant_service.app import SETTINGS

    settings = load_settings("tenant", {}, extra=SETTINGS)
    for name, setting in SETTINGS.items():
        assert f"| `{name}` | {setting.default} | {setting.description} |" in README, name
        value = settings.extra[name]
        assert value == type(value)(setting.default), name


def test_the_readme_shows_the_permission_matrix_of_the_code() -> None:
    from tenant_service.domain.permissions import PUBLIC, RULES, markdown_table

    table = markdown_table()
    assert table in README
    for method in (*PUBLIC, *RULES):
        assert f"| `{method}` |" in table
