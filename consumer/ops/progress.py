"""Progress of a long copy (the initial snapshot, one file's load): rows done, rate and ETA.

On a terminal it is a one-line bar on stderr, redrawn in place. Without one (a container, systemd,
a CronJob) a bar is noise in the logs, so a log line says the same every few seconds instead
(PAYNORM_PROGRESS_SECONDS, default 30), with the figures as structured fields for a collector.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

from ..settings import DEFAULTS

log = logging.getLogger(__name__)

_BAR = 30
_REDRAW_SECONDS = 0.2  # a terminal bar is redrawn at most this often
_interval = float(DEFAULTS["PAYNORM_PROGRESS_SECONDS"])


def configure(seconds: float) -> None:
    """Seconds between progress log lines when stderr is not a terminal (the CLI passes the setting)."""
    global _interval
    _interval = float(seconds)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Rows done out of ``total`` (None: unknown), and optionally bytes read out of ``total_bytes``.

    ``update(rows)`` / ``rows(rows)`` and ``bytes(n)`` report absolute figures; ``close()`` ends the
    bar. ``initial`` is what was done before this process started (a resumed snapshot), left out of
    the rate. The ETA comes from the rows when their total is known, else from the bytes.
    """

    def __init__(self, label: str, total: int | None = None, *, total_bytes: int | None = None, initial: int = 0,
                 logger: logging.Logger | None = None, interval: float | None = None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label if len(label) <= 40 else "…" + label[-39:]
        self.total_rows = total
        self.total_bytes = total_bytes
        self.initial = self.done_rows = initial
        self.done_bytes = 0
        self.log = logger or log
        self.interval = _interval if interval is None else interval
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.start = self.last_draw = self.last_log = clock()

    @property
    def total(self) -> int | None:
        return self.total_rows

    def update(self, done: int) -> None:
        self.done_rows = done
        self._report()

    rows = update

    def bytes(self, n: int) -> None:
        self.done_bytes = n
        self._report()

    def rate(self, now: float | None = None) -> float:
        """Rows per second done by this process."""
        elapsed = (self.clock() if now is None else now) - self.start
        return (self.done_rows - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left, None when it cannot be told (no total, nothing done yet)."""
        now = self.clock() if now is None else now
        if self.total_rows:
            rate = self.rate(now)
            return max(self.total_rows - self.done_rows, 0) / rate if rate > 0 else None
        if self.total_bytes and self.done_bytes > 0:
            return (now - self.start) * max(self.total_bytes - self.done_bytes, 0) / self.done_bytes
        return None

    def _fraction(self) -> float:
        if self.total_rows:
            return min(self.done_rows / self.total_rows, 1.0)
        if self.total_bytes:
            return min(self.done_bytes / self.total_bytes, 1.0)
        return 0.0

    def _report(self, force: bool = False) -> None:
        now = self.clock()
        if self.tty:
            if force or now - self.last_draw >= _REDRAW_SECONDS:
                self.last_draw = now
                self._draw(now)
        elif now - self.last_log >= self.interval:
            self.last_log = now
            self._log_line(now)

    def _figures(self, now: float) -> tuple[str, float, float | None]:
        rows = f"{self.done_rows:,}" + (f"/{self.total_rows:,}" if self.total_rows else "") + " rows"
        if self.total_bytes:
            rows += f", {human_bytes(self.done_bytes)}/{human_bytes(self.total_bytes)}"
        return rows, self.rate(now), self.eta(now)

    def _draw(self, now: float) -> None:
        rows, rate, eta = self._figures(now)
        bar = f" [{'#' * int(self._fraction() * _BAR):<{_BAR}}]" if self.total_rows or self.total_bytes else ""
        self.stream.write(f"\r{self.label}{bar} {rows} {rate:,.0f}/s ETA {human_duration(eta)}\x1b[K")
        self.stream.flush()

    def _log_line(self, now: float) -> None:
        rows, rate, eta = self._figures(now)
        extra: dict[str, object] = {"progress": self.label, "rows_done": self.done_rows, "rows_total": self.total_rows,
                                    "rows_per_second": round(rate, 1),
                                    "eta_seconds": None if eta is None else round(eta, 1),
                                    "elapsed_seconds": round(now - self.start, 1)}
        if self.total_bytes is not None:
            extra.update(bytes_done=self.done_bytes, bytes_total=self.total_bytes)
        self.log.info("%s: %s, %s rows/s, ETA %s", self.label, rows, f"{rate:,.0f}", human_duration(eta), extra=extra)

    def close(self) -> None:
        if self.tty:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
