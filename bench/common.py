"""Shared plumbing for the benchmarks: one private cluster, lakes filled by the demo generator,
the consumer run as a real subprocess, timing and statistics.

Everything here is measurement support; nothing in it is used by paynorm itself.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from consumer import devdb
from consumer.demo import generate_records, insert_records

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics ----------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    """median / min / max of a list of measurements (the unit is the caller's)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": len(vals),
            "values": [round(v, 4) for v in vals]}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a.get("median") or not b.get("median"):
        return None
    return a["median"] / b["median"]


@dataclass
class Figure:
    """One line of the results table."""

    bench: str
    name: str
    unit: str
    value: dict[str, Any]  # summary() of the measured thing
    baseline_name: str = ""
    baseline: dict[str, Any] | None = None  # summary() of the baseline measured in the same run
    ratio: float | None = None  # value / baseline (or baseline / value for times: always "higher is better")
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- baselines -----------------------------------------------------------------------------------


def create_plain_copy_table(conn: psycopg.Connection, name: str = "bench_plain") -> None:
    """The plain-copy baseline's target: a table like the landing, with its storage (column storage and
    compression, toast_tuple_target) and no indexes, so that the copy moves the rows as they are
    stored instead of compressing them again with the defaults."""
    t = sql.Identifier(name)
    conn.execute(sql.SQL("drop table if exists {}").format(t))
    conn.execute(sql.SQL("create table {} (like raw.lake_transactions including storage including compression)")
                 .format(t))
    row = conn.execute("select reloptions from pg_class where oid = 'raw.lake_transactions'::regclass").fetchone()
    for option in (row[0] if row and row[0] else []):
        key, _, value = option.partition("=")
        conn.execute(sql.SQL("alter table {} set ({} = {})").format(t, sql.Identifier(key), sql.Literal(value)))


# -- machine -------------------------------------------------------------------------------------


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine_info(cluster: devdb.Cluster) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    with cluster.connect() as conn:
        pg = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
    w2j = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", f"postgresql-{cluster.major}-wal2json"],
                         capture_output=True, text=True, check=False)
    return {
        "cores": os.cpu_count(), "ram_gb": ram_gb, "cpu": cpu, "kernel": platform.release(),
        "postgresql": pg, "wal2json": w2j.stdout.strip() if w2j.returncode == 0 else "?",
        "python": platform.python_version(), "psycopg": _version("psycopg"), "dbt_core": _version("dbt-core"),
        "dbt_postgres": _version("dbt-postgres"),
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": _git("status", "--short", "--", "consumer", "models", "macros", "mappings").splitlines(),
    }


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else "?"


# -- the cluster -----------------------------------------------------------------------------------


class Bench:
    """One cluster (lake databases and warehouse databases side by side), started for this run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        # Not a 0700 mkdtemp parent: the server runs as the postgres user when we are root.
        self.base = Path(tempfile.mkdtemp(prefix="paynorm-bench-"))
        self.base.chmod(0o755)
        self.cluster = devdb.Cluster(self.base / "pg")
        if not devdb.wal2json_installed(self.cluster.bindir):
            raise SystemExit(f"wal2json missing: apt-get install -y postgresql-{self.cluster.major}-wal2json")
        self.cluster.init({"max_replication_slots": "40", "max_wal_senders": "40",
                           "max_slot_wal_keep_size": "'40GB'", "max_wal_size": "'4GB'"})
        self.cluster.start()
        self.logs = self.base / "logs"
        self.logs.mkdir()
        self.counter = 0
        self.sizes = QUICK if quick else FULL
        self._records: dict[int, list[dict[str, Any]]] = {}

    def close(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def bindir(self) -> Path:
        return self.cluster.bindir

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return self.cluster.connect(dbname)

    def new_lake(self, name: str) -> str:
        """A fresh lake database with the lake table; the read-only replication role's DSN."""
        self.cluster.drop_database(name)
        return devdb.setup_lake(self.cluster, name)

    def new_warehouse(self, name: str) -> str:
        self.cluster.drop_database(name)
        return devdb.setup_warehouse(self.cluster, name, owner="warehouse")

    def drop_lake(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
                         (name,))
        self.cluster.drop_database(name)

    def records(self, n: int, seed: int = 7) -> list[dict[str, Any]]:
        """The first ``n`` demo records for ``seed`` (consumer.demo.generate_records), generated once per run:
        generating costs ~4k records/s on this machine, as much as the whole insert."""
        cached = self._records.get(seed, [])
        if len(cached) < n:
            t0 = time.perf_counter()
            cached = list(generate_records(n, seed=seed))
            self._records[seed] = cached
            log(f"generated {n:,} demo records in {time.perf_counter() - t0:.0f}s")
        return cached[:n]

    def fill_lake(self, lake_db: str, n: int, *, txn_rows: int, seed: int = 7) -> float:
        """``n`` demo records (consumer.demo) in transactions of ``txn_rows``; insert rows/s."""
        recs = self.records(n, seed)
        t0 = time.perf_counter()
        with self.admin(lake_db) as conn:
            insert_records(conn, iter(recs), chunk=txn_rows)
        return n / (time.perf_counter() - t0)

    def current_lsn(self, lake_db: str) -> str:
        with self.admin(lake_db) as conn:
            return conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]

    def count(self, wh_db: str, where: str = "true") -> int:
        with self.admin(wh_db) as conn:
            if conn.execute("select to_regclass('raw.lake_transactions')").fetchone()[0] is None:  # type: ignore[index]
                return 0
            return conn.execute(f"select count(*) from raw.lake_transactions where {where}").fetchone()[0]  # type: ignore[index]

    # -- processes --------------------------------------------------------------------------------

    def consumer_env(self, lake_dsn: str, wh_dsn: str, slot: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DATALAKE_DATABASE_URL": lake_dsn, "DATABASE_URL": wh_dsn, "PAYNORM_SLOT": slot,
                    "PAYNORM_HOME": str(self.base / "home"), "PAYNORM_LOG_LEVEL": "INFO"})
        env.update(extra)
        return env

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, label: str = "run",
            check: bool = True, shell: bool = False) -> Timed:
        """Run a command to completion; wall time and peak RSS (ru_maxrss of this child, via wait4)."""
        self.counter += 1
        logfile = self.logs / f"{self.counter:03d}-{label}.log"
        with open(logfile, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, shell=shell)
            peak = _PeakRss(proc.pid)
            _, status, _usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            peak.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if check and proc.returncode != 0:
            tail = logfile.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{label} failed with exit code {proc.returncode}:\n{tail}")
        return Timed(wall, peak.mb, proc.returncode, logfile)

    def init_consumer(self, lake_dsn: str, wh_dsn: str, slot: str, transport: str = "stream") -> None:
        """Slot + state for a consumer, by a first `replicate --once` on an empty lake, in-process:
        it is set-up, not a measurement, and a subprocess costs a second of interpreter start-up."""
        from consumer.sources.postgres.replicate import replicate
        from consumer.settings import Settings

        res = replicate(Settings(lake_dsn=lake_dsn, warehouse_dsn=wh_dsn, slot=slot, transport=transport), once=True)
        if res.exit_code != 0:
            raise RuntimeError(f"initial replicate of slot {slot} failed: {res.message}")

    def paynorm(self, *args: str, env: dict[str, str], label: str, check: bool = True) -> Timed:
        return self.run([sys.executable, "-m", "consumer", *args], env=env, label=label, check=check)

    def transform(self, wh_dsn: str, home: Path, label: str, *, full_refresh: bool = False, **extra: str) -> Timed:
        """`paynorm transform` on ``wh_dsn`` in a subprocess (dbt keeps global state and takes seconds to
        import, and a cron job pays both too), its dbt files under ``home`` (run_results.json there)."""
        env = self.consumer_env("", wh_dsn, "unused", PAYNORM_HOME=str(home), **extra)
        return self.paynorm("transform", *(["--full-refresh"] if full_refresh else []), env=env, label=label)


