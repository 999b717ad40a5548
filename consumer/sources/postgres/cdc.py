"""Exactly-once CDC from the lake's slot into the landing table.

Two transports feed one ``Applier``:

* ``StreamTransport`` speaks the streaming replication protocol through psycopg's libpq layer
  (``START_REPLICATION``, XLogData / keepalive / standby status update messages);
* ``SqlTransport`` uses ``pg_logical_slot_peek_changes`` bounded by ``upto_lsn`` and
  ``upto_nchanges`` through a server-side cursor, then ``pg_replication_slot_advance``.

The Applier groups changes by lake transaction (B..C, keyed by ``nextlsn``), drops transactions the
warehouse already has (``nextlsn <= applied``, a slot may replay after a lake crash), writes each batch
and the new position in ONE warehouse transaction, and only then lets the transport confirm that
position to the lake. A huge lake transaction is written in chunks as it arrives (upserts are
idempotent and LSN-ordered, so a replay of a half-applied transaction is harmless).
"""

from __future__ import annotations

import functools
import logging
import select
import struct
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import pq, sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ... import landing
from ...ops import metrics
from ...faults import crashpoint
from ...landing import DecodeWorker, LandingBatch, payload_pairs, stage, stage_rows, tombstone_source
from . import lake as lakemod
from .lake import ChangeConverter, LakeTable, int_to_lsn, lsn_to_int

log = logging.getLogger(__name__)

_PG_EPOCH = 946684800.0  # 2000-01-01 in Unix time: the replication protocol's clock origin


class FenceLost(RuntimeError):
    """Another consumer owns this slot in the warehouse; we must stop writing."""


# -- warehouse state and the single-writer fence ----------------------------------------------------


@dataclass
class ReplicationState:
    slot_name: str
    lake_table: str
    applied_lsn: str
    snapshot_lsn: str | None
    snapshot_done: bool
    snapshot_last_key: str | None
    snapshot_rows: int
    owner_token: str | None
    #: The lake table's identity as last checked (``lake.TableGuard``): OID, row type version,
    #: payload column. None before the first check.
    lake_relation: dict[str, Any] | None = None


def load_state(conn: psycopg.Connection, slot: str) -> ReplicationState | None:
    # to_jsonb(s)->'lake_relation': null, not an error, where the column does not exist yet
    row = conn.execute(
        "select slot_name, lake_table, applied_lsn::text, snapshot_lsn::text, snapshot_done, snapshot_last_key,"
        " snapshot_rows, owner_token, to_jsonb(s)->'lake_relation'"
        " from paynorm.replication_state s where slot_name = %s",
        (slot,),
    ).fetchone()
    return ReplicationState(*row) if row else None


def record_relation(conn: psycopg.Connection, slot: str, identity: dict[str, Any]) -> None:
    conn.execute("update paynorm.replication_state set lake_relation = %s, updated_at = now() where slot_name = %s",
                 (Jsonb(identity), slot))


class Fence:
    """Single writer per slot: a session advisory lock held on a dedicated warehouse connection, plus
    an owner token on the state row that every apply transaction checks (so a consumer that lost its
    lock during a warehouse restart cannot keep writing behind a newer one)."""

    def __init__(self, dsn: str, slot: str) -> None:
        self.dsn = dsn
        self.slot = slot
        self.token = uuid.uuid4().hex
        self.conn: psycopg.Connection | None = None

    def acquire(self) -> None:
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.execute("select 1")
                return
            except psycopg.Error:
                self.conn.close()
        self.conn = psycopg.connect(self.dsn, autocommit=True, application_name="paynorm-fence")
        got = self.conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                                (f"paynorm.replicate:{self.slot}",)).fetchone()
        if not got or not got[0]:
            holder = self.conn.execute(
                "select a.pid, a.client_addr, a.backend_start from pg_locks l join pg_stat_activity a using (pid)"
                " where l.locktype = 'advisory' and l.objid = (hashtextextended(%s, 0) & 4294967295)::oid"
                " and l.granted limit 1",
                (f"paynorm.replicate:{self.slot}",),
            ).fetchone()
            self.conn.close()
            self.conn = None
            who = f" (warehouse backend pid {holder[0]}, since {holder[2]:%Y-%m-%d %H:%M:%S})" if holder else ""
            raise FenceLost(f"another paynorm consumer is already replicating slot {self.slot!r}{who}; exiting")

    def claim(self, conn: psycopg.Connection) -> None:
        conn.execute("update paynorm.replication_state set owner_token = %s, updated_at = now() where slot_name = %s",
                     (self.token, self.slot))

    def check(self, conn: psycopg.Connection) -> None:
        """Inside an apply transaction: lock the state row and verify we still own it."""
        row = conn.execute("select owner_token from paynorm.replication_state where slot_name = %s for update",
                           (self.slot,)).fetchone()
        if row is None or row[0] != self.token:
            raise FenceLost(f"slot {self.slot!r} was taken over by another consumer; stopping")

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


