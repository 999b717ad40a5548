"""`paynorm replicate`: slot set-up, snapshot, then the stream — with reconnects and clean stops."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ...errors import (EXIT_CONFIG, EXIT_FENCED, EXIT_OK, EXIT_SLOT_LOST, ConfigError, FencedError, PaynormError,
                       SlotLostError, require_dsn)
from ...faults import crashpoint
from ...landing import init_warehouse
from ...landing.connection import check_connection, open_pool
from ...secrets import redact_dsn
from ...settings import Settings
from .. import run_source
from . import lake as lakemod
from .cdc import (Applier, ApplyStats, Fence, FenceLost, ReplicationState, SqlTransport, StreamTransport,
                  load_state, record_relation)
from .snapshot import run_snapshot

log = logging.getLogger(__name__)

__all__ = ["EXIT_OK", "EXIT_SLOT_LOST", "EXIT_FENCED", "EXIT_CONFIG", "ReplicateResult", "replicate"]


@dataclass
class ReplicateResult:
    exit_code: int
    message: str = ""
    stats: ApplyStats | None = None


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
        with pool.connection() as conn:
            half_made = _record_slot_intent(conn, settings.slot, table.qualified)
        if slot is not None and not (resnapshot or half_made):
            raise lakemod.LakeError(
                f"slot {settings.slot!r} already exists on the lake but this warehouse has no state for it; "
                f"run with --resnapshot to recreate it, or choose another --slot")
        if slot is not None:
            if half_made and not resnapshot:
                log.info("slot %s was left half-made by an earlier run: creating it again", settings.slot)
            lakemod.drop_slot(lake_conn, settings.slot)
        l0 = lakemod.create_slot(lake_conn, settings.slot)
        crashpoint("slot_created")  # the slot exists on the lake; the warehouse has only the intent
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
                        confirmed_lsn = null, owner_token = excluded.owner_token, lake_relation = null,
                        updated_at = now()
                    """,
                    {"slot": settings.slot, "table": table.qualified, "l0": l0, "token": fence.token},
                )
                conn.execute("delete from paynorm.slot_intents where slot_name = %s", (settings.slot,))
    else:
        lakemod.check_slot(lake_conn, settings.slot)
    with pool.connection() as conn:
        fence.claim(conn)
        state = load_state(conn, settings.slot)
    assert state is not None
    return state


def _record_slot_intent(conn: psycopg.Connection, slot: str, lake_table: str) -> bool:
    """Record (committed) that this warehouse is about to create ``slot``; True when an earlier run
    had recorded it already and never wrote the slot's state, i.e. any such slot is its own."""
    with conn.transaction():
        earlier = conn.execute("select 1 from paynorm.slot_intents where slot_name = %s for update",
                               (slot,)).fetchone()
        conn.execute(
            """
            insert into paynorm.slot_intents (slot_name, lake_table) values (%s, %s)
            on conflict (slot_name) do update set lake_table = excluded.lake_table, created_at = now()
            """,
            (slot, lake_table),
        )
    return earlier is not None


def replicate(settings: Settings, *, once: bool = False, resnapshot: bool = False,
              stop: threading.Event | None = None, max_attempts: int | None = None) -> ReplicateResult:
    """Run the consumer until stopped (or drained, with ``once``), its reconnects owned by
    ``sources.run_source`` (the one retry policy, consumer/retry.py): a permanent problem (bad DSN, authentication, role, privilege, table)
    ends it at once with exit code 4; a transient one (lake or warehouse down) is retried with
    back-off until ``settings.retry_for`` (bounded by default with ``once``), then exit code 1."""
    stop = stop or threading.Event()
    if not settings.lake_dsn or not settings.warehouse_dsn:
        return ReplicateResult(EXIT_CONFIG, "set DATALAKE_DATABASE_URL and DATABASE_URL (or run `paynorm dev up`)")
    if settings.transport not in ("stream", "sql"):
        return ReplicateResult(EXIT_CONFIG, f"unknown transport {settings.transport!r}: use stream or sql")
    try:
        require_dsn(settings.lake_dsn, "DATALAKE_DATABASE_URL")
        require_dsn(settings.warehouse_dsn, "DATABASE_URL")
    except ConfigError as e:
        return ReplicateResult(e.exit_code, str(e))
    log.info("replicating %s from %s into %s (slot %s, transport %s)", settings.table,
             redact_dsn(settings.lake_dsn), redact_dsn(settings.warehouse_dsn), settings.slot, settings.transport)
    fence = Fence(settings.warehouse_dsn, settings.slot)
    state: dict[str, Any] = {"pool": None, "resnapshot": resnapshot}

    def attempt() -> ApplyStats:
        if state["pool"] is None:
            check_connection(settings.warehouse_dsn)  # a bad password fails here, at once, not in the pool
            state["pool"] = open_pool(settings.warehouse_dsn)
        try:
            if not _acquire_or_stand_by(fence, once=once, stop=stop, wait=max(settings.interval, 1.0)):
                return ApplyStats()  # stopped while standing by
            return _session(settings, state["pool"], fence, once=once, resnapshot=state["resnapshot"], stop=stop)
        except FenceLost as e:
            raise FencedError(str(e)) from e
        except lakemod.SlotLost as e:
            raise SlotLostError(str(e)) from e
        except lakemod.LakeError as e:
            raise ConfigError(str(e)) from e
        finally:
            state["resnapshot"] = False  # a retry resumes the snapshot rather than starting it again

    stats = ApplyStats()
    try:
        # one session runs until stopped (or drained, with once); run_source owns its reconnects
        for stats in run_source(settings, attempt, once=once, stop=stop, what="replicate", on_retry=fence.release,
                                max_attempts=max_attempts):
            pass
        return ReplicateResult(EXIT_OK, stats=stats)
    except PaynormError as e:
        return ReplicateResult(e.exit_code, str(e))
    finally:
        fence.release()
        if state["pool"] is not None:
            state["pool"].close()


