"""The initial (or recovery) copy of the lake table, in keyset chunks tagged with the slot's start.

Every snapshot row carries the slot's consistent point L0 as its LSN; the stream only carries
transactions that end after L0, and landing upserts keep the newest image, so the snapshot and the
stream converge whatever order they arrive in. The keyset cursor is saved with each chunk, so an
interrupted snapshot resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ... import landing
from ...ops import metrics
from ...ops.progress import Progress
from ...faults import crashpoint
from ...landing import DecodeWorker, LandingBatch, LandingRow, payload_pairs, stage, stage_rows, tombstone_source
from .cdc import Fence, ReplicationState
from .lake import KEYSET_ALIAS, LakeTable, keyset_columns, pk_params, rows_from_text, text_select_list

log = logging.getLogger(__name__)


def _select_chunk(table: LakeTable, has_cursor: bool) -> sql.Composed:
    pk = keyset_columns(table)
    query = sql.SQL("select {} from {} as {}").format(text_select_list(table), table.ident,
                                                       sql.Identifier(KEYSET_ALIAS))
    if has_cursor:
        query += sql.SQL(" where ({}) > ({})").format(sql.SQL(", ").join(pk), pk_params(table))
    return query + sql.SQL(" order by {} limit %s").format(sql.SQL(", ").join(pk))


def _staged_already(records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A chunk staged (and decoded) by the snapshot's own thread."""
    return records


def _stage_decoded(rows: list[LandingRow], max_bytes: int, decoded: Future[Any]) -> list[tuple[Any, ...]]:
    """A chunk's staged records, once the decode worker has decoded its payloads."""
    return stage_rows(rows, max_bytes, decoded.result())


@dataclass
class _SnapshotCursor:
    """The snapshot's checkpoint: the keyset cursor after a chunk (None: the snapshot is done)."""

    slot: str
    cursor: list[str] | None
    done: int

    def save(self, conn: psycopg.Connection, rows: int) -> None:
        if self.cursor is None:
            conn.execute("update paynorm.replication_state set snapshot_done = true, snapshot_last_key = null,"
                         " snapshot_rows = %s, updated_at = now() where slot_name = %s", (self.done, self.slot))
        else:
            conn.execute("update paynorm.replication_state set snapshot_last_key = %s, snapshot_rows = %s,"
                         " updated_at = now() where slot_name = %s", (json.dumps(self.cursor), self.done, self.slot))


def run_snapshot(lake_conn: psycopg.Connection, pool: ConnectionPool, fence: Fence, table: LakeTable,
                 state: ReplicationState, *, source: str, chunk: int, max_payload_bytes: int,
                 stop: threading.Event, decode_process: bool = False) -> int | None:
    """Copy the table (resuming at the saved cursor); rows copied by this call, None when stopped."""
    assert state.snapshot_lsn is not None
    lsn = state.snapshot_lsn
    total_row = lake_conn.execute(
        "select greatest(c.reltuples, 0)::bigint from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relname = %s", (table.schema, table.name)).fetchone()
    total = int(total_row[0]) if total_row and total_row[0] else None
    if total is None or total < 1_000_000:
        total = lake_conn.execute(sql.SQL("select count(*) from {}").format(table.ident)).fetchone()[0]  # type: ignore[index]
    with pool.connection() as conn:
        conn.execute("update paynorm.replication_state set snapshot_total = %s where slot_name = %s",
                     (total, state.slot_name))
    cursor = json.loads(state.snapshot_last_key) if state.snapshot_last_key else None
    done = start = state.snapshot_rows
    progress = Progress("snapshot", total, initial=done, logger=log)
    log.info("snapshot of %s at %s: %s rows%s", table.qualified, lsn, f"{total:,}" if total else "?",
             f", resuming after {done:,}" if cursor else "",
             extra={"slot": state.slot_name, "table": table.qualified, "lsn": lsn, "rows_total": total,
                    "rows_done": done, "resumed": cursor is not None})
    batch = LandingBatch(source, max_payload_bytes)

    def write_chunk(staging: Callable[[], list[tuple[Any, ...]]], cursor: list[str], done: int) -> int:
        """The writer thread: one chunk (staged now: its decode may still run in the decode worker)
        and the keyset cursor after it, in one warehouse transaction."""
        records = staging()
        with pool.connection() as conn:
            landing.commit(conn, records, _SnapshotCursor(state.slot_name, cursor, done), fence=fence, source=source)
        metrics.ROWS_LANDED.labels("S").inc(len(records))
        crashpoint("snapshot_chunk")
        return done

    def fetch(after: list[str] | None) -> list[tuple[Any, ...]]:
        query = _select_chunk(table, after is not None)
        return lake_conn.execute(query, [*(after or []), chunk]).fetchall()

    # The stages overlap: the lake reads chunk N+1 (reader thread) while this thread converts
    # chunk N and the warehouse writes chunk N-1 (writer thread); with decode_process, chunk N's
    # payloads are decoded in the decode worker meanwhile (started at the first full chunk: a
    # small table is not worth a process) and the writer stages them. Chunks commit in order, so
    # the saved cursor always follows the rows committed before it. Only the reader uses lake_conn
    # until the loop ends.
    pending: Future[int] | None = None
    elsewhere = 0  # chunks handed to the decode worker
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="paynorm-snapshot-writer") as writer, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="paynorm-snapshot-reader") as reader, \
                DecodeWorker(max_payload_bytes, start=False) as decoder:
            next_records: Future[list[tuple[Any, ...]]] | None = reader.submit(fetch, cursor)
            while next_records is not None and not stop.is_set():
                records = next_records.result()
                next_records = None
                if not records:
                    break
                cursor = [str(v) for v in records[-1][: len(table.pk)]]
                if len(records) == chunk:
                    next_records = reader.submit(fetch, cursor)
                    if decode_process:
                        decoder.start()
                batch.clear()
                for row in rows_from_text(table, records, op="S", lsn=lsn):
                    batch.add(row)
                if decoder.alive:
                    elsewhere += 1
                    rows = list(batch.rows.values())
                    staged = functools.partial(_stage_decoded, rows, max_payload_bytes,
                                               decoder.submit(payload_pairs(rows)))
                else:
                    staged = functools.partial(_staged_already, stage(batch))
                done += len(records)
                if pending is not None:
                    progress.update(pending.result())
                pending = writer.submit(write_chunk, staged, cursor, done)
            if next_records is not None:
                next_records.cancel()
            if pending is not None:
                progress.update(pending.result())
    finally:
        progress.close()
    if stop.is_set():
        log.info("snapshot interrupted after %s rows; it resumes at the next start", f"{done:,}",
                 extra={"slot": state.slot_name, "table": table.qualified, "rows_done": done})
        return None
    with pool.connection() as conn:
        # Rows landed before this snapshot that it did not see were deleted while we were not looking.
        gone = landing.commit(conn, lambda c: tombstone_source(c, source, before_lsn=lsn, op="S"),
                              _SnapshotCursor(state.slot_name, None, done), fence=fence)
    log.info("snapshot done: %s rows landed%s", f"{done:,}", f", {gone:,} stale rows tombstoned" if gone else "",
             extra={"slot": state.slot_name, "table": table.qualified, "lsn": lsn, "rows_done": done,
                    "rows_copied": done - start, "rows_tombstoned": gone, "chunks_decoded_elsewhere": elsewhere})
    return done - start
