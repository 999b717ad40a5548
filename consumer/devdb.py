"""A local PostgreSQL cluster owned by the project, for `paynorm dev`, `make demo` and the tests.

The cluster is initdb'ed under a directory of ours, listens on 127.0.0.1 on a free port (no unix
socket, so no /var/run permissions), runs with wal_level=logical and a bounded
max_slot_wal_keep_size, and keeps fsync on. PostgreSQL refuses to run as root, so when we are root
the server runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .jsonutil import dumps_exact

log = logging.getLogger(__name__)

LAKE_DDL = """
create extension if not exists pgcrypto;
create table if not exists public.raw_transactions (
    id               uuid primary key default gen_random_uuid(),
    data             jsonb,
    merchant         jsonb,
    transactional_id uuid,
    source           varchar(50),
    created_at       timestamptz not null default now(),
    processed        boolean not null default false,
    processed_at     timestamptz
);
create index if not exists raw_transactions_created_at on public.raw_transactions (created_at, id);
"""


class DevDBError(RuntimeError):
    """A local cluster could not be set up; the message says how to fix it."""


def find_bindir() -> tuple[Path, int]:
    """The PostgreSQL server binaries to use and their major version (never hard-coded)."""
    override = os.environ.get("PAYNORM_PG_BINDIR")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.findall(r"/(\d+)/bin", p)[0])
    )
    for bindir in reversed(candidates):
        if bindir and (Path(bindir) / "postgres").exists() and (Path(bindir) / "initdb").exists():
            out = subprocess.run([str(Path(bindir) / "postgres"), "--version"], capture_output=True, text=True)
            major = int(re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout).group(1))
            return Path(bindir), major
    raise DevDBError("no PostgreSQL server binaries found: apt-get install -y postgresql")


def wal2json_installed(bindir: Path) -> bool:
    libdir = bindir.parent / "lib"
    return (libdir / "wal2json.so").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> list[str]:
    """Prefix that runs a command as the postgres system user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class Cluster:
    """One PostgreSQL cluster in ``datadir``; ``port`` is chosen at init and remembered in the datadir."""

    datadir: Path
    port: int = 0
    superuser: str = "paynorm"

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).absolute()
        self.bindir, self.major = find_bindir()
        port_file = self.datadir / "paynorm.port"
        if not self.port and port_file.exists():
            self.port = int(port_file.read_text())

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_as_server_user(), *args], capture_output=True, text=True, check=check)

    def init(self, extra_conf: dict[str, str] | None = None) -> None:
        if self.initialized:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres").pw_uid
            os.chown(self.datadir, uid, uid)
            os.chmod(self.datadir, 0o700)
            self._check_reachable()
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
        self.port = self.port or free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_slot_wal_keep_size": "'4GB'",
            "fsync": "on",
            "wal_sender_timeout": "'60s'",
            "shared_buffers": "'128MB'",
            "max_connections": "100",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
            "logging_collector": "off",
        }
        conf.update(extra_conf or {})
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        (self.datadir / "paynorm.port").write_text(str(self.port))

    def _check_reachable(self) -> None:
        """The postgres user must be able to reach the data directory through every parent."""
        probe = self._run("test", "-w", str(self.datadir), check=False)
        if probe.returncode != 0:
            raise DevDBError(
                f"the postgres user cannot write {self.datadir}; set PAYNORM_HOME to a directory it can reach"
            )

    def is_running(self) -> bool:
        if not self.initialized:
            return False
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status", check=False).returncode == 0

    def start(self, timeout: float = 60) -> None:
        if self.is_running():
            return
        logfile = self.datadir / "server.log"
        res = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(logfile),
                        "-w", "-t", str(int(timeout)), "start", check=False)
        if res.returncode != 0:
            tail = logfile.read_text()[-2000:] if logfile.exists() else res.stderr
            raise DevDBError(f"PostgreSQL did not start: {tail}")

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """Crash the server (SIGKILL to the postmaster) to test recovery."""
        pidfile = self.datadir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().splitlines()[0])
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            deadline = time.time() + 30
            while time.time() < deadline and self.is_running():
                time.sleep(0.1)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)

    # -- connections -----------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kw: object) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True, **kw)  # type: ignore[arg-type]

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    def create_role(self, name: str, *, replication: bool = False) -> None:
        with self.connect() as conn:
            if not conn.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
            if replication:
                conn.execute(sql.SQL("alter role {} replication").format(sql.Identifier(name)))