def _acquire_or_stand_by(fence: Fence, *, once: bool, stop: threading.Event, wait: float) -> bool:
    """Take the slot's single-writer fence. With ``once`` another holder is an error (exit 3);
    continuously, this consumer stands by and takes over as soon as the holder stops (False when
    stopped while standing by)."""
    announced = False
    while True:
        try:
            fence.acquire()
            if announced:
                log.info("the other consumer stopped: taking over slot %s", fence.slot)
            return True
        except FenceLost as e:
            if once:
                raise
            if not announced:
                log.warning("standing by: %s; taking over when it stops", str(e).removesuffix("; exiting"))
                announced = True
            if stop.wait(wait):
                return False




def _session(settings: Settings, pool: ConnectionPool, fence: Fence, *, once: bool, resnapshot: bool,
             stop: threading.Event) -> ApplyStats:
    def record(identity: dict[str, Any]) -> None:
        with pool.connection() as conn:
            with conn.transaction():
                fence.check(conn)
                record_relation(conn, settings.slot, identity)

    guard: lakemod.TableGuard | None = None
    try:
        with lakemod.connect(settings.lake_dsn) as lake_conn:
            table = lakemod.describe_table(lake_conn, settings.table, settings.payload_column)
            problem = lakemod.replica_identity_problem(table)
            if problem:
                raise lakemod.LakeError(problem)
            state = _prepare(settings, pool, fence, lake_conn, table, resnapshot)
            guard = lakemod.TableGuard(settings.lake_dsn, table, record=record)
            guard.start(state.lake_relation)  # dropped, re-created or renamed since the last run: stop
            snapshot_rows = 0
            if not state.snapshot_done:
                copied = run_snapshot(lake_conn, pool, fence, table, state, source=settings.source_tag,
                                      chunk=settings.snapshot_chunk, max_payload_bytes=settings.max_payload_bytes,
                                      stop=stop, decode_process=settings.decode_process)
                if copied is None:
                    return ApplyStats()
                snapshot_rows = copied
                with pool.connection() as conn:
                    state = load_state(conn, settings.slot)
                assert state is not None
        g = guard
        applier = Applier(pool, fence, table, state, source=settings.source_tag, batch_size=settings.batch_size,
                          max_payload_bytes=settings.max_payload_bytes, decode_process=settings.decode_process,
                          on_relation_change=lambda: g.describe_again(settings.table, settings.payload_column))
        applier.stats.snapshot_rows = snapshot_rows
        options = lakemod.wal2json_options(table)
        started = time.monotonic()
        with applier:
            if settings.transport == "stream":
                StreamTransport(settings.lake_dsn, settings.slot, options, settings.status_interval,
                                guard=guard).run(applier, once=once, stop=stop)
            else:
                SqlTransport(settings.lake_dsn, settings.slot, options, batch_size=settings.batch_size,
                             interval=settings.interval, guard=guard).run(applier, once=once, stop=stop)
    finally:
        if guard is not None:
            guard.close()
    s = applier.stats
    elapsed = time.monotonic() - started
    log.info("applied %s changes in %s transactions (%s skipped as already applied), %s rows written, "
             "%.1fs, %.0f changes/s", f"{s.changes:,}", f"{s.transactions:,}", s.skipped_transactions,
             f"{s.rows_written:,}", elapsed, s.changes / elapsed if elapsed else 0)
    return s