class _PeakRss:
    """Peak RSS of a child, sampled from /proc/<pid>/status VmHWM every 50 ms.

    Not wait4's ru_maxrss: on Linux a forked child inherits the parent's high-water mark and keeps it
    across exec, so with the benchmark process holding a million generated records every child would
    report ~1.4 GB. VmHWM belongs to the exec'ed image only and never decreases, so the last sample
    is the peak (up to the last 50 ms of its life)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._done.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.kb = max(self.kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                return
            self._done.wait(0.05)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.kb / 1024


@dataclass
class Timed:
    seconds: float
    peak_rss_mb: float
    returncode: int
    logfile: Path


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - t0
    end.append(time.perf_counter())


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Sizes:
    """Per mode: how big each case is and how many times it runs."""

    cdc_small: int
    cdc_large: int
    cdc_one_txn: int
    cdc_runs: int
    cdc_large_runs: int
    snapshot_rows: int
    snapshot_runs: int
    latency_seconds: float
    latency_runs: int
    latency_rate: int
    transform_rows: int
    transform_incr: int
    transform_runs: int
    llm_rows: int
    llm_shapes: int
    llm_runs: int
    e2e_small: int
    e2e_large: int
    extra: dict[str, Any] = field(default_factory=dict)


# Quick: every benchmark, small, under 3 minutes. dbt builds cost ~10 s before they touch a row
# (see README "Where the time goes"), so the dbt-based cases run once, on a few thousand rows; the LLM step
# validates each proposed rule with a dbt compile (~0.9 s a shape), so quick runs use 5 shapes.
QUICK = Sizes(cdc_small=5_000, cdc_large=12_000, cdc_one_txn=8_000, cdc_runs=3, cdc_large_runs=3,
              snapshot_rows=10_000, snapshot_runs=3, latency_seconds=5, latency_runs=3, latency_rate=2000,
              transform_rows=2_000, transform_incr=500, transform_runs=1, llm_rows=5_000, llm_shapes=5,
              llm_runs=3, e2e_small=2_000, e2e_large=0)
# Full: the target sizes. What runs fewer than 3 times (README says why): the 1M and the
# one-500k-txn CDC cases, the dbt builds and the end-to-end runs, once each.
FULL = Sizes(cdc_small=200_000, cdc_large=1_000_000, cdc_one_txn=500_000, cdc_runs=3, cdc_large_runs=1,
             snapshot_rows=1_000_000, snapshot_runs=3, latency_seconds=60, latency_runs=3, latency_rate=2000,
             transform_rows=1_000_000, transform_incr=10_000, transform_runs=3, llm_rows=100_000, llm_shapes=10,
             llm_runs=3, e2e_small=20_000, e2e_large=1_000_000)