# -- the apply loop -------------------------------------------------------------------------------


@dataclass
class ApplyStats:
    changes: int = 0
    rows_written: int = 0
    transactions: int = 0
    skipped_transactions: int = 0
    flushes: int = 0
    snapshot_rows: int = 0  # rows copied by the initial (or recovery) snapshot in this session
    batches_decoded_elsewhere: int = 0  # batches whose payloads the decode worker decoded
    started: float = field(default_factory=time.monotonic)


class Applier:
    """Turns a sequence of wal2json v2 objects into committed landing batches, exactly once.

    Decoding (CPU, this thread) overlaps with writing (the warehouse's work, one writer thread):
    while batch N is copied, upserted and committed, batch N+1 is being decoded. Batches commit in
    order, each with the position of the last transaction it completes, and a position is reported
    to ``on_commit`` (which confirms it to the lake) only after its commit, from this thread. At
    most one batch is in flight, so memory stays at about two batches. With ``decode_process``, the
    payloads are decoded in a child process (``landing.DecodeWorker``) while this thread parses
    the next batch; the writer stages the batch when the decoded payloads are back.
    """

    def __init__(self, pool: ConnectionPool, fence: Fence, table: LakeTable, state: ReplicationState, *,
                 source: str, batch_size: int, max_payload_bytes: int,
                 on_commit: Callable[[int], None] | None = None,
                 on_relation_change: Callable[[], LakeTable] | None = None, decode_process: bool = False) -> None:
        self.pool = pool
        self.fence = fence
        self.slot = state.slot_name
        self.converter = ChangeConverter(table, on_relation_change)
        self.parse = lakemod.parse_change
        self.batch = LandingBatch(source, max_payload_bytes)
        self.batch_size = batch_size
        self.applied = lsn_to_int(state.applied_lsn)  # end LSN of the last transaction in the warehouse
        self.complete = self.applied  # end LSN of the last transaction fully buffered
        self.complete_ts: str | None = None
        self.submitted = self.applied  # position of the last batch handed to the writer
        self._written_lsn = self.applied  # the writer thread's own view of the committed position
        self.txns_buffered = 0
        self.in_txn = False
        self.skip = False
        self.txn_lsn = ""
        self.txn_xid: int | None = None
        self.txn_ts: str | None = None
        self.on_commit = on_commit
        self.stats = ApplyStats()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paynorm-writer")
        # started at the first full batch (a backlog), which still decodes here while the child starts:
        # a tail of small batches would pay the child's start-up and a round trip each for nothing
        self._decoder = DecodeWorker(max_payload_bytes, start=False) if decode_process else None
        self._inflight: deque[Future[_Committed]] = deque()
        self.jobs_submitted = 0  # batches handed to the writer
        self.jobs_committed = 0  # of which committed (and reported to on_commit)
        # (end LSN, commit time) of every lake transaction received and not yet committed here:
        # the first one's commit time is how far behind the warehouse is (see behind_since)
        self._unapplied: deque[tuple[int, str | None]] = deque()

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the writer: a batch already being written finishes (committed or not), none starts."""
        self._writer.shutdown(wait=True, cancel_futures=True)
        if self._decoder is not None:
            self._decoder.close()

    # one wal2json object
    def feed(self, obj: dict[str, Any]) -> None:
        action = obj["action"]
        if action == "B":
            self.in_txn = True
            self.txn_lsn = obj["nextlsn"]
            self.txn_xid = obj.get("xid")
            self.txn_ts = obj.get("timestamp")
            self.skip = lsn_to_int(self.txn_lsn) <= self.applied
            if self.skip:
                self.stats.skipped_transactions += 1
            else:
                self._unapplied.append((lsn_to_int(self.txn_lsn), self.txn_ts))
        elif action == "C":
            self.in_txn = False
            if not self.skip:
                self.complete = max(self.complete, lsn_to_int(obj["nextlsn"]))
                self.complete_ts = obj.get("timestamp")
                self.txns_buffered += 1
        elif action in ("I", "U", "D"):
            if self.skip:
                return
            self.stats.changes += 1
            for row in self.converter.convert(obj, self.txn_lsn, self.txn_xid, self.txn_ts):
                self.batch.add(row)
            if len(self.batch) >= self.batch_size:
                self.flush(wait=False)
        elif action == "T":
            if self.skip:
                return
            self.stats.changes += 1
            self.flush(wait=False)
            source, lsn, xid, ts = self.batch.source, self.txn_lsn, self.txn_xid, self.txn_ts
            truncate = functools.partial(tombstone_source, source=source, before_lsn=lsn, op="T", xid=xid,
                                         committed_at=ts, inclusive=True)
            self._submit(lambda: truncate, {}, wait=True)
        # "M" (logical messages) and anything else: nothing to land
        self.poll()

    def flush(self, wait: bool = True) -> None:
        """Hand what is buffered to the writer, with the position of the last complete transaction;
        with ``wait``, return once everything handed over is committed (``applied`` is then final)."""
        if self.batch.rows or self.complete > self.submitted:
            ops = Counter(r.op for r in self.batch.rows.values())
            decoder = self._decoder
            if decoder is not None and not decoder.started and len(self.batch) >= self.batch_size:
                decoder.start()  # this batch still decodes here, while the child starts
            elif decoder is not None and decoder.alive:
                rows, max_bytes = list(self.batch.rows.values()), self.batch.max_payload_bytes
                decoded = decoder.submit(payload_pairs(rows))  # decoding starts now, elsewhere
                self.stats.batches_decoded_elsewhere += 1
                self._submit(lambda: stage_rows(rows, max_bytes, decoded.result()), ops, wait=wait)
                return
            records = stage(self.batch)  # decode here, while the writer may still be busy
            self._submit(lambda: records, ops, wait=wait)
        elif wait:
            self.drain()

    def drain(self) -> None:
        while self._inflight:
            self._reap()

    def pending(self) -> bool:
        """Something buffered (rows, or a position) that is not handed to the writer yet."""
        return bool(self.batch.rows) or self.complete > self.submitted

    def writer_busy(self) -> bool:
        return bool(self._inflight) and not self._inflight[0].done()

    def poll(self) -> None:
        """Account for a batch the writer has finished, without waiting."""
        if self._inflight and self._inflight[0].done():
            self._reap()

    def _submit(self, work: Callable[[], landing.Rows], ops: dict[str, int], *, wait: bool) -> None:
        job = _Job(work, self.complete, self.complete_ts, ops, self.batch.changes, self.txns_buffered)
        self.submitted = max(self.submitted, self.complete)
        self.txns_buffered = 0
        self.batch.clear()
        while self._inflight:  # one batch in flight at most
            self._reap()
        self._inflight.append(self._writer.submit(self._write, job))
        self.jobs_submitted += 1
        if wait:
            self.drain()

    def _write(self, job: _Job) -> _Committed:
        """The writer thread: the batch and the new position in ONE warehouse transaction."""
        started = time.monotonic()
        position = _SlotPosition(self.slot, job.position, job.position_ts, advance=job.position > self._written_lsn)
        rows = job.work()  # before the transaction: staging may still wait for the decode worker
        with self.pool.connection() as conn:
            written = landing.commit(conn, rows, position, fence=self.fence, source=self.batch.source)
        crashpoint("after_commit")  # the warehouse has the data; the lake has not been told yet
        self._written_lsn = max(self._written_lsn, job.position)
        return _Committed(job, written, time.monotonic() - started)

    def _reap(self) -> None:
        """Wait for the oldest batch in flight; account for it and report its position (this thread)."""
        done = self._inflight[0].result()  # re-raises what the writer raised (the batch did not commit)
        self._inflight.popleft()
        job = done.job
        metrics.BATCHES.inc()
        metrics.BATCH_SECONDS.observe(done.seconds)
        for op, n in job.ops.items():
            metrics.ROWS_LANDED.labels(op).inc(n)
        log.info("batch: %d changes buffered, %d rows written, %d lake transactions, up to %s, %.3fs",
                 job.changes, done.written, job.transactions, (lsn := int_to_lsn(max(job.position, self.applied))),
                 done.seconds, extra={"slot": self.slot, "changes": job.changes, "rows_written": done.written,
                                      "transactions": job.transactions, "ops": dict(job.ops), "lsn": lsn,
                                      "seconds": round(done.seconds, 3)})
        self.stats.rows_written += done.written
        self.stats.flushes += 1
        self.stats.transactions += job.transactions
        self.jobs_committed += 1
        if job.position > self.applied:
            self.applied = job.position
        while self._unapplied and self._unapplied[0][0] <= self.applied:
            self._unapplied.popleft()
        if self.on_commit is not None:
            self.on_commit(self.applied)

    @property
    def behind_since(self) -> str | None:
        """Commit time of the oldest lake transaction received but not yet committed in the
        warehouse; None when everything received is applied."""
        return self._unapplied[0][1] if self._unapplied else None

    def record_progress(self, confirmed_lsn: int) -> None:
        """Publish the position last confirmed to the lake and how far behind the consumer is, for
        `paynorm status` and the metrics of any process (a streamed slot cannot be peeked)."""
        with self.pool.connection() as conn:
            conn.execute("update paynorm.replication_state set confirmed_lsn = %s::pg_lsn, behind_since = %s::timestamptz,"
                         " lag_checked_at = now(), updated_at = now() where slot_name = %s",
                         (int_to_lsn(confirmed_lsn), self.behind_since, self.slot))


@dataclass
class _SlotPosition:
    """The CDC checkpoint: the end LSN of the last lake transaction a batch completes, saved in the
    batch's landing commit (confirmed to the slot only after it, by ``on_commit``)."""

    slot: str
    position: int
    position_ts: str | None
    advance: bool  # false when the batch only finishes a transaction already counted

    def save(self, conn: psycopg.Connection, rows: int) -> None:
        if self.advance:
            conn.execute(
                "update paynorm.replication_state set applied_lsn = %s::pg_lsn,"
                " rows_applied = rows_applied + %s, last_commit_at = coalesce(%s::timestamptz, last_commit_at),"
                " updated_at = now() where slot_name = %s",
                (int_to_lsn(self.position), rows, self.position_ts, self.slot))
        crashpoint("before_commit")


