"""Log lines of the server parts (``node``, ``api``): one event per line, as text for people or JSON for machines.

Rules:
- Level and format from ``--log-level`` / ``--log-format`` or ``SHARDWHEEL_LOG_LEVEL`` / ``SHARDWHEEL_LOG_FORMAT``
  (``info``, ``text``). Lines go to standard error.
- Text: ``2026-11-28T17:00:00.123Z INFO  engine node=dev-node-1 shard=12 message``; the logger's name without
  the package, the process's fields (``node``), then a record's own ``shard`` (``extra={"shard": n}``) when it
  has one. A newline in a message or a traceback is written as ``\\n``, so one event stays one line.
- JSON: ``{"ts", "level", "logger", "msg", ...fields, "shard"?, "exc"?}``, one object per line.
- Every library's records (uvicorn, asyncpg, trio-asyncio) go through the same handler.

Example::

    shardwheel node --log-format json ...   # {"ts":"2026-11-28T17:00:00.123Z","level":"INFO","logger":...}
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import msgspec

__all__ = ["FORMATS", "LEVELS", "configure", "default_format", "default_level"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


def default_level() -> str:
    value = os.environ.get("SHARDWHEEL_LOG_LEVEL", "info").lower()
    return value if value in LEVELS else "info"


def default_format() -> str:
    value = os.environ.get("SHARDWHEEL_LOG_FORMAT", "text").lower()
    return value if value in FORMATS else "text"


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _short(name: str) -> str:
    return name.rpartition(".")[2] if name.startswith(("scheduler_node.", "control_api.")) else name


class TextFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.prefix = "".join(f" {k}={v}" for k, v in fields.items())

    def format(self, record: logging.LogRecord) -> str:
        shard = getattr(record, "shard", None)
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        line = (f"{_timestamp(record.created)} {record.levelname:<5} {_short(record.name)}{self.prefix}"
                f"{'' if shard is None else f' shard={shard}'} {text}")  # fmt: skip
        return line.replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname,
                                 "logger": record.name, "msg": record.getMessage(), **self.fields}  # fmt: skip
        shard = getattr(record, "shard", None)
        if shard is not None:
            event["shard"] = shard
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(event).decode()


def configure(level: str | None = None, fmt: str | None = None, **fields: str) -> None:
    """Route every record to standard error in ``fmt`` at ``level`` and above; ``fields`` go on every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(fields) if (fmt or default_format()) == "json" else TextFormatter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, (level or default_level()).upper()))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []  # theirs would print the record a second time, in their own format
        logger.propagate = True
