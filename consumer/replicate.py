"""`paynorm replicate`: slot set-up, snapshot, then the stream — with reconnects and clean stops."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

from . import lake as lakemod
from .cdc import Applier, ApplyStats, Fence, FenceLost, ReplicationState, SqlTransport, StreamTransport, load_state
from .landing import init_warehouse
from .settings import Settings, redact_dsn
from .snapshot import run_snapshot

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SLOT_LOST = 2
EXIT_FENCED = 3
EXIT_CONFIG = 4


@dataclass
class ReplicateResult:
    exit_code: int
    message: str = ""
    stats: ApplyStats | None = None


def _configure(conn: psycopg.Connection) -> None:
    """Session settings of every landing connection, before it first touches its temp table:
    - jit off: the upsert's estimated cost crosses jit_above_cost, and compiling it costs more
      (~17 ms a batch, measured) than it saves on 10k rows;
    - temp_buffers 64MB: a 10k-row staging table (~15 MB) otherwise spills to disk at every batch."""
    conn.execute("set jit = off")
    conn.execute("set temp_buffers = '64MB'")


def open_pool(dsn: str, max_size: int = 4) -> ConnectionPool:
    """The warehouse pool: opened explicitly, connections checked before use (the warehouse may restart)."""
    pool = ConnectionPool(dsn, min_size=1, max_size=max_size, open=False, check=ConnectionPool.check_connection,
                          configure=_configure, kwargs={"autocommit": True, "application_name": "paynorm"},
                          name="warehouse")
    pool.open(wait=True, timeout=30)
    return pool


def _prepare(settings: Settings, pool: ConnectionPool, fence: Fence, lake_conn: psycopg.Connection,
             table: lakemod.LakeTable, resnapshot: bool) -> ReplicationState:
    """Make sure slot and state agree; create the slot (and state) when starting from scratch."""
    with pool.connection() as conn:
        init_warehouse(conn)
        state = load_state(conn, settings.slot)
    slot = lakemod.slot_info(lake_conn, settings.slot)
    if state is not None and state.lake_table != table.qualified:
        raise lakemod.LakeError(f"slot {settings.slot!r} replicates {state.lake_table} in this warehouse, not "
                                f"{table.qualified}: use another --slot per lake table")
    if resnapshot or state is None:
        if slot is not None and not resnapshot:
            raise lakemod.LakeError(
                f"slot {settings.slot!r} already exists on the lake but this warehouse has no state for it; "
                f"run with --resnapshot to recreate it, or choose another --slot")
        if slot is not None:
            lakemod.drop_slot(lake_conn, settings.slot)
        l0 = lakemod.create_slot(lake_conn, settings.slot)
        with pool.connection() as conn:
            with conn.transaction():
                conn.execute(
                    """
                    insert into paynorm.replication_state as s (slot_name, lake_table, applied_lsn, snapshot_lsn,
                        snapshot_done, snapshot_last_key, snapshot_rows, owner_token)
                    values (%(slot)s, %(table)s, %(l0)s::pg_lsn, %(l0)s::pg_lsn, false, null, 0, %(token)s)
                    on conflict (slot_name) do update set lake_table = excluded.lake_table,
                        applied_lsn = excluded.applied_lsn, snapshot_lsn = excluded.snapshot_lsn,
                        snapshot_done = false, snapshot_last_key = null, snapshot_rows = 0,
                        confirmed_lsn = null, owner_token = excluded.owner_token, updated_at = now()
                    """,
                    {"slot": settings.slot, "table": table.qualified, "l0": l0, "token": fence.token},
                )
    else:
        lakemod.check_slot(lake_conn, settings.slot)
    with pool.connection() as conn:
        fence.claim(conn)
        state = load_state(conn, settings.slot)
    assert state is not None
    return state


def replicate(settings: Settings, *, once: bool = False, resnapshot: bool = False,
              stop: threading.Event | None = None, max_attempts: int | None = None) -> ReplicateResult:
    """Run the consumer until stopped (or drained, with ``once``); reconnects with back-off on outages."""
    stop = stop or threading.Event()
    if not settings.lake_dsn or not settings.warehouse_dsn:
        return ReplicateResult(EXIT_CONFIG, "set DATALAKE_DATABASE_URL and DATABASE_URL (or run `paynorm dev up`)")
    if settings.transport not in ("stream", "sql"):
        return ReplicateResult(EXIT_CONFIG, f"unknown transport {settings.transport!r}: use stream or sql")
    log.info("replicating %s from %s into %s (slot %s, transport %s)", settings.table,
             redact_dsn(settings.lake_dsn), redact_dsn(settings.warehouse_dsn), settings.slot, settings.transport)
    fence = Fence(settings.warehouse_dsn, settings.slot)
    pool: ConnectionPool | None = None
    backoff = 1.0
    attempts = 0
    stats = ApplyStats()
    try:
        while not stop.is_set():
            attempts += 1
            try:
                if pool is None:
                    pool = open_pool(settings.warehouse_dsn)
                fence.acquire()
                stats = _session(settings, pool, fence, once=once, resnapshot=resnapshot, stop=stop)
                return ReplicateResult(EXIT_OK, stats=stats)
            except FenceLost as e:
                return ReplicateResult(EXIT_FENCED, str(e))
            except lakemod.SlotLost as e:
                return ReplicateResult(EXIT_SLOT_LOST, str(e))
            except lakemod.LakeError as e:
                return ReplicateResult(EXIT_CONFIG, str(e))
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown, psycopg.InterfaceError,
                    TimeoutError) as e:
                if max_attempts is not None and attempts >= max_attempts:
                    return ReplicateResult(1, f"giving up after {attempts} attempts: {e}")
                log.warning("connection problem (%s); retrying in %.0fs", str(e).strip().splitlines()[0] if str(e)
                            else type(e).__name__, backoff)
                fence.release()
                stop.wait(backoff)
                backoff = min(backoff * 2, settings.max_backoff)
            else:
                backoff = 1.0
            resnapshot = False  # a retry resumes the snapshot rather than starting it again
        return ReplicateResult(EXIT_OK, stats=stats)
    finally:
        fence.release()
        if pool is not None:
            pool.close()


def _session(settings: Settings, pool: ConnectionPool, fence: Fence, *, once: bool, resnapshot: bool,
             stop: threading.Event) -> ApplyStats:
    with lakemod.connect(settings.lake_dsn) as lake_conn:
        table = lakemod.describe_table(lake_conn, settings.table, settings.payload_column)
        state = _prepare(settings, pool, fence, lake_conn, table, resnapshot)
        snapshot_rows = 0
        if not state.snapshot_done:
            copied = run_snapshot(lake_conn, pool, fence, table, state, source=settings.source_tag,
                                  chunk=settings.snapshot_chunk, max_payload_bytes=settings.max_payload_bytes,
                                  stop=stop)
            if copied is None:
                return ApplyStats()
            snapshot_rows = copied
            with pool.connection() as conn:
                state = load_state(conn, settings.slot)
            assert state is not None
    applier = Applier(pool, fence, table, state, source=settings.source_tag, batch_size=settings.batch_size,
                      max_payload_bytes=settings.max_payload_bytes)
    applier.stats.snapshot_rows = snapshot_rows
    options = lakemod.wal2json_options(table)
    started = time.monotonic()
    with applier:
        if settings.transport == "stream":
            StreamTransport(settings.lake_dsn, settings.slot, options, settings.status_interval).run(
                applier, once=once, stop=stop)
        else:
            SqlTransport(settings.lake_dsn, settings.slot, options, batch_size=settings.batch_size,
                         interval=settings.interval).run(applier, once=once, stop=stop)
    s = applier.stats
    elapsed = time.monotonic() - started
    log.info("applied %s changes in %s transactions (%s skipped as already applied), %s rows written, "
             "%.1fs, %.0f changes/s", f"{s.changes:,}", f"{s.transactions:,}", s.skipped_transactions,
             f"{s.rows_written:,}", elapsed, s.changes / elapsed if elapsed else 0)
    return s
