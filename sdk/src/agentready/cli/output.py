"""How ``arkctl`` prints results: a Rich table for people, JSON or YAML for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click
import yaml  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "yaml")
Row = Mapping[str, Any]


def as_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as plain JSON data, with the proto's field names."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True)


def _console() -> Console:
    # Not a terminal (a pipe, a test): wide enough that cells are never cut.
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(width=max(console.width, 200), soft_wrap=False)
    return console


def emit(
    data: Row | Sequence[Row],
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Prints one object (a two-column table) or a list (one row each) in ``fmt``."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    if fmt == "yaml":
        plain = json.loads(json.dumps(data, default=str))
        click.echo(yaml.safe_dump(plain, sort_keys=True).rstrip())
        return
    console = _console()
    if isinstance(data, Mapping):
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")  # never cut a value short
        for name in columns or list(data):
            table.add_row(name, _cell(data.get(name)))
        console.print(table)
        return
    names = list(columns or (list(data[0]) if data else []))
    table = Table(title=title)
    for name in names:
        table.add_column(name.upper(), overflow="fold")
    for row in data:
        table.add_row(*(_cell(row.get(name)) for name in names))
    console.print(table)
    if not data:
        click.echo("(none)", err=True)


def message(text: str, fmt: str, **fields: Any) -> None:
    """A one-line outcome ("deleted ..."): text for people, an object for scripts."""
    if fmt == "table":
        click.echo(text)
    else:
        emit(fields, fmt)
