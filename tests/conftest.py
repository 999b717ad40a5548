"""Real PostgreSQL for every test: a lake cluster and a warehouse cluster, initdb'ed once per session.

Each test gets fresh databases in both (cheap), so tests never see each other's slots or rows.
The clusters are separate so a test can crash or restart the lake while the warehouse stays up.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import set_json_loads

from consumer import devdb
from consumer.jsonutil import loads_exact
from consumer.settings import Settings

#: Fixtures shared by several test modules, registered once (session fixtures start once per worker).
pytest_plugins = ["tests.dbt_fixtures", "tests.files_fixtures"]

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_base() -> Iterator[Path]:
    # Not pytest's tmp_path: its parent is mode 0700 and the server runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="paynorm-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def lake_cluster(pg_base: Path) -> Iterator[devdb.Cluster]:
    cluster = devdb.Cluster(pg_base / "lake")
    if not devdb.wal2json_installed(cluster.bindir):
        pytest.fail(f"wal2json missing: apt-get install -y postgresql-{cluster.major}-wal2json (make test does it)")
    cluster.init({"max_slot_wal_keep_size": "'256MB'", "checkpoint_timeout": "'30s'"})
    cluster.start()
    yield cluster
    cluster.stop("immediate")


@pytest.fixture(scope="session")
def wh_cluster(pg_base: Path) -> Iterator[devdb.Cluster]:
    cluster = devdb.Cluster(pg_base / "warehouse")
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop("immediate")


@dataclass
class Env:
    """One test's lake and warehouse databases, and helpers to look at them."""

    lake: devdb.Cluster
    wh: devdb.Cluster
    lake_db: str
    wh_db: str
    lake_dsn: str  # the read-only replication role, as the consumer uses it
    wh_dsn: str
    slot: str = "paynorm"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def lake_admin_dsn(self) -> str:
        return self.lake.dsn(self.lake_db)

    def settings(self, **overrides: Any) -> Settings:
        s = Settings(lake_dsn=self.lake_dsn, warehouse_dsn=self.wh_dsn, slot=self.slot, interval=0.2,
                     batch_size=1000, transport="stream", max_backoff=1.0, status_interval=1.0)
        for k, v in overrides.items():
            setattr(s, k, v)
        return s

    def lake_conn(self) -> psycopg.Connection:
        conn = psycopg.connect(self.lake_admin_dsn, autocommit=True)
        set_json_loads(loads_exact, conn)
        return conn

    def wh_conn(self) -> psycopg.Connection:
        conn = psycopg.connect(self.wh_dsn, autocommit=True)
        set_json_loads(loads_exact, conn)
        return conn

    def cli_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DATALAKE_DATABASE_URL": self.lake_dsn, "DATABASE_URL": self.wh_dsn, "PAYNORM_SLOT": self.slot,
                    "POLL_INTERVAL_SECONDS": "0.2", "PAYNORM_MAX_BACKOFF": "1", "PAYNORM_STATUS_INTERVAL": "1"})
        env.update(extra)
        return env

    def spawn(self, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """The real CLI in a child process (for SIGKILL/SIGTERM tests)."""
        proc = subprocess.Popen([sys.executable, "-m", "consumer", *args], cwd=REPO, env=self.cli_env(**extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    # -- comparisons -------------------------------------------------------------------------------

    def lake_rows(self) -> dict[str, dict[str, Any]]:
        with self.lake_conn() as conn:
            rows = conn.execute("select id::text, data, merchant, processed, source from public.raw_transactions")
            return {r[0]: {"data": r[1], "merchant": r[2], "processed": r[3], "source": r[4]} for r in rows}

    def landed(self, live_only: bool = True) -> dict[str, dict[str, Any]]:
        with self.wh_conn() as conn:
            if conn.execute("select to_regclass('raw.lake_transactions')").fetchone()[0] is None:
                return {}
            q = ("select lake_key, img->'data', img->'merchant', (img->>'processed')::boolean, img->>'source', deleted"
                 " from raw.lake_transactions, raw.row_image(row_data, payload_key, payload) as img")
            rows = conn.execute(q).fetchall()
        return {r[0]: {"data": r[1], "merchant": r[2], "processed": r[3], "source": r[4]}
                for r in rows if not (live_only and r[5])}

    def assert_converged(self) -> None:
        lake, landed = self.lake_rows(), self.landed()
        missing = lake.keys() - landed.keys()
        extra = landed.keys() - lake.keys()
        assert not missing, f"{len(missing)} lake rows missing from the landing, e.g. {sorted(missing)[:3]}"
        assert not extra, f"{len(extra)} landed rows not live in the lake, e.g. {sorted(extra)[:3]}"
        diff = [k for k in lake if lake[k] != landed[k]]
        assert not diff, f"{len(diff)} rows differ, e.g. {diff[0]}: lake={lake[diff[0]]} landed={landed[diff[0]]}"


@contextmanager
def fresh_env(lake_cluster: devdb.Cluster, wh_cluster: devdb.Cluster, suffix: str) -> Iterator[Env]:
    """A lake and a warehouse database of their own on the session's clusters, dropped afterwards
    with their slots and the child processes started through them."""
    lake_db, wh_db = f"lake_{suffix}", f"wh_{suffix}"
    lake_dsn = devdb.setup_lake(lake_cluster, lake_db)
    wh_dsn = devdb.setup_warehouse(wh_cluster, wh_db, owner="warehouse")
    e = Env(lake_cluster, wh_cluster, lake_db, wh_db, lake_dsn, wh_dsn)
    try:
        yield e
    finally:
        for proc in e.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not lake_cluster.is_running():
            lake_cluster.start()
        with lake_cluster.connect() as conn:
            for _ in range(50):
                try:
                    conn.execute("select pg_terminate_backend(active_pid) from pg_replication_slots"
                                 " where database = %s and active_pid is not null", (lake_db,))
                    conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                                 " where database = %s", (lake_db,))
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)
        lake_cluster.drop_database(lake_db)
        wh_cluster.drop_database(wh_db)


@pytest.fixture
def env(lake_cluster: devdb.Cluster, wh_cluster: devdb.Cluster) -> Iterator[Env]:
    with fresh_env(lake_cluster, wh_cluster, f"{os.getpid()}_{next(_counter)}") as e:
        yield e


def insert_rows(conn: psycopg.Connection, n: int, *, start: int = 0, payload: str | None = None) -> list[str]:
    """n lake rows with exact decimal amounts; their ids."""
    rows = conn.execute(
        "insert into public.raw_transactions (data, merchant, transactional_id)"
        " select coalesce(%s::jsonb, jsonb_build_object('amount', (g * 1.01)::numeric(12,2), 'n', g,"
        "   'status', 'approved', 'currency', 'USD')),"
        "   jsonb_build_object('id', 'm' || (g %% 7), 'name', 'Merchant ' || (g %% 7), 'country', 'CO'),"
        "   gen_random_uuid()"
        " from generate_series(%s::int, %s::int) g returning id::text",
        (payload, start + 1, start + n),
    ).fetchall()
    return [r[0] for r in rows]


__all__ = ["Env", "fresh_env", "insert_rows", "Decimal", "sql"]


def scram_role(cluster: Any, role: str, password: str, *, replication: bool = False) -> str:
    """A login role of ``cluster`` that must authenticate with scram (the test clusters trust every
    other role), for tests of wrong passwords; idempotent."""
    hba = Path(cluster.datadir) / "pg_hba.conf"
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if line not in text:
        hba.write_text(line + text)
    with cluster.connect() as conn:
        conn.execute("select pg_reload_conf()")
        if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("create role {} login {} password {}").format(
                sql.Identifier(role), sql.SQL("replication" if replication else ""), sql.Literal(password)))
    return role
