"""Benchmark 3: replication latency under a steady writer.

A writer in this process inserts demo records at ``latency_rate`` rows/s (one transaction every
50 ms) for ``latency_seconds`` while `python -m consumer replicate` runs continuously. Latency of a
row = ``loaded_at - committed_at`` in ``raw.lake_transactions``: warehouse clock at the upsert minus
the lake's commit timestamp (wal2json ``timestamp``); both are this machine's clock.

`stream` is the figure the target applies to; `sql` (full mode, polling every 0.5 s) is shown for
comparison — its latency is bounded below by the poll interval by design.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

from consumer.demo import insert_records

from .common import REPO, Bench, Figure, log, summary

TICK = 0.05


def _wait_streaming(b: Bench, lake_db: str, slot: str, transport: str) -> None:
    """Until the consumer holds its slot (stream); the sql transport holds it only while peeking,
    so it gets a fixed 3 s to start."""
    deadline = time.monotonic() + (30 if transport == "stream" else 3)
    while time.monotonic() < deadline:
        if transport == "stream":
            with b.admin(lake_db) as conn:
                row = conn.execute("select active from pg_replication_slots where slot_name = %s", (slot,)).fetchone()
            if row and row[0]:
                return
        time.sleep(0.1)
    if transport == "stream":
        raise RuntimeError(f"latency {slot}: the consumer did not start streaming within 30 s")


def _one(b: Bench, transport: str, r: int) -> dict[str, float]:
    s = b.sizes
    lake_db, wh_db, slot = f"lake_lat_{transport}_{r}", f"wh_lat_{transport}_{r}", f"lat_{transport}_{r}"
    lake_dsn, wh_dsn = b.new_lake(lake_db), b.new_warehouse(wh_db)
    env = b.consumer_env(lake_dsn, wh_dsn, slot, PAYNORM_TRANSPORT=transport, POLL_INTERVAL_SECONDS="0.5")
    b.init_consumer(lake_dsn, wh_dsn, slot, transport)
    total = int(s.latency_rate * s.latency_seconds)
    per_tick = max(1, int(s.latency_rate * TICK))
    recs = b.records(total, seed=100 + r)
    logfile = open(b.logs / f"latency-{slot}.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "consumer", "replicate"], cwd=REPO, env=env, stdout=logfile,
                            stderr=subprocess.STDOUT)
    try:
        _wait_streaming(b, lake_db, slot, transport)
        with b.admin(lake_db) as conn:
            t0 = time.monotonic()
            late = 0
            for i in range(0, total, per_tick):
                due = t0 + (i // per_tick) * TICK
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                elif now - due > TICK:
                    late += 1
                insert_records(conn, iter(recs[i:i + per_tick]), chunk=per_tick)
            wrote = time.monotonic() - t0
        deadline = time.monotonic() + 120
        while b.count(wh_db) < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
    landed = b.count(wh_db)
    if landed != total:
        raise RuntimeError(f"latency {slot}: {landed:,} of {total:,} rows landed")
    with b.admin(wh_db) as conn:
        p50, p99, mx = conn.execute(
            "select percentile_cont(0.5) within group (order by x), percentile_cont(0.99) within group (order by x),"
            " max(x) from (select extract(epoch from loaded_at - committed_at) as x from raw.lake_transactions) t"
        ).fetchone()  # type: ignore[misc]
    b.drop_lake(lake_db)
    b.cluster.drop_database(wh_db)
    log(f"latency {transport} run {r}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {mx * 1000:.0f} ms; "
        f"writer {total / wrote:,.0f} rows/s ({late} late ticks)")
    return {"p50": p50 * 1000, "p99": p99 * 1000, "max": mx * 1000, "writer_rate": total / wrote, "late": late}


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    figures: list[Figure] = []
    extra: dict[str, Any] = {}
    for transport in ("stream",) if b.quick else ("stream", "sql"):
        runs = [_one(b, transport, r) for r in range(s.latency_runs)]
        extra[transport] = runs
        what = f"{transport}: {s.latency_rate:,} rows/s for {s.latency_seconds:.0f} s"
        rate = summary([x["writer_rate"] for x in runs])["median"]
        note = f"writer achieved {rate:,.0f} rows/s" + ("" if transport == "stream" else "; sql polls every 0.5 s")
        figures.append(Figure("3 latency", f"{what}, p50", "ms", summary([x["p50"] for x in runs]), note=note))
        p99 = summary([x["p99"] for x in runs])
        figures.append(Figure("3 latency", f"{what}, p99", "ms", p99, target="p99 < 1000 ms",
                              met=(p99["max"] < 1000) if transport == "stream" else None,
                              note="met if every run's p99 < 1 s"))
        figures.append(Figure("3 latency", f"{what}, max", "ms", summary([x["max"] for x in runs])))
    return figures, extra
