"""Profile the normalization (`paynorm transform --full-refresh` = rule sync + `dbt build`) on demo rows:
where does a landed row's time go?

    .venv/bin/python -m bench.profile_transform --rows 100000
    .venv/bin/python -m bench.profile_transform --rows 100000 --explain
    .venv/bin/python -m bench.profile_transform --rows 100000 --copies 10 --incremental 10000

Starts its own cluster (like bench/run.py), lands ``--rows`` demo rows with `replicate --once`
(``--copies K`` then multiplies them in SQL, K times in all, each copy with its own lake_key and
load_seq: the same shapes and payloads, without waiting for the demo generator and the consumer),
times the plain ``INSERT INTO t SELECT * FROM raw.lake_transactions`` baseline and
`transform --full-refresh` (``--runs`` times, both in the same run), and prints the slowest dbt
nodes from run_results.json with the time per node kind (models, data tests, unit tests, seeds).

``--explain`` runs EXPLAIN (ANALYZE, BUFFERS) of the compiled SELECT of int_transactions_normalized
(target/compiled, with the session settings dbt gets from consumer/transform.py) and prints it.
``--incremental N`` lands N more demo rows afterwards and times an incremental build; with
``--compare`` the incremental result is then compared row for row with a ``--full-refresh`` of the
same landing (every column but the build's own normalized_at and build_xmin): the incremental path
must give exactly what a full build gives.
``--keep`` leaves the cluster running (its directory and a DSN are printed) for manual queries.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from consumer import transform as tf

from .common import Bench, create_plain_copy_table, log

MODEL = "int_transactions_normalized"


def _multiply(b: Bench, wh_db: str, copies: int) -> int:
    """Copies 2..K of every landed row (lake_key suffixed '~k', new load_seq); returns the row count."""
    with b.admin(wh_db) as conn:
        cols = [r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'raw'"
            " and table_name = 'lake_transactions' and column_name not in ('lake_key', 'load_seq')"
            " order by ordinal_position").fetchall()]
        ident = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        for k in range(2, copies + 1):
            conn.execute(sql.SQL(
                "insert into raw.lake_transactions (lake_key, {cols}) "
                "select lake_key || {suffix}, {cols} from raw.lake_transactions where lake_key not like '%~%'"
            ).format(cols=ident, suffix=sql.Literal(f"~{k}")))
            conn.commit()
        conn.execute("vacuum analyze raw.lake_transactions")
        return conn.execute("select count(*) from raw.lake_transactions").fetchone()[0]  # type: ignore[index]


def _plain_copy(b: Bench, wh_db: str, n: int) -> float:
    with b.admin(wh_db) as conn:
        create_plain_copy_table(conn)
        conn.commit()
        t0 = time.perf_counter()
        conn.execute("insert into bench_plain select * from raw.lake_transactions")
        conn.commit()
        secs = time.perf_counter() - t0
        conn.execute("drop table bench_plain")
    log(f"plain INSERT..SELECT of {n:,} rows: {secs:.2f}s ({n / secs:,.0f} rows/s)")
    return secs


def _nodes(home: Path) -> list[dict[str, Any]]:
    rr = home / "dbt" / "target" / "run_results.json"
    if not rr.exists():
        return []
    return json.loads(rr.read_text())["results"]


def _print_nodes(results: list[dict[str, Any]], top: int) -> None:
    kinds: dict[str, list[float]] = {}
    for r in results:
        kind = r["unique_id"].split(".", 1)[0]
        kinds.setdefault(kind, []).append(r["execution_time"])
    print("  time per node kind: " + ", ".join(
        f"{k} {sum(v):.1f}s ({len(v)})" for k, v in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))))
    print(f"  slowest {top} nodes:")
    for r in sorted(results, key=lambda r: -r["execution_time"])[:top]:
        print(f"    {r['execution_time']:8.2f}s  {r['status']:<7} {r['unique_id']}")


def _build(b: Bench, wh_dsn: str, home: Path, label: str, *, full_refresh: bool) -> tuple[float, list[dict[str, Any]]]:
    t = b.transform(wh_dsn, home, label, full_refresh=full_refresh, PAYNORM_LOG_LEVEL="WARNING")
    return t.seconds, _nodes(home)


def _explain(b: Bench, wh_db: str, home: Path) -> None:
    path = home / "dbt" / "target" / "compiled" / "paynorm" / "models" / "intermediate" / f"{MODEL}.sql"
    query = path.read_text()
    print(f"\n== EXPLAIN (ANALYZE, BUFFERS) of {path} ({len(query):,} characters of SQL)")
    with b.admin(wh_db) as conn:
        for name, value in tf.SESSION_SETTINGS.items():
            conn.execute("select set_config(%s, %s, false)", (name, value))
        t0 = time.perf_counter()
        plan = conn.execute(sql.SQL("explain (analyze, buffers) {}").format(sql.SQL(query))).fetchall()  # type: ignore[arg-type]
        log(f"explain analyze: {time.perf_counter() - t0:.1f}s")
        conn.rollback()
    for (line,) in plan:
        print(line)


_BUILD_COLUMNS = ("normalized_at", "build_xmin")  # differ between any two builds by design


def _snapshot(b: Bench, wh_db: str, table: str) -> int:
    """Copy the normalized model (without the build's own columns) to ``table``; rows copied."""
    with b.admin(wh_db) as conn:
        cols = [r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " order by ordinal_position", (f"{tf.DEFAULT_SCHEMA}_intermediate", MODEL)).fetchall()
            if r[0] not in _BUILD_COLUMNS]
        conn.execute(sql.SQL("drop table if exists {t}; create table {t} as select {c} from {m}").format(
            t=sql.Identifier(table), c=sql.SQL(", ").join(map(sql.Identifier, cols)),
            m=sql.Identifier(f"{tf.DEFAULT_SCHEMA}_intermediate", MODEL)))
        conn.commit()
        return conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()[0]  # type: ignore[index]