def setup_lake(cluster: Cluster, dbname: str = "lake", reader: str = "lake_reader") -> str:
    """Create the lake database with the lake table and a read-only replication role; its DSN."""
    cluster.create_database(dbname)
    cluster.create_role(reader, replication=True)
    with cluster.connect(dbname) as conn:
        conn.execute(LAKE_DDL)
        conn.execute(sql.SQL("grant usage on schema public to {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("grant select on all tables in schema public to {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("alter default privileges in schema public grant select on tables to {}").format(
            sql.Identifier(reader)))
    return cluster.dsn(dbname, reader)


def setup_warehouse(cluster: Cluster, dbname: str = "warehouse", owner: str = "warehouse") -> str:
    """Create the warehouse database owned by its own role; its DSN."""
    cluster.create_role(owner)
    cluster.create_database(dbname)
    with cluster.connect() as conn:
        conn.execute(sql.SQL("alter database {} owner to {}").format(sql.Identifier(dbname), sql.Identifier(owner)))
    with cluster.connect(dbname) as conn:
        conn.execute(sql.SQL("alter schema public owner to {}").format(sql.Identifier(owner)))
    return cluster.dsn(dbname, owner)


# -- `paynorm dev` --------------------------------------------------------------------------------


def _cluster(home: Path) -> Cluster:
    return Cluster(Path(home) / "pg")


def dev_up(home: Path) -> dict[str, str]:
    """Initdb (once), start, create lake + warehouse; write and return the env of the two DSNs."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    cluster = _cluster(home)
    if not wal2json_installed(cluster.bindir):
        raise DevDBError(f"wal2json is missing: apt-get install -y postgresql-{cluster.major}-wal2json")
    cluster.init()
    cluster.start()
    env = {"DATALAKE_DATABASE_URL": setup_lake(cluster), "DATABASE_URL": setup_warehouse(cluster)}
    (home / "env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    return env


def dev_down(home: Path, *, destroy: bool = False) -> None:
    cluster = _cluster(home)
    if destroy:
        cluster.destroy()
        (Path(home) / "env").unlink(missing_ok=True)
    else:
        cluster.stop()


def dev_status(home: Path) -> str:
    cluster = _cluster(home)
    if not cluster.initialized:
        return f"no cluster under {cluster.datadir} (run `paynorm dev up`)"
    state = "running" if cluster.is_running() else "stopped"
    return f"PostgreSQL {cluster.major} cluster {cluster.datadir}: {state} on 127.0.0.1:{cluster.port}"


def seed_lake(home: Path, *, extra: int = 0) -> int:
    """Insert the fixed sample records (plus ``extra`` generated ones) into the dev lake."""
    from .demo import generate_records
    from .samples import brief_records

    cluster = _cluster(home)
    records = brief_records() + list(generate_records(extra))
    with cluster.connect("lake") as conn:
        before = conn.execute("select count(*) from public.raw_transactions").fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cur:
            cur.executemany(
                "insert into public.raw_transactions (id, data, merchant, transactional_id, source)"
                " values (%s, %s, %s, %s, %s) on conflict (id) do nothing",
                [(r["id"], Jsonb(r["data"], dumps=dumps_exact), Jsonb(r["merchant"], dumps=dumps_exact),
                  r["transactional_id"], r.get("source")) for r in records],
            )
        after = conn.execute("select count(*) from public.raw_transactions").fetchone()[0]  # type: ignore[index]
    return int(after - before)