@dataclass
class _Job:
    work: Callable[[], landing.Rows]  # what the writer commits: staged records, or a write function
    position: int  # end LSN of the last lake transaction this batch completes
    position_ts: str | None
    ops: dict[str, int]
    changes: int
    transactions: int


@dataclass
class _Committed:
    job: _Job
    written: int
    seconds: float


# -- transports -----------------------------------------------------------------------------------


def replication_literal(value: str) -> sql.Composable:
    """A string literal of the replication command grammar (repl_scanner.l): quotes doubled, and
    a backslash is a plain character. psycopg's ``sql.Literal`` writes a string holding a
    backslash as ``E'...'``, which START_REPLICATION does not parse (wal2json's add-tables escapes
    with backslashes)."""
    return sql.SQL("'" + value.replace("'", "''") + "'")


class StreamTransport:
    """The streaming replication protocol over psycopg's libpq layer."""

    def __init__(self, dsn: str, slot: str, options: list[str], status_interval: float = 10.0,
                 guard: lakemod.TableGuard | None = None) -> None:
        self.dsn = dsn
        self.slot = slot
        self.options = options
        self.status_interval = status_interval
        self.guard = guard  # checks the lake table before a position is confirmed past a change to it
        self.pgconn: pq.abc.PGconn | None = None
        self.confirmed = 0
        self.last_status = 0.0
        self.server_wal_end = 0
        self.last_record = 0.0  # when the confirmed position was last written to the warehouse
        self.keepalive_end: tuple[int, int] | None = None  # (WAL end, job number) to confirm after that job

    def open(self, start_lsn: int) -> int:
        """Connect, START_REPLICATION at ``start_lsn``; the lake's flush position at start."""
        conninfo = lakemod.lake_conninfo(self.dsn, replication=True)
        pgconn = pq.PGconn.connect(conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            msg = pgconn.get_error_message()
            pgconn.finish()
            raise psycopg.OperationalError(f"lake replication connection failed: {msg}")
        self.pgconn = pgconn
        res = pgconn.exec_(b"IDENTIFY_SYSTEM")
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.OperationalError(f"IDENTIFY_SYSTEM failed: {pgconn.get_error_message()}")
        xlogpos = lsn_to_int(res.get_value(0, 2).decode())  # type: ignore[union-attr]
        opts = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(self.options[i]), replication_literal(self.options[i + 1]))
            for i in range(0, len(self.options), 2)
        )
        cmd = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self.slot), sql.SQL(int_to_lsn(start_lsn)), opts)
        for attempt in range(50):
            pgconn.send_query(cmd.as_bytes(None))
            res = pgconn.get_result()
            if res is not None and res.status == pq.ExecStatus.COPY_BOTH:
                break
            err = pgconn.get_error_message()
            while pgconn.get_result() is not None:
                pass
            if "is active for PID" not in err or attempt == 49:
                break
            time.sleep(0.2)  # an earlier run of ours may still be releasing the slot
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            self.close()
            if "is active for PID" in err:
                raise lakemod.LakeError(f"slot {self.slot!r} is in use by another process on the lake: {err.strip()}")
            if "does not exist" in err or "can no longer" in err or "invalidated" in err:
                raise lakemod.SlotLost(f"{err.strip()}; run `paynorm replicate --resnapshot`")
            raise psycopg.OperationalError(f"START_REPLICATION failed: {err.strip()}")
        pgconn.nonblocking = 1
        self.confirmed = start_lsn
        self.last_status = time.monotonic()
        return xlogpos

    def close(self, graceful: bool = False) -> None:
        """End the stream; gracefully = CopyDone and wait for the lake to release the slot."""
        pgconn, self.pgconn = self.pgconn, None
        if pgconn is None:
            return
        if graceful and pgconn.status == pq.ConnStatus.OK:
            try:
                pgconn.put_copy_end()
                pgconn.flush()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    pgconn.consume_input()
                    n, _ = pgconn.get_copy_data(1)
                    if n == -1:
                        break
                    if n == 0:
                        select.select([pgconn.socket], [], [], 0.1)
                    elif n < -1:
                        break
                while time.monotonic() < deadline and not pgconn.is_busy() and pgconn.get_result() is not None:
                    pass
            except psycopg.Error:
                pass
        pgconn.finish()

    def read(self) -> bytes | None:
        """The next message if one is already here, else None (never blocks)."""
        assert self.pgconn is not None
        n, data = self.pgconn.get_copy_data(1)
        if n > 0:
            return bytes(data)
        if n == 0:
            self.pgconn.consume_input()
            n, data = self.pgconn.get_copy_data(1)
            if n > 0:
                return bytes(data)
            if n == 0:
                return None
        res = self.pgconn.get_result()
        err = self.pgconn.get_error_message() or (res.error_message if res else b"")
        raise psycopg.OperationalError(f"replication stream ended: {err!r}")

    def wait(self, timeout: float) -> None:
        assert self.pgconn is not None
        select.select([self.pgconn.socket], [], [], timeout)

    def send_status(self, flush_lsn: int, *, reply: bool = False, force: bool = False) -> None:
        """Tell the lake ``flush_lsn`` is applied (never less than already said), once the table
        guard agrees (``force``: check the table now rather than at its next interval)."""
        assert self.pgconn is not None
        flush_lsn = max(flush_lsn, self.confirmed)
        if flush_lsn > self.confirmed and self.guard is not None:
            flush_lsn = max(self.guard.allow(flush_lsn, force=force), self.confirmed)
        now_us = int((time.time() - _PG_EPOCH) * 1_000_000)
        msg = struct.pack("!cQQQqB", b"r", flush_lsn, flush_lsn, flush_lsn, now_us, 1 if reply else 0)
        self.pgconn.put_copy_data(msg)
        while self.pgconn.flush() == 1:
            select.select([], [self.pgconn.socket], [], 1.0)
        self.confirmed = flush_lsn
        self.last_status = time.monotonic()

    def run(self, applier: Applier, *, once: bool, stop: threading.Event) -> None:
        """Read and apply until stopped (or, with ``once``, until the lake position at start is reached)."""
        target = self.open(applier.applied)
        applier.on_commit = lambda lsn: self._committed(applier, lsn)
        log.info("streaming slot %s from %s%s", self.slot, int_to_lsn(applier.applied),
                 f" up to {int_to_lsn(target)}" if once else "")
        last_ping = 0.0
        try:
            while not stop.is_set():
                msg = self.read()
                if msg is None:
                    # Nothing buffered: a natural batch boundary. Hand what we have to the writer if it
                    # is free; if it is busy, keep collecting (group commit) and look again soon.
                    applier.poll()
                    pending = not applier.in_txn and applier.pending()
                    if pending and not applier.writer_busy():
                        applier.flush(wait=False)
                        pending = False
                    if once and not applier.in_txn and (applier.complete >= target or self.server_wal_end >= target):
                        break
                    now = time.monotonic()
                    if once and now - last_ping > 0.2:
                        self.send_status(applier.applied, reply=True)  # ask for a keepalive: where is the sender?
                        last_ping = now
                    elif now - self.last_status > self.status_interval:
                        self.send_status(applier.applied if applier.in_txn else max(applier.applied, self.confirmed))
                    if now - self.last_record > self.status_interval:
                        self._record(applier)
                    self.wait(0.005 if pending or applier.writer_busy() else 0.2 if once else 1.0)
                    continue
                kind = msg[:1]
                if kind == b"w":
                    applier.feed(applier.parse(memoryview(msg)[25:]))
                elif kind == b"k":
                    wal_end, _, reply = struct.unpack_from("!Qq?", msg, 1)
                    self._keepalive(applier, wal_end, reply)
                if once and not applier.in_txn and (applier.complete >= target or self.server_wal_end >= target):
                    break  # drained to the position the lake had when we started, even if writes go on
            # stopping or drained: commit what is in flight (a partial lake transaction is safe to commit)
            applier.flush()
            self.send_status(applier.applied, force=True)
            self._record(applier)  # the warehouse says what the lake was told, and that it is caught up
            self.close(graceful=True)
        finally:
            self.close()

    def _committed(self, applier: Applier, lsn: int) -> None:
        """A batch committed in the warehouse: confirm its position, and a keepalive's WAL end once
        every change received before that keepalive is committed."""
        self.send_status(lsn)
        if self.keepalive_end is not None and applier.jobs_committed >= self.keepalive_end[1]:
            wal_end = self.keepalive_end[0]
            self.keepalive_end = None
            self._confirm_wal_end(applier, wal_end)

    def _confirm_wal_end(self, applier: Applier, wal_end: int) -> None:
        if wal_end > self.confirmed:
            self.send_status(max(applier.applied, wal_end))
            if time.monotonic() - self.last_record > self.status_interval:
                self._record(applier)

    def _record(self, applier: Applier) -> None:
        """Publish the confirmed position and the lag (at most every status interval, and at the end)."""
        applier.record_progress(self.confirmed)
        self.last_record = time.monotonic()

    def _keepalive(self, applier: Applier, wal_end: int, reply: bool) -> None:
        self.server_wal_end = max(self.server_wal_end, wal_end)
        if applier.in_txn:
            if reply:
                self.send_status(applier.applied)
            return
        # Every change sent before this keepalive has been received; once they are committed, the
        # lake may forget WAL up to wal_end even if none of it was ours (idle table on a busy
        # instance). Nothing waits for that here: the confirmation goes out after the commit of
        # the batch that holds those changes (now, if they are all committed already).
        if applier.pending() or applier.jobs_committed < applier.jobs_submitted:
            last_job = applier.jobs_submitted + (1 if applier.pending() else 0)
            self.keepalive_end = (max(wal_end, self.keepalive_end[0] if self.keepalive_end else 0), last_job)
            if reply:
                self.send_status(applier.applied)
            return
        self.keepalive_end = None
        if wal_end > self.confirmed:
            self._confirm_wal_end(applier, wal_end)
        elif reply:
            self.send_status(applier.applied)


