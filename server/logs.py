"""Logging: readable lines or JSON lines (``BANDITD_LOG_FORMAT``) on stderr, and a rate limit
for the lines that clients can cause at will.

Structured events pass their fields as ``extra={"fields": {...}}``: the JSON format puts them
in the object, the text format appends them as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, the event's
    fields, and the traceback of an exception."""

    def __init__(self, tag: str = "") -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.tag:
            out["process"] = self.tag
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger[tag]: message key=value ...``."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            head, _, tail = line.partition("\n")  # a traceback stays below the fields
            extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
            line = f"{head} {extra}" + (f"\n{tail}" if tail else "")
        return line


def configure(level: str, fmt: str, tag: str = "") -> None:
    """Send every log line to stderr at ``level`` in format ``fmt`` ("text" or "json");
    ``tag`` names the process (a worker of several)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(tag) if fmt == "json" else TextFormatter(tag))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RateLimited:
    """Lets at most ``per_second`` lines through per second; the first line after a quiet
    second says how many were dropped. For lines a client can cause (its bad requests)."""

    def __init__(self, logger: logging.Logger, per_second: int = 10) -> None:
        self.logger = logger
        self.per_second = per_second
        self._second = 0
        self._count = 0
        self._dropped = 0

    def debug(self, message: str, *args: object, **fields: Any) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        second = int(time.monotonic())
        if second != self._second:
            if self._dropped:
                self.logger.debug("%d similar lines dropped (rate limit %d/s)", self._dropped,
                                  self.per_second)
            self._second, self._count, self._dropped = second, 0, 0
        if self._count >= self.per_second:
            self._dropped += 1
            return
        self._count += 1
        self.logger.debug(message, *args, extra={"fields": fields} if fields else None)
