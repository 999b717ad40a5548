"""Benchmark 2: first-run snapshot of existing lake rows vs a plain COPY between the two databases.

Consumer: `python -m consumer replicate --once` into a fresh warehouse with no state: creates the
slot, copies the table in keyset chunks (the snapshot), then drains an empty stream. Wall time of
the whole process, rows landed checked.

Baseline: ``psql -c "COPY (SELECT <every lake column> FROM raw_transactions) TO STDOUT" | psql -c
"COPY bench_copy FROM STDIN"`` into a table with the lake's column types and a primary key (the
landing has one too), in the same cluster, interleaved with the consumer runs.
"""

from __future__ import annotations

import shlex
from typing import Any

from .common import Bench, Figure, log, summary

COLUMNS = "id, data, merchant, transactional_id, source, created_at, processed, processed_at"
COPY_TABLE = """
drop table if exists bench_copy;
create table bench_copy (id uuid primary key, data jsonb, merchant jsonb, transactional_id uuid,
    source varchar(50), created_at timestamptz, processed boolean, processed_at timestamptz);
"""


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    lake_db = "lake_large"
    with b.admin() as conn:
        have = conn.execute("select 1 from pg_database where datname = %s", (lake_db,)).fetchone()
    if have:
        with b.admin(lake_db) as conn:
            n = conn.execute("select count(*) from public.raw_transactions").fetchone()[0]  # type: ignore[index]
        lake_dsn = b.cluster.dsn(lake_db, "lake_reader")
    else:  # run alone (--only snapshot): load its own lake
        lake_dsn = b.new_lake(lake_db)
        b.fill_lake(lake_db, s.snapshot_rows, txn_rows=1000)
        n = s.snapshot_rows
    psql = shlex.quote(str(b.bindir / "psql"))
    rates: list[float] = []
    base: list[float] = []
    rss: list[float] = []
    for r in range(s.snapshot_runs):
        wh_db = f"wh_snap_{r}"
        wh_dsn = b.new_warehouse(wh_db)
        with b.admin(wh_db) as conn:
            conn.execute(COPY_TABLE)
        src = shlex.quote(b.cluster.dsn(lake_db))
        dst = shlex.quote(b.cluster.dsn(wh_db))
        pipe = (f"set -o pipefail; {psql} -X -q -d {src} -c 'copy (select {COLUMNS} from public.raw_transactions) "
                f"to stdout' | {psql} -X -q -d {dst} -c 'copy bench_copy ({COLUMNS}) from stdin'")
        t = b.run(["bash", "-c", pipe], label=f"copy-baseline-{r}")
        base.append(n / t.seconds)
        slot = f"snap_{r}"
        timed = b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, slot), label=f"snapshot-{r}")
        landed = b.count(wh_db)
        if landed != n:
            raise RuntimeError(f"snapshot {r}: {landed:,} rows landed, expected {n:,} (log {timed.logfile})")
        rates.append(n / timed.seconds)
        rss.append(timed.peak_rss_mb)
        log(f"snapshot run {r}: consumer {n / timed.seconds:,.0f} rows/s ({timed.seconds:.1f}s, "
            f"{timed.peak_rss_mb:.0f} MB), COPY | COPY {n / t.seconds:,.0f} rows/s ({t.seconds:.1f}s)")
        with b.admin(lake_db) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        b.cluster.drop_database(wh_db)
    ratios = [a / c for a, c in zip(rates, base)]
    rat = summary(ratios)["median"]
    figures = [
        Figure("2 snapshot", f"first-run snapshot of {n:,} rows", "rows/s", summary(rates),
               "psql COPY TO STDOUT | COPY FROM STDIN", summary(base), rat, "≥ 0.7x", rat is not None and rat >= 0.7,
               note="replicate --once wall time, slot creation included"),
        Figure("2 snapshot", f"first-run snapshot of {n:,} rows, consumer peak RSS", "MB", summary(rss)),
    ]
    return figures, {"rows": n}
