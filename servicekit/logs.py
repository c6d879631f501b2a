"""Structured logs: one JSON object a line, carrying the request id and organization.

The RPC wrapper in :mod:`servicekit.rpc` sets the context variables below for the
duration of each call, so any ``logging`` call made while serving it carries them.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
organization_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "organization", default=None
)
method_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("method", default=None)

# Attributes every LogRecord has; anything else passed through ``extra=`` is logged.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with the request context."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in (
            ("request_id", request_id_var),
            ("organization", organization_var),
            ("method", method_var),
        ):
            value = var.get()
            if value is not None:
                entry[key] = value
        entry.update(trace_fields())
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def trace_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span (W3C hex), when tracing is on."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


class TextFormatter(logging.Formatter):
    """A human-readable line with the request context, for local development."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            (key, value)
            for key, value in (
                ("request_id", request_id_var.get()),
                ("org", organization_var.get()),
                ("method", method_var.get()),
            )
            if value is not None
        ]
        fields += [
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _RECORD_FIELDS and not key.startswith("_")
        ]
        context = " ".join(f"{key}={value}" for key, value in fields)
        return f"{line} [{context}]" if context else line


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Routes every logger to stderr in the chosen format; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that log every connection at INFO would drown the service's own lines.
    for noisy in ("asyncio", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