class SqlTransport:
    """``pg_logical_slot_peek_changes`` + ``pg_replication_slot_advance``, for lakes behind proxies."""

    max_growth = 64

    def __init__(self, dsn: str, slot: str, options: list[str], *, batch_size: int, interval: float,
                 guard: lakemod.TableGuard | None = None) -> None:
        self.dsn = dsn
        self.slot = slot
        self.options = options
        self.batch_size = batch_size
        self.interval = interval
        self.guard = guard  # checks the lake table before a position is confirmed past a change to it
        self.conn: psycopg.Connection | None = None
        self.confirmed = 0

    def _advance(self, lsn: int) -> None:
        """Confirm ``lsn`` to the lake once the table guard agrees; the slot refuses to move
        backwards, so never ask it to."""
        assert self.conn is not None
        if lsn <= self.confirmed:
            return
        if self.guard is not None:
            lsn = self.guard.allow(lsn, force=True)
            if lsn <= self.confirmed:
                return
        self.conn.execute("select pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, int_to_lsn(lsn)))
        self.confirmed = lsn

    def _peek(self, applier: Applier, bound: str, nchanges: int, stop: threading.Event) -> tuple[int, bool]:
        """Apply one bounded peek through a server-side cursor; (rows read, stopped early)."""
        assert self.conn is not None
        n = 0
        with self.conn.transaction():
            with self.conn.cursor(name="paynorm_peek") as cur:
                cur.itersize = 5000
                cur.execute("select data from pg_logical_slot_peek_changes(%s, %s::pg_lsn, %s, variadic %s::text[])",
                            (self.slot, bound, nchanges, self.options))
                for (data,) in cur:
                    n += 1
                    applier.feed(applier.parse(data))
                    if stop.is_set():
                        applier.flush()
                        return n, True
        applier.flush()
        return n, False

    def run(self, applier: Applier, *, once: bool, stop: threading.Event) -> None:
        self.conn = lakemod.connect(self.dsn)
        try:
            self._run(applier, once=once, stop=stop)
        finally:
            self.conn.close()
            self.conn = None

    def _run(self, applier: Applier, *, once: bool, stop: threading.Event) -> None:
        assert self.conn is not None
        info = lakemod.check_slot(self.conn, self.slot)
        self.confirmed = lsn_to_int(info["confirmed_flush_lsn"])
        nchanges = self.batch_size
        target = lakemod.current_lsn(self.conn) if once else None
        prev_bound: int | None = None
        log.info("peeking slot %s from %s%s", self.slot, int_to_lsn(applier.applied),
                 f" up to {target}" if target else "")
        while not stop.is_set():
            bound = target if (once and prev_bound is None) else lakemod.current_lsn(self.conn)
            assert bound is not None
            n, stopped = self._peek(applier, bound, nchanges, stop)
            self._advance(applier.applied)
            if stopped:
                break
            if n >= nchanges:  # more backlog: fewer, larger peeks keep re-decoding from restart_lsn rare
                nchanges = min(nchanges * 2, self.batch_size * self.max_growth)
                continue
            nchanges = self.batch_size
            # The peek reached its bound. Advance the slot to the PREVIOUS bound only: a commit
            # record straddling a bound may not have been flushed when it was read.
            if prev_bound is not None and prev_bound > self.confirmed:
                self._advance(prev_bound)
            applier.record_progress(self.confirmed)  # caught up to the bound: publish it
            if once and prev_bound is not None:
                break
            prev_bound = lsn_to_int(bound)
            if once:
                continue  # one more short peek, then the start position is safe to confirm
            stop.wait(self.interval)