def _compare(b: Bench, wh_db: str, left: str, right: str) -> tuple[int, int]:
    """Rows of ``left`` not in ``right`` and the other way round (multiset difference)."""
    with b.admin(wh_db) as conn:
        diff = sql.SQL("select count(*) from (select * from {} except all select * from {}) d")
        a = conn.execute(diff.format(sql.Identifier(left), sql.Identifier(right))).fetchone()[0]  # type: ignore[index]
        z = conn.execute(diff.format(sql.Identifier(right), sql.Identifier(left))).fetchone()[0]  # type: ignore[index]
        return a, z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="demo rows landed by the consumer")
    ap.add_argument("--copies", type=int, default=1, help="multiply the landed rows in SQL (K copies in all)")
    ap.add_argument("--runs", type=int, default=1, help="full builds (each next to its own plain copy)")
    ap.add_argument("--incremental", type=int, default=0, help="then land N more rows and build incrementally")
    ap.add_argument("--compare", action="store_true",
                    help="after --incremental: compare its result row for row with a full refresh")
    ap.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) the model's compiled SQL")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = ap.parse_args()
    if args.compare and not args.incremental:
        ap.error("--compare compares an incremental build: give --incremental N")
    b = Bench(quick=True)
    try:
        lake_db, wh_db = "lake_prof", "wh_prof"
        lake_dsn, wh_dsn = b.new_lake(lake_db), b.new_warehouse(wh_db)
        b.fill_lake(lake_db, args.rows, txn_rows=1000)
        t = b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, "prof"), label="replicate")
        log(f"landed {args.rows:,} rows in {t.seconds:.1f}s")
        n = _multiply(b, wh_db, args.copies) if args.copies > 1 else b.count(wh_db)
        log(f"{n:,} landed rows")
        home = b.base / "home-prof"
        for r in range(args.runs):
            plain = _plain_copy(b, wh_db, n)
            secs, results = _build(b, wh_dsn, home, f"full-{r}", full_refresh=True)
            print(f"\n== transform --full-refresh #{r + 1} of {n:,} rows: {secs:.1f}s ({n / secs:,.0f} rows/s); "
                  f"plain copy {plain:.2f}s ({n / plain:,.0f} rows/s); ratio {plain / secs:.4f}x")
            _print_nodes(results, args.top)
        if args.explain:
            _explain(b, wh_db, home)
        if args.incremental:
            b.fill_lake(lake_db, args.incremental, txn_rows=1000, seed=21)
            b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, "prof"), label="replicate-incr")
            secs, results = _build(b, wh_dsn, home, "incremental", full_refresh=False)
            print(f"\n== incremental transform: {args.incremental:,} new rows on top of {n:,}: {secs:.1f}s")
            _print_nodes(results, args.top)
            if args.compare:
                rows = _snapshot(b, wh_db, "bench_incremental")
                secs, _ = _build(b, wh_dsn, home, "full-compare", full_refresh=True)
                _snapshot(b, wh_db, "bench_full")
                only_incr, only_full = _compare(b, wh_db, "bench_incremental", "bench_full")
                print(f"\n== row for row, {rows:,} rows: incremental result vs a full refresh ({secs:.1f}s) of the "
                      f"same landing: {only_incr:,} rows only in the incremental one, {only_full:,} only in the full "
                      f"one ({'identical' if only_incr == only_full == 0 else 'DIFFERENT'})")
        if args.keep:
            print(f"\ncluster kept: {b.base} (warehouse DSN {wh_dsn}; superuser DSN {b.cluster.dsn(wh_db)});"
                  f" stop with: {b.bindir}/pg_ctl -D {b.cluster.datadir} stop")
    finally:
        if not args.keep:
            b.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
