"""Benchmark 4: normalization (`consumer.transform.transform`, i.e. `paynorm transform` = sync rules +
`dbt build`, tests included) against a plain copy of the landing table.

* full: a warehouse with ``transform_rows`` landed demo rows (replicated by the consumer), built with
  ``--full-refresh``; rows/s vs ``INSERT INTO t SELECT * FROM raw.lake_transactions`` (t = LIKE the
  landing with its storage settings, no indexes: ``common.create_plain_copy_table``) of the same rows.
* incremental: ``transform_incr`` new lake rows replicated on top, then an incremental build; its time
  vs the same ``transform_incr`` rows on top of a warehouse holding only ``transform_incr`` rows.

The slowest dbt nodes of each build (from run_results.json) are kept in the JSON results.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .common import Bench, Figure, create_plain_copy_table, log, summary


def _build(b: Bench, wh_dsn: str, label: str, *, full_refresh: bool = False) -> tuple[float, list[tuple[str, float]]]:
    """One build (Bench.transform) and its slowest dbt nodes."""
    home = b.base / f"home-tf-{label}"
    t = b.transform(wh_dsn, home, f"transform-{label}", full_refresh=full_refresh)
    nodes: list[tuple[str, float]] = []
    rr = home / "dbt" / "target" / "run_results.json"
    if rr.exists():
        data = json.loads(rr.read_text())
        nodes = sorted(((r["unique_id"], round(r["execution_time"], 2)) for r in data["results"]),
                       key=lambda x: -x[1])[:6]
    log(f"transform {label}: {t.seconds:.1f}s; slowest nodes {nodes[:3]}")
    return t.seconds, nodes


def _warehouse(b: Bench, name: str, n: int, seed: int) -> tuple[str, str, str]:
    lake_db, wh_db = f"lake_{name}", f"wh_{name}"
    lake_dsn, wh_dsn = b.new_lake(lake_db), b.new_warehouse(wh_db)
    b.fill_lake(lake_db, n, txn_rows=1000, seed=seed)
    b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, name), label=f"replicate-{name}")
    return lake_db, lake_dsn, wh_dsn


def _add_rows(b: Bench, lake_db: str, lake_dsn: str, wh_dsn: str, slot: str, n: int, seed: int) -> None:
    b.fill_lake(lake_db, n, txn_rows=1000, seed=seed)
    b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, slot), label=f"replicate-{slot}")


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    n, k, runs = s.transform_rows, s.transform_incr, s.transform_runs
    lake_db, lake_dsn, wh_dsn = _warehouse(b, "tf", n, seed=7)  # the CDC lakes' records: generated once
    wh_db = "wh_tf"
    full, plain, nodes = [], [], {}
    for r in range(runs):
        with b.admin(wh_db) as conn:
            create_plain_copy_table(conn)
            t0 = time.perf_counter()
            conn.execute("insert into bench_plain select * from raw.lake_transactions")
            plain.append(n / (time.perf_counter() - t0))
            conn.execute("drop table bench_plain")
        secs, nodes[f"full_{r}"] = _build(b, wh_dsn, f"full-{r}", full_refresh=True)
        full.append(n / secs)
    # incremental on top of n, and on top of k
    big, small = [], []
    small_lake, small_dsn, small_wh = _warehouse(b, "tfs", k, seed=12)
    _build(b, small_wh, "small-initial", full_refresh=True)
    for r in range(runs):
        _add_rows(b, lake_db, lake_dsn, wh_dsn, "tf", k, seed=20 + r)
        secs, nodes[f"incr_big_{r}"] = _build(b, wh_dsn, f"incr-big-{r}")
        big.append(secs)
        _add_rows(b, small_lake, small_dsn, small_wh, "tfs", k, seed=30 + r)
        secs, nodes[f"incr_small_{r}"] = _build(b, small_wh, f"incr-small-{r}")
        small.append(secs)
    b.drop_lake(lake_db)
    b.drop_lake(small_lake)
    b.cluster.drop_database(wh_db)
    b.cluster.drop_database("wh_tfs")
    fr = summary(full)["median"] / summary(plain)["median"]
    ir = summary(big)["median"] / summary(small)["median"]
    figures = [
        Figure("4 transform", f"full build of {n:,} landed rows", "rows/s", summary(full),
               "INSERT INTO t (LIKE the landing, its storage) SELECT * FROM raw.lake_transactions", summary(plain), fr, "≥ 0.3x", fr >= 0.3,
               note="paynorm transform --full-refresh: rule sync + dbt build incl. tests"),
        Figure("4 transform", f"incremental: {k:,} new rows on top of {n:,}", "s", summary(big),
               f"{k:,} new rows on top of {k:,}", summary(small), ir, "≤ 2x", ir <= 2,
               note=f"ratio = time(on top of {n:,}) / time(on top of {k:,}); the small side grows by {k:,} per run"),
    ]
    return figures, {"slowest_nodes": nodes}
