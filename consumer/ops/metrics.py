"""Prometheus metrics and the health endpoints of `paynorm run --metrics-port`.

Two kinds of metrics. Process counters and histograms are updated where the work happens; every
known label value starts at zero, so ``rate()`` has a series from the first scrape. Gauges read from
the warehouse and the lake (lag, slots, rows per layer...) are refreshed by a background thread
under statement and lock timeouts and served from that cache with their age: a scrape never waits
on a database, even one with a table locked for minutes.

The same HTTP server answers ``/healthz`` (the process and its CDC consumer thread are alive:
Kubernetes' liveness probe) and ``/readyz`` (the warehouse answered the last refresh and a cycle
ended recently: the readiness probe).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator

import psycopg
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .. import __version__
from ..errors import ConfigError
from ..settings import Settings

__all__ = ["BATCHES", "BATCH_SECONDS", "CONSUMER_UP", "CYCLES", "HEALTH", "LLM_CALLS", "LLM_TOKENS",
           "REFRESHED_METRICS", "ROWS_LANDED", "STAGE_RUNS", "STAGE_SECONDS", "STREAM_RESTARTS", "Health",
           "MetricsServer", "Refresher", "serve"]

log = logging.getLogger(__name__)

STAGES = ("land", "transform", "llm", "marts")
STAGE_OUTCOMES = ("ok", "failed", "skipped")
CYCLE_OUTCOMES = ("ok", "failed", "stopped")
#: Landing operations: insert, update, delete, truncate (CDC), snapshot, poll, file.
LANDING_OPS = ("I", "U", "D", "T", "S", "P", "F")
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
FILE_STATUSES = ("processing", "completed", "failed")

# -- process metrics -------------------------------------------------------------------------------

BUILD_INFO = Gauge("paynorm_build_info", "Always 1: the paynorm, Python and dbt versions of this process.",
                   ["version", "python_version", "dbt_version"])
CYCLE_INTERVAL = Gauge("paynorm_cycle_interval_seconds", "Configured seconds between the starts of two cycles.")
CYCLES = Counter("paynorm_cycles", "Pipeline cycles ended, by outcome.", ["outcome"])
STAGE_RUNS = Counter("paynorm_stage_runs", "Pipeline stage runs by outcome.", ["stage", "outcome"])
STAGE_SECONDS = Histogram("paynorm_stage_duration_seconds", "Duration of a pipeline stage.", ["stage"],
                          buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
ROWS_LANDED = Counter("paynorm_rows_landed",
                      "Landing rows written, by operation (I U D T from CDC, S snapshot, P poll, F file).", ["op"])
BATCHES = Counter("paynorm_cdc_batches", "Warehouse transactions committed by the CDC consumer.")
BATCH_SECONDS = Histogram("paynorm_cdc_batch_duration_seconds", "Time to write one CDC batch and its position.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CONSUMER_UP = Gauge("paynorm_cdc_consumer_up",
                    "1 while the CDC consumer thread of a continuous `paynorm run` is alive, 0 once it died.")
STREAM_RESTARTS = Counter("paynorm_cdc_consumer_restarts", "Restarts of the CDC consumer thread after it stopped.")
LLM_CALLS = Counter("paynorm_llm_requests", "LLM requests made by this process.")
LLM_TOKENS = Counter("paynorm_llm_tokens", "LLM tokens spent by this process.", ["direction"])
REFRESH_FAILURES = Counter("paynorm_metrics_refresh_failures",
                           "Background refreshes of the database-derived metrics that failed.")


def _dbt_version() -> str:
    try:
        return metadata.version("dbt-core")
    except metadata.PackageNotFoundError:
        return "none"


BUILD_INFO.labels(__version__, platform.python_version(), _dbt_version()).set(1)
for _outcome in CYCLE_OUTCOMES:
    CYCLES.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
    for _outcome in STAGE_OUTCOMES:
        STAGE_RUNS.labels(_stage, _outcome)
for _op in LANDING_OPS:
    ROWS_LANDED.labels(_op)
for _direction in ("in", "out"):
    LLM_TOKENS.labels(_direction)

# -- health ----------------------------------------------------------------------------------------


@dataclass
class Health:
    """What /healthz and /readyz answer from: set by the pipeline as it runs."""

    started_at: float = field(default_factory=time.time)
    cycle_interval: float = 300.0
    consumer_alive: Callable[[], bool] | None = None  # set while a continuous CDC run has a consumer thread
    last_cycle_ended_at: float | None = None
    last_cycle_outcome: str | None = None

    def cycle_ended(self, outcome: str) -> None:
        self.last_cycle_ended_at = time.time()
        self.last_cycle_outcome = outcome

    def consumer_up(self) -> float:
        return 1.0 if self.consumer_alive is None or self.consumer_alive() else 0.0

    @property
    def cycle_deadline(self) -> float:
        """A cycle should have ended within this many seconds (two intervals and a long cycle)."""
        return 2 * self.cycle_interval + 900

    def live(self) -> tuple[bool, str]:
        if self.consumer_alive is not None and not self.consumer_alive():
            return False, "the CDC consumer thread is not running"
        return True, "ok"

    def ready(self, refresher: Refresher | None) -> tuple[bool, str]:
        if refresher is not None:
            if refresher.warehouse_up is not True:
                return False, f"warehouse unreachable: {refresher.last_error or 'not checked yet'}"
            age = refresher.age()
            if age is None or age > max(3 * refresher.interval, 60):
                return False, "the warehouse has not answered a metrics refresh recently"
        since = time.time() - (self.last_cycle_ended_at or self.started_at)
        if since > self.cycle_deadline:
            return False, f"no cycle ended for {since:.0f} s (expected within {self.cycle_deadline:.0f} s)"
        return True, "ok"


HEALTH = Health()
CONSUMER_UP.set_function(HEALTH.consumer_up)

# -- database-derived gauges -------------------------------------------------------------------------

#: Names of the gauges the refresher serves (the dashboard and alert tests check queries against them).
REFRESHED_METRICS = (
    "paynorm_metrics_refresh_timestamp_seconds", "paynorm_metrics_refresh_age_seconds",
    "paynorm_warehouse_up", "paynorm_lake_up",
    "paynorm_cdc_lag_seconds", "paynorm_slot_active", "paynorm_slot_wal_status", "paynorm_slot_lag_bytes",
    "paynorm_slot_retained_wal_bytes", "paynorm_snapshot_done", "paynorm_snapshot_rows_copied",
    "paynorm_snapshot_rows_expected", "paynorm_poll_watermark_timestamp_seconds", "paynorm_files",
    "paynorm_landed_rows", "paynorm_normalized_events", "paynorm_quarantined_rows", "paynorm_pending_llm_rows",
    "paynorm_pending_llm_shapes", "paynorm_last_successful_cycle_timestamp_seconds", "paynorm_last_cycle_failed",
    "paynorm_llm_recorded_calls",
)


def _gauge(name: str, doc: str, labels: Iterable[str] = (), samples: Iterable[tuple[Iterable[str], Any]] = ()
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        if value is not None:
            family.add_metric(list(values), float(value))
    return family


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def families_from_status(info: dict[str, Any]) -> list[Metric]:
    """The refreshed gauges from one :func:`consumer.ops.status.collect` result."""
    out: list[Metric] = []
    if "lake_up" in info:
        out.append(_gauge("paynorm_lake_up", "1 when the lake answered the last refresh.", (),
                          [((), 1 if info["lake_up"] else 0)]))
    slots = info.get("cdc") or []
    s = "slot"
    out.append(_gauge("paynorm_cdc_lag_seconds",
                      "Age of the oldest committed lake change not yet applied to the warehouse; 0 when caught up.",
                      [s], [((x["slot_name"],), x["lag"]["seconds"]) for x in slots if x.get("lag")]))
    lake_slots = [(x["slot_name"], x["lake_slot"]) for x in slots if x.get("lake_slot")]
    out.append(_gauge("paynorm_slot_active", "1 when a process streams from the slot.", [s],
                      [((n,), 1 if ls["active"] else 0) for n, ls in lake_slots]))
    out.append(_gauge("paynorm_slot_wal_status",
                      "1 for the slot's current wal_status (reserved, extended, unreserved, lost), 0 for the others.",
                      [s, "wal_status"],
                      [((n, st), 1 if ls["wal_status"] == st else 0) for n, ls in lake_slots for st in WAL_STATUSES]))
    out.append(_gauge("paynorm_slot_lag_bytes", "Lake WAL between pg_current_wal_lsn() and the slot's confirmed "
                      "position (the whole instance's WAL, not only the table's changes).", [s],
                      [((n,), ls["lag_bytes"]) for n, ls in lake_slots]))
    out.append(_gauge("paynorm_slot_retained_wal_bytes", "WAL the slot keeps on the lake (current LSN - restart_lsn).",
                      [s], [((n,), ls["retained_bytes"]) for n, ls in lake_slots]))
    out.append(_gauge("paynorm_snapshot_done", "1 once the slot's initial snapshot is complete.", [s],
                      [((x["slot_name"],), 1 if x["snapshot_done"] else 0) for x in slots]))
    out.append(_gauge("paynorm_snapshot_rows_copied", "Rows the initial snapshot has copied.", [s],
                      [((x["slot_name"],), x["snapshot_rows"]) for x in slots]))
    out.append(_gauge("paynorm_snapshot_rows_expected", "Rows the initial snapshot expects (an estimate at its start).",
                      [s], [((x["slot_name"],), x["snapshot_total"]) for x in slots]))
    out.append(_gauge("paynorm_poll_watermark_timestamp_seconds",
                      "The poll source's watermark (lake created_at of the newest row landed), as Unix time.",
                      ["table"], [((p["lake_table"],), _epoch(p["watermark"])) for p in info.get("poll") or []]))
    files = (info.get("files") or {}).get("by_status") or {}
    out.append(_gauge("paynorm_files", "Files in paynorm.processed_files, by status.", ["status"],
                      [((st,), files.get(st, 0)) for st in sorted(set(FILE_STATUSES) | set(files))]))
    landing = info.get("landing") or {}
    out.append(_gauge("paynorm_landed_rows", "Rows in raw.lake_transactions, by state.", ["state"],
                      [((st,), landing.get(st)) for st in ("live", "deleted", "decode_errors")]))
    layers = info.get("layers") or {}
    out.append(_gauge("paynorm_normalized_events", "Rows of normalized_payment_events by canonical status.",
                      ["status"], [((k,), v) for k, v in (layers.get("events_by_status") or {}).items()]))
    out.append(_gauge("paynorm_quarantined_rows", "Rows of normalization_quarantine by reason.", ["reason"],
                      [((k,), v) for k, v in (layers.get("quarantine_by_reason") or {}).items()]))
    out.append(_gauge("paynorm_pending_llm_rows", "Landed rows waiting for the LLM step.", (),
                      [((), layers.get("pending"))]))
    out.append(_gauge("paynorm_pending_llm_shapes", "Distinct payload shapes waiting for the LLM step.", (),
                      [((), layers.get("pending_shapes"))]))
    runs = info.get("runs") or {}
    out.append(_gauge("paynorm_last_successful_cycle_timestamp_seconds",
                      "End time of the last successful cycle recorded in paynorm.runs (any process).", (),
                      [((), _epoch(runs.get("last_ok_at")))]))
    out.append(_gauge("paynorm_last_cycle_failed", "1 when the latest ended cycle in paynorm.runs failed.", (),
                      [((), None if runs.get("last_failed") is None else int(runs["last_failed"]))]))
    llm = info.get("llm") or {}
    out.append(_gauge("paynorm_llm_recorded_calls", "LLM calls in paynorm.llm_calls over 7 days, by outcome.",
                      ["outcome"], [((k,), v) for k, v in (llm.get("by_outcome") or {}).items()]))
    return out


class Refresher(Collector):
    """Refreshes the database-derived gauges in a background thread; ``collect`` (a scrape) only
    reads the cache. A failed refresh keeps the last values, says the warehouse is down and lets
    the refresh age grow: stale numbers are visible as stale, never served as fresh."""

    def __init__(self, settings: Settings, interval: float | None = None, timeout: float | None = None) -> None:
        self.settings = settings
        self.interval = max(interval if interval is not None else settings.metrics_refresh, 0.5)
        self.timeout = timeout if timeout is not None else min(max(self.interval, 2.0), 10.0)
        self.warehouse_up: bool | None = None
        self.last_error: str | None = None
        self.refreshed_at: float | None = None  # time.time() of the last successful refresh
        self._families: list[Metric] = []
        self._last: dict[str, Any] = {}  # the last status read, for the parts a refresh could not read
        self._errors: list[str] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """One refresh (the thread's loop calls this); True when the warehouse answered."""
        from .status import collect

        try:
            info = collect(self.settings, timeout=self.timeout)
        except (psycopg.Error, OSError) as e:
            message = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if self.warehouse_up is not False:
                log.warning("metrics: warehouse unreachable: %s", message)
            self.warehouse_up, self.last_error = False, message
            REFRESH_FAILURES.inc()
            return False
        # a part that timed out (a locked table) keeps its last values; the others are fresh
        failed = {e.split(":", 1)[0] for e in info.get("errors") or []}
        for key in failed:
            info[key] = self._last.get(key)
        self._last = info
        families = families_from_status(info)
        if info.get("errors") != self._errors:
            for error in info.get("errors") or []:
                log.warning("metrics: kept the last values of %s", error)
            self._errors = info.get("errors")
        with self._lock:
            self._families = families
            self.warehouse_up, self.last_error = True, None
            self.refreshed_at = time.time()
        return True

    def age(self) -> float | None:
        return None if self.refreshed_at is None else max(time.time() - self.refreshed_at, 0.0)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - a bug here must not end the metrics, only show in them
                    log.exception("metrics refresh failed")
                    REFRESH_FAILURES.inc()
                self._stop.wait(max(self.interval - (time.monotonic() - started), 0.1))

        self._thread = threading.Thread(target=loop, name="paynorm-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = list(self._families)
        yield _gauge("paynorm_warehouse_up", "1 when the warehouse answered the last metrics refresh.", (),
                     [((), 1 if self.warehouse_up else 0)])
        yield _gauge("paynorm_metrics_refresh_timestamp_seconds",
                     "Unix time of the last successful refresh of the database-derived metrics.", (),
                     [((), self.refreshed_at)])
        yield _gauge("paynorm_metrics_refresh_age_seconds",
                     "Seconds since the last successful refresh of the database-derived metrics.", (),
                     [((), self.age())])
        yield from families

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: registering must not run collect()


# -- the HTTP server ---------------------------------------------------------------------------------


class MetricsServer:
    """/metrics, /healthz and /readyz on one port, served from daemon threads."""

    def __init__(self, addr: str, port: int, refresher: Refresher | None, health: Health = HEALTH,
                 registry: Any = REGISTRY) -> None:
        self.refresher = refresher
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._answer(200, encoder(registry), content_type)
                elif path in ("/healthz", "/readyz"):
                    ok, why = health.live() if path == "/healthz" else health.ready(server.refresher)
                    self._answer(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain; charset=utf-8")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
                pass

        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="paynorm-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_served: list[MetricsServer] = []


def serve(settings: Settings, port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Start the refresher and the HTTP server (once per process); the server."""
    if _served:
        return _served[0]
    # the cycle interval (HEALTH, paynorm_cycle_interval_seconds) is set by Pipeline.run, which owns it
    refresher = Refresher(settings)
    try:
        server = MetricsServer(addr, port, refresher)
    except OSError as e:  # port in use, address not on this host: a configuration problem, said once
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}") from None
    REGISTRY.register(refresher)
    refresher.start()
    _served.append(server)
    log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", addr, server.port)
    return server
