"""Benchmark 1: CDC consumer throughput against raw decode of the same WAL.

For each case (N rows in T-row lake transactions) one lake is filled AFTER every slot exists, so
all slots see exactly the same WAL:

* consumer slots ``c_<case>_<transport>_<run>``, each created by a first `replicate --once` (run
  in-process: it only creates the slot and the state) on the still-empty lake into its own
  warehouse database;
* baseline slots, copied from each consumer slot (``pg_copy_logical_replication_slot``, same
  position), read by ``pg_recvlogical`` with the consumer's own wal2json options to /dev/null,
  ``--endpos`` = the lake's WAL position after the load.

Then, per run and transport, interleaved so machine drift hits both alike: the baseline decode,
then ``python -m consumer replicate --once --transport X`` (wall time of the whole process, rows
landed and committed, checked), and its peak RSS (wait4).
"""

from __future__ import annotations

from typing import Any

from consumer.sources.postgres.lake import describe_table, wal2json_options

from .common import Bench, Figure, log, summary

TRANSPORTS = ("stream", "sql")


def _recvlogical(b: Bench, lake_db: str, slot: str, endpos: str, label: str) -> float:
    opts: list[str] = []
    with b.admin(lake_db) as conn:
        o = wal2json_options(describe_table(conn, "public.raw_transactions"))  # the consumer's own options
    for i in range(0, len(o), 2):
        opts += ["-o", f"{o[i]}={o[i + 1]}"]
    argv = [str(b.bindir / "pg_recvlogical"), "-d", b.cluster.dsn(lake_db, "lake_reader"), "--slot", slot,
            "--start", "--no-loop", *opts, "-f", "/dev/null", "-E", endpos]
    return b.run(argv, label=label).seconds


def run_case(b: Bench, case: str, n: int, txn_rows: int, runs: int, keep_lake: bool = False) -> tuple[list[Figure], dict[str, Any]]:
    lake_db = f"lake_{case}"
    lake_dsn = b.new_lake(lake_db)
    pairs: list[tuple[str, int, str, str, str]] = []  # transport, run, slot, raw slot, warehouse db
    for r in range(runs):
        for t in TRANSPORTS:
            slot, wh_db = f"c_{case}_{t}_{r}", f"wh_{case}_{t}_{r}"
            wh_dsn = b.new_warehouse(wh_db)
            b.init_consumer(lake_dsn, wh_dsn, slot, t)
            raw = f"raw_{case}_{t}_{r}"
            with b.admin(lake_db) as conn:
                conn.execute("select pg_copy_logical_replication_slot(%s, %s)", (slot, raw))
            pairs.append((t, r, slot, raw, wh_db))
    log(f"cdc {case}: loading {n:,} demo rows in {txn_rows:,}-row transactions")
    insert_rate = b.fill_lake(lake_db, n, txn_rows=txn_rows)
    endpos = b.current_lsn(lake_db)
    with b.admin(lake_db) as conn:
        wal_bytes = conn.execute("select pg_wal_lsn_diff(%s::pg_lsn, min(restart_lsn)) from pg_replication_slots"
                                 " where database = current_database()", (endpos,)).fetchone()[0]  # type: ignore[index]
    res: dict[str, dict[str, list[float]]] = {t: {"rate": [], "raw": [], "rss": []} for t in TRANSPORTS}
    for t, r, slot, raw, wh_db in pairs:
        raw_s = _recvlogical(b, lake_db, raw, endpos, f"recvlogical-{raw}")
        wh_dsn = b.cluster.dsn(wh_db, "warehouse")
        timed = b.paynorm("replicate", "--once", "--transport", t, env=b.consumer_env(lake_dsn, wh_dsn, slot),
                          label=f"replicate-{slot}")
        landed = b.count(wh_db)
        if landed != n:
            raise RuntimeError(f"{slot}: {landed:,} rows landed, expected {n:,} (log {timed.logfile})")
        res[t]["rate"].append(n / timed.seconds)
        res[t]["raw"].append(n / raw_s)
        res[t]["rss"].append(timed.peak_rss_mb)
        log(f"cdc {case} {t} run {r}: consumer {n / timed.seconds:,.0f} rows/s ({timed.seconds:.1f}s, "
            f"{timed.peak_rss_mb:.0f} MB), raw decode {n / raw_s:,.0f} rows/s ({raw_s:.1f}s)")
        b.cluster.drop_database(wh_db)
    figures = []
    label = f"{n:,} rows, {txn_rows:,}-row txns" if txn_rows < n else f"{n:,} rows, one txn"
    for t in TRANSPORTS:
        val, base = summary(res[t]["rate"]), summary(res[t]["raw"])
        ratios = [a / c for a, c in zip(res[t]["rate"], res[t]["raw"])]
        rat = summary(ratios)["median"]
        figures.append(Figure("1 cdc", f"{t}: {label}", "rows/s", val, "pg_recvlogical wal2json -> /dev/null", base,
                              rat, "≥ 0.5x", rat is not None and rat >= 0.5,
                              note="ratio = median of per-run ratios"))
        figures.append(Figure("1 cdc", f"{t}: {label}, consumer peak RSS", "MB", summary(res[t]["rss"]),
                              target="flat in txn size"))
    extra = {"insert_rows_per_s": insert_rate, "wal_bytes": wal_bytes}
    if not keep_lake:
        b.drop_lake(lake_db)
    else:  # keep the rows (for the snapshot benchmark) but not the WAL the other slots pin
        with b.admin() as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
                         (lake_db,))
    return figures, extra


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    figures: list[Figure] = []
    extra: dict[str, Any] = {}
    b.records(max(s.cdc_small, s.cdc_large, s.cdc_one_txn))  # generate once; every lake takes a prefix
    for case, n, txn, runs, keep in (("small", s.cdc_small, 1000, s.cdc_runs, False),
                                     ("large", s.cdc_large, 1000, s.cdc_large_runs, True),
                                     ("onetxn", s.cdc_one_txn, s.cdc_one_txn, s.cdc_large_runs, False)):
        f, e = run_case(b, case, n, txn, runs, keep_lake=keep)
        figures += f
        extra[case] = e
    # memory flat in the transaction size: peak RSS with one huge txn vs 1,000-row txns of a bigger backlog
    for t in TRANSPORTS:
        big = next(f for f in figures if f.name.startswith(f"{t}: {s.cdc_one_txn:,} rows, one txn") and f.unit == "MB")
        small = next(f for f in figures if f.name.startswith(f"{t}: {s.cdc_large:,} rows") and f.unit == "MB")
        r = big.value["median"] / small.value["median"]
        big.baseline_name, big.baseline, big.ratio = f"same, {s.cdc_large:,} rows in 1,000-row txns", small.value, r
        big.met = r <= 1.25
        big.note = "ratio = RSS(one txn) / RSS(1,000-row txns); met if ≤ 1.25"
    return figures, extra
