"""Log output for the `paynorm` command: one JSON object per line for collectors, or short human lines.

Both formats stamp records in UTC with milliseconds (``2026-12-02T05:20:09.123Z``), so lines from
several pods and the warehouse's own timestamps compare without a time zone. In JSON the fields a
call passes with ``extra=`` (counts, LSNs, seconds) are top-level keys, and a traceback is one
string field, so a collector never splits an exception across records. Only the CLI configures
logging: the library just logs to per-module loggers.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from ..settings import LOG_FORMATS as FORMATS

# Loggers of libraries that are chatty at INFO, and the level they are held at.
_QUIET = {"psycopg.pool": logging.WARNING}


def utc_timestamp(created: float) -> str:
    """A record's time as ISO 8601 UTC with milliseconds and a ``Z``."""
    return datetime.fromtimestamp(created, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(_BaseJsonFormatter):
    """``{"ts", "level", "logger", "message", <extra fields>..., "exc_info"}``, one line per record."""

    def __init__(self) -> None:
        super().__init__(["levelname", "name", "message"], rename_fields={"levelname": "level", "name": "logger"},
                         json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["ts"] = utc_timestamp(record.created)  # first, so lines read in time order
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()


class HumanFormatter(logging.Formatter):
    """``2026-12-02T05:20:09.123Z INFO consumer.pipeline: cycle 1: ok ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_timestamp(record.created)


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else HumanFormatter()


def configure(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to stderr (or ``stream``) in ``fmt`` (human | json)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)
