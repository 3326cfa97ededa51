"""Logging setup: one JSON object per line on stdout by default, or text for humans.

Every record logged while a request is being served carries that request's
id (``request_id``), the one its response's ``x-request-id`` header names,
so a client's complaint leads straight to the daemon's lines about it.
Structured fields (``extra=``) are kept in both formats: JSON keys, or
``key=value`` after the message in text. A Secret among them, at any depth,
shows as ``***``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import sys
import time
from typing import Any

import orjson

from modelpool.config.secrets import REDACTED, Secret, redacted

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "request_id"}

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request being served by the current task, if any."""


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    request_id = getattr(record, "request_id", None)
    if request_id is not None:
        fields["request_id"] = request_id
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{moment}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=redacted).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _text(value: Any) -> str:
    if isinstance(value, Secret):
        return REDACTED
    text = value if isinstance(value, str) else orjson.dumps(value, default=redacted).decode()
    return text if text and " " not in text and '"' not in text else orjson.dumps(text).decode()


class BatchedLines:
    """Lines for stdout written in batches — one write per ``interval``, not one
    syscall per line — for the access log, the one logger that speaks per request.
    Lines keep the formatter's shape; they may reach stdout up to ``interval`` after
    the other loggers' lines of the same moment."""

    def __init__(self, formatter: logging.Formatter, interval: float = 0.1) -> None:
        self._formatter = formatter
        self._interval = interval
        self._lines: list[str] = []
        self._pending: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.add(self._formatter.format(record))

    def emit_fields(self, name: str, message: str, fields: dict[str, Any]) -> None:
        """One INFO line from ``fields``, without a LogRecord when the format is JSON
        (the per-request path: a record costs more than the line)."""
        if not isinstance(self._formatter, JsonFormatter):
            record = logging.getLogger(name).makeRecord(
                name, logging.INFO, "", 0, message, (), None, extra=fields
            )
            self.emit(record)
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "ts": f"{self._stamp}.{int(now * 1000) % 1000:03d}Z",
            "level": "info",
            "logger": name,
            "msg": message,
            **fields,
        }
        self.add(orjson.dumps(entry, default=redacted).decode())

    def add(self, line: str) -> None:
        self._lines.append(line)
        if self._pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._pending = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._pending = None
        if self._lines:
            lines, self._lines = self._lines, []
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()


BATCHED: BatchedLines | None = None
"""Set by setup_logging (the daemon); tests that capture logging leave it None."""


def flush_logs() -> None:
    if BATCHED is not None:
        BATCHED.flush()


def batched_record(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log one INFO line through the batched writer when the daemon set one up, else
    through ``logging`` (where tests can capture it)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    if BATCHED is None:
        logger.info(message, extra=fields)
        return
    BATCHED.emit_fields(logger.name, message, fields)


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    global BATCHED
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    BATCHED = BatchedLines(formatter)
    atexit.register(BATCHED.flush)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected" is noise
    logging.getLogger("mcp").setLevel(logging.WARNING)  # a line per MCP request otherwise
