"""Metrics that never hang: process counters present at zero from the start, database gauges from a
background cache with their age, /healthz and /readyz that say why (real clusters, real HTTP)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.ops import metrics
from consumer.ops.metrics import Health, MetricsServer, Refresher, families_from_status
from consumer.sources.postgres.replicate import replicate

from .conftest import Env, insert_rows


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_counters_exist_at_zero_for_every_known_label() -> None:
    samples = _samples(generate_latest(metrics.REGISTRY).decode())
    for outcome in metrics.CYCLE_OUTCOMES:
        assert ("paynorm_cycles_total", (("outcome", outcome),)) in samples
    for stage in metrics.STAGES:
        for outcome in metrics.STAGE_OUTCOMES:
            assert ("paynorm_stage_runs_total", (("outcome", outcome), ("stage", stage))) in samples
    for op in metrics.LANDING_OPS:
        assert ("paynorm_rows_landed_total", (("op", op),)) in samples
    info = [k for k in samples if k[0] == "paynorm_build_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == metrics.__version__


def test_gauges_from_a_status_snapshot() -> None:
    info: dict[str, Any] = {
        "lake_up": True,
        "cdc": [{"slot_name": "s1", "snapshot_done": True, "snapshot_rows": 10, "snapshot_total": 10,
                 "lag": {"seconds": 0.0}, "lake_slot": {"active": False, "wal_status": "extended",
                                                       "lag_bytes": 99, "retained_bytes": 120}}],
        "files": {"by_status": {"failed": 2}}, "poll": [{"lake_table": "public.t", "watermark": "2026-01-01T00:00:00+00:00"}],
    }
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> Any:
            return families_from_status(info)

    registry.register(Fixed())  # type: ignore[arg-type]
    samples = _samples(generate_latest(registry).decode())
    wal = {dict(k[1])["wal_status"]: v for k, v in samples.items() if k[0] == "paynorm_slot_wal_status"}
    assert wal == {"reserved": 0, "extended": 1, "unreserved": 0, "lost": 0}
    assert samples[("paynorm_cdc_lag_seconds", (("slot", "s1"),))] == 0
    assert samples[("paynorm_slot_active", (("slot", "s1"),))] == 0
    assert samples[("paynorm_files", (("status", "processing"),))] == 0
    assert samples[("paynorm_files", (("status", "failed"),))] == 2
    assert samples[("paynorm_poll_watermark_timestamp_seconds", (("table", "public.t"),))] == 1767225600
    assert samples[("paynorm_lake_up", ())] == 1
    names = {k[0] for k in samples}
    assert names <= set(metrics.REFRESHED_METRICS)


def test_health_says_why() -> None:
    h = Health(cycle_interval=10)
    assert h.live() == (True, "ok") and h.ready(None) == (True, "ok")
    alive = [True]
    h.consumer_alive = lambda: alive[0]
    alive[0] = False
    assert h.live() == (False, "the CDC consumer thread is not running") and h.consumer_up() == 0
    h.started_at -= 2 * 10 + 901  # started long ago, no cycle since
    ok, why = h.ready(None)
    assert not ok and why.startswith("no cycle ended for")
    h.cycle_ended("failed")  # a cycle that ended, even failed, means the loop turns
    assert h.ready(None) == (True, "ok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrapes_answer_at_once_while_the_warehouse_is_locked(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 4)
    assert replicate(env.settings(), once=True).exit_code == 0
    registry = CollectorRegistry()
    refresher = Refresher(env.settings(), interval=0.5, timeout=1.0)
    registry.register(refresher)
    health = Health(cycle_interval=60)
    server = MetricsServer("127.0.0.1", 0, refresher, health=health, registry=registry)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/readyz")[0] == 503  # nothing refreshed yet: not ready, and says so
        assert refresher.refresh()
        code, body = _get(base + "/readyz")
        assert code == 200 and body == "ok\n"
        assert _get(base + "/healthz") == (200, "ok\n")
        samples = _samples(_get(base + "/metrics")[1])
        assert samples[("paynorm_warehouse_up", ())] == 1 and samples[("paynorm_lake_up", ())] == 1
        assert samples[("paynorm_cdc_lag_seconds", (("slot", env.slot),))] == 0
        assert samples[("paynorm_landed_rows", (("state", "live"),))] == 4
        refresher.start()
        with env.wh_conn() as locker:
            locker.execute("begin")
            locker.execute("lock table raw.lake_transactions in access exclusive mode")
            time.sleep(1.5)  # refreshes run into the lock and time out meanwhile
            started = time.monotonic()
            code, text = _get(base + "/metrics")
            took = time.monotonic() - started
            locker.execute("rollback")
        assert code == 200 and took < 0.5, took
        samples = _samples(text)
        assert samples[("paynorm_landed_rows", (("state", "live"),))] == 4  # the last values read
        assert samples[("paynorm_metrics_refresh_age_seconds", ())] >= 0
    finally:
        refresher.stop()
        server.close()


def test_an_unreachable_warehouse_is_down_and_not_ready(env: Env) -> None:
    port = _free_port()
    settings = env.settings(warehouse_dsn=f"postgresql://nobody@127.0.0.1:{port}/none", lake_dsn="")
    registry = CollectorRegistry()
    refresher = Refresher(settings, interval=0.5, timeout=1.0)
    registry.register(refresher)
    server = MetricsServer("127.0.0.1", 0, refresher, health=Health(), registry=registry)
    try:
        assert refresher.refresh() is False
        samples = _samples(_get(f"http://127.0.0.1:{server.port}/metrics")[1])
        assert samples[("paynorm_warehouse_up", ())] == 0
        assert ("paynorm_metrics_refresh_age_seconds", ()) not in samples  # never refreshed: no age to claim
        code, why = _get(f"http://127.0.0.1:{server.port}/readyz")
        assert code == 503 and why.startswith("warehouse unreachable:")
    finally:
        server.close()


def test_a_port_in_use_is_a_configuration_error(env: Env) -> None:
    from consumer.errors import EXIT_CONFIG, ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            metrics.serve(env.settings(), port, "127.0.0.1")
        except ConfigError as e:
            assert f"cannot serve metrics on 127.0.0.1:{port}" in str(e) and e.exit_code == EXIT_CONFIG
        else:
            raise AssertionError("served on a port in use")
