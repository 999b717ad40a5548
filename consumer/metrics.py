"""Prometheus metrics: process counters updated where the work happens, and warehouse/lake gauges
read at scrape time (so they are right even when another process did the work)."""

from __future__ import annotations

import logging
from typing import Iterator

import psycopg
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .settings import Settings

log = logging.getLogger(__name__)

ROWS_LANDED = Counter("paynorm_rows_landed", "Landing rows written, by operation (I U D T S P F).", ["op"])
BATCHES = Counter("paynorm_batches", "Warehouse transactions committed by the CDC consumer.")
BATCH_SECONDS = Histogram("paynorm_batch_duration_seconds", "Time to write one batch and its position.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
STAGE_SECONDS = Histogram("paynorm_stage_duration_seconds", "Duration of a pipeline stage.", ["stage"],
                          buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
STAGE_RUNS = Counter("paynorm_stage_runs", "Pipeline stage runs by outcome.", ["stage", "outcome"])
CYCLES = Counter("paynorm_cycles", "Pipeline cycles by outcome.", ["outcome"])
STREAM_RESTARTS = Counter("paynorm_cdc_consumer_restarts", "Restarts of the CDC consumer thread of `paynorm run` after it stopped.")
LAST_SUCCESS = Gauge("paynorm_last_successful_cycle_timestamp_seconds", "Unix time of the last successful cycle.")
LLM_CALLS = Counter("paynorm_llm_calls", "LLM requests made by this process.")
LLM_TOKENS = Counter("paynorm_llm_tokens", "LLM tokens spent by this process.", ["direction"])


class WarehouseCollector(Collector):
    """Gauges read from the warehouse (and the lake) at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from .status import collect as status_collect

        try:
            info = status_collect(self.settings)
        except psycopg.Error as e:
            log.warning("metrics: warehouse unreachable: %s", str(e).strip().splitlines()[0])
            up = GaugeMetricFamily("paynorm_warehouse_up", "1 when the warehouse answered the last scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("paynorm_warehouse_up", "1 when the warehouse answered the last scrape.")
        up.add_metric([], 1)
        yield up
        slot = info.get("lake_slot") or {}
        for name, doc, value in (
            ("paynorm_replication_lag_bytes", "WAL bytes between the lake's position and the slot's confirmed one.",
             slot.get("lag_bytes")),
            ("paynorm_replication_lag_seconds", "Seconds since the last applied lake commit while the slot lags.",
             info.get("lag_seconds")),
            ("paynorm_slot_retained_wal_bytes", "WAL the slot keeps on the lake.", slot.get("retained_bytes")),
        ):
            if value is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(value))
                yield g
        landing = info.get("landing") or {}
        g = GaugeMetricFamily("paynorm_landed_rows", "Rows in raw.lake_transactions.", labels=["state"])
        for state in ("live", "deleted", "decode_errors"):
            if landing.get(state) is not None:
                g.add_metric([state], float(landing[state]))
        yield g
        layers = info.get("layers") or {}
        if layers:
            ev = GaugeMetricFamily("paynorm_events", "Normalized payment events by status.", labels=["status"])
            for status, n in layers.get("events_by_status", {}).items():
                ev.add_metric([status], float(n))
            yield ev
            q = GaugeMetricFamily("paynorm_quarantine_rows", "Quarantined rows by reason.", labels=["reason"])
            for reason, n in layers.get("quarantine_by_reason", {}).items():
                q.add_metric([reason], float(n))
            yield q
            p = GaugeMetricFamily("paynorm_pending_llm_rows", "Rows waiting for the LLM step.")
            p.add_metric([], float(layers.get("pending", 0)))
            yield p
        llm = info.get("llm") or {}
        if llm:
            c = GaugeMetricFamily("paynorm_llm_calls_recorded", "LLM calls in paynorm.llm_calls by outcome.",
                                  labels=["outcome"])
            for outcome, n in llm.get("by_outcome", {}).items():
                c.add_metric([outcome], float(n))
            yield c
            t = GaugeMetricFamily("paynorm_llm_tokens_recorded", "LLM tokens in paynorm.llm_calls.",
                                  labels=["direction"])
            t.add_metric(["in"], float(llm.get("tokens_in", 0)))
            t.add_metric(["out"], float(llm.get("tokens_out", 0)))
            yield t


_served: list[object] = []


def serve(settings: Settings, port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on ``addr:port`` from a background thread (once per process)."""
    if _served:
        return
    REGISTRY.register(WarehouseCollector(settings))
    _served.append(start_http_server(port, addr=addr))
    log.info("metrics on http://%s:%d/metrics", addr, port)
