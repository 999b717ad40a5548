"""`paynorm poll`: the polling mode, for lakes without logical replication.

Keyset polling on a watermark ``(created_at, primary key)``. Every poll re-reads a safety window
(``created_at >= watermark - safety_lag``) so a row whose ``created_at`` is older than the
watermark but that committed later is still landed; rows that did not change are not rewritten
(the landing upsert compares images for sources without an LSN), so the re-read costs no
downstream work. Deletes are invisible to polling, and so are rows whose ``created_at`` is NULL:
use CDC when they matter.

The watermark never passes the lake's ``now()``. A row dated in the future (a clock or data
error, ``'infinity'``) still lands, but it cannot hide the rows inserted after it; it is re-read
at every poll while its date is ahead of now, which rewrites nothing while its image is unchanged.
For a ``timestamp`` (without time zone) column, now is the lake's clock in UTC (the session's
TimeZone): a lake that writes local wall time ahead of UTC sees its newest rows as ahead of now
for that offset, so they are re-read for longer, never skipped.

``--mark-processed`` is the processed-flag protocol: read the rows whose ``processed`` is not true (NULL
counts as unprocessed) and, only after the warehouse commit, flag them ``processed = true``
(and ``processed_at = now()``). The flag is compare-and-set on the row version read (``xmin``):
a row that changed between the read and the flag keeps its flag unset and is read again at the
next poll, so its new image lands. It is the only paynorm mode that writes to the lake.

Every connection goes through the one retry policy (consumer/retry.py): a permanent problem (DSN,
password, role, privilege, table) fails at once with ConfigError; an unreachable lake or warehouse
is retried with back-off until the deadline, then TransientError.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ... import landing
from ...ops import metrics
from ...errors import ConfigError, TransientError, require_dsn
from ...landing import LandingBatch, init_warehouse
from ...landing.connection import check_connection, open_pool
from ...secrets import redact_dsn
from ...settings import Settings
from .. import run_source
from . import lake as lakemod

log = logging.getLogger(__name__)

SOURCE = "poll"

_STATE_DDL = """
create table if not exists paynorm.poll_state (
    lake_table    text primary key,
    watermark     text,                 -- created_at (as text) of the newest row landed, at most the lake's now()
    rows_landed   bigint not null default 0,
    polls         bigint not null default 0,
    updated_at    timestamptz not null default now()
)
"""

#: Types a watermark column may have: ordered, comparable with now(), with -infinity.
_WATERMARK_TYPES = frozenset({"timestamptz", "timestamp", "date"})


@dataclass
class PollResult:
    """What a run did. ``polls`` counts complete passes; ``stopped`` is true when a stop request
    (SIGTERM) cut a pass short, so the rows after the last landed page were not read."""

    rows_read: int = 0
    rows_written: int = 0
    rows_marked: int = 0
    polls: int = 0
    stopped: bool = False


class PollError(ConfigError):
    """The lake table cannot be polled as configured; the message says why."""


class Poller:
    def __init__(self, settings: Settings, *, mark_processed: bool, safety_lag: float,
                 watermark_column: str = "created_at") -> None:
        self.settings = settings
        self.mark_processed = mark_processed
        self.safety_lag = safety_lag
        self.watermark_column = watermark_column

    def _prepare(self, conn: psycopg.Connection) -> None:
        try:
            self.table = lakemod.describe_table(conn, self.settings.table, self.settings.payload_column)
        except lakemod.LakeError as e:
            raise ConfigError(str(e)) from e
        names = {c.name for c in self.table.columns}
        self.ts_type = lakemod.column_type(conn, self.table, self.watermark_column)
        if self.mark_processed:
            if "processed" not in names:
                raise PollError(f"--mark-processed needs a `processed` column in {self.table.qualified}")
            if len(self.table.pk) != 1:
                raise PollError("--mark-processed needs a single-column primary key")
            self.has_processed_at = "processed_at" in names
        elif self.ts_type is None:
            raise PollError(f"{self.table.qualified} has no {self.watermark_column!r} column to poll on; "
                            f"use --mark-processed or CDC")
        elif self.ts_type[0] != "pg_catalog" or self.ts_type[1] not in _WATERMARK_TYPES:
            raise PollError(f"{self.table.qualified}.{self.watermark_column} is {self.ts_type[1]}, not a timestamp "
                            f"or date: it cannot be a watermark; use --mark-processed or CDC")

    # -- queries --------------------------------------------------------------------------------

    def _page_query(self, has_cursor: bool) -> sql.Composed:
        """One keyset page. Watermark mode appends ``created_at::text`` (the cursor) and the
        watermark this row moves to: ``least(greatest(created_at, watermark), now())``."""
        t = self.table
        pk = lakemod.keyset_columns(t)
        alias = sql.Identifier(lakemod.KEYSET_ALIAS)
        select = sql.SQL("select {}").format(lakemod.text_select_list(t))
        if self.mark_processed:
            query = select + sql.SQL(", {}::text from {} as {} where {} is not true").format(
                sql.Identifier(lakemod.KEYSET_ALIAS, "xmin"), t.ident, alias,
                lakemod.keyset_columns(t, "processed")[0])
            if has_cursor:
                query += sql.SQL(" and ({}) > ({})").format(sql.SQL(", ").join(pk), lakemod.pk_params(t))
            return query + sql.SQL(" order by {} limit %s").format(sql.SQL(", ").join(pk))
        assert self.ts_type is not None
        ts = lakemod.keyset_columns(t, self.watermark_column)[0]
        typ = sql.Identifier(*self.ts_type)
        ts_param = sql.SQL("%s::{}").format(typ)
        now = sql.SQL("now()::{}").format(typ)
        query = select + sql.SQL(", {ts}::text, least(greatest({ts}, {wm}), {now})::text from {t} as {a}").format(
            ts=ts, wm=ts_param, now=now, t=t.ident, a=alias)
        if has_cursor:
            query += sql.SQL(" where ({}, {}) > ({}, {})").format(
                ts, sql.SQL(", ").join(pk), ts_param, lakemod.pk_params(t))
        else:
            query += sql.SQL(" where {} >= least({}, {}) - make_interval(secs => %s)").format(ts, ts_param, now)
        return query + sql.SQL(" order by {}, {} limit %s").format(ts, sql.SQL(", ").join(pk))

    # -- one pass ---------------------------------------------------------------------------------

    def poll_once(self, lake: psycopg.Connection, writer: psycopg.Connection | None, pool: Any,
                  stop: threading.Event, res: PollResult | None = None) -> bool:
        """Read every row past the (lagged) watermark, land it, move the watermark; counts go into
        ``res`` page by page (so a pass that fails later still counts what it landed). False when
        ``stop`` cut the pass short."""
        res = res if res is not None else PollResult()
        with pool.connection() as wh:
            row = wh.execute("select watermark from paynorm.poll_state where lake_table = %s",
                             (self.table.qualified,)).fetchone()
        watermark = row[0] if row else None
        npk = len(self.table.pk)
        cursor: list[str] | None = None
        batch = LandingBatch(SOURCE, self.settings.max_payload_bytes)
        while True:
            if stop.is_set():
                return False
            if self.mark_processed:
                params: list[Any] = [*(cursor or []), self.settings.batch_size]
            elif cursor is None:
                wm = watermark or "-infinity"
                params = [wm, wm, self.safety_lag, self.settings.batch_size]
            else:
                params = [watermark or "-infinity", *cursor, self.settings.batch_size]
            records = lake.execute(self._page_query(cursor is not None), params).fetchall()
            if not records:
                break
            batch.clear()
            for r in lakemod.rows_from_text(self.table, records, op="P", lsn=None):
                batch.add(r)
            last = records[-1]
            if self.mark_processed:
                cursor = list(last[:npk])
            else:  # pages come in (created_at, key) order: the last row carries the page's watermark
                cursor = [last[-2], *last[:npk]]
                watermark = last[-1]
            checkpoint = _Watermark(self.table.qualified, watermark,
                                    [(r[0], r[-1]) for r in records] if self.mark_processed else [])
            with pool.connection() as wh:
                written = landing.commit(wh, batch, checkpoint)
            metrics.ROWS_LANDED.labels("P").inc(written)
            res.rows_read += len(records)
            res.rows_written += written
            marked = 0
            if self.mark_processed:
                assert writer is not None
                marked = self.acknowledge(writer, checkpoint)
                res.rows_marked += marked
            log.info("poll batch: %s rows read, %s written%s", len(records), written,
                     f", {marked} marked processed" if self.mark_processed else "")
            if len(records) < self.settings.batch_size:
                break
        with pool.connection() as wh:
            wh.execute("insert into paynorm.poll_state as s (lake_table, watermark, polls) values (%s, %s, 1)"
                       " on conflict (lake_table) do update set polls = s.polls + 1, updated_at = now()",
                       (self.table.qualified, watermark))
        return True

    def acknowledge(self, writer: psycopg.Connection, checkpoint: _Watermark) -> int:
        """After the warehouse commit (--mark-processed): flag the rows just landed, each only if it
        is still the version read (same xmin). A row updated since keeps its flag unset: read again
        next poll."""
        landed = checkpoint.landed
        t = self.table
        nsp, typ = t.pk_types[0]
        alias = sql.Identifier(lakemod.KEYSET_ALIAS)
        set_clause = sql.SQL("processed = true, processed_at = now()") if self.has_processed_at \
            else sql.SQL("processed = true")
        query = sql.SQL(
            "update {t} as {a} set {set} from unnest(%s::{pktype}[], %s::xid[]) as landed(k, x)"
            " where {pk} = landed.k and {xmin} = landed.x and {processed} is not true").format(
            t=t.ident, a=alias, set=set_clause, pktype=sql.Identifier(nsp, typ),
            pk=lakemod.keyset_columns(t)[0], xmin=sql.Identifier(lakemod.KEYSET_ALIAS, "xmin"),
            processed=lakemod.keyset_columns(t, "processed")[0])
        try:
            return writer.execute(query, ([k for k, _ in landed], [x for _, x in landed])).rowcount
        except psycopg.errors.InsufficientPrivilege as e:
            raise PollError(f"--mark-processed needs the right to flag rows: GRANT UPDATE (processed"
                            f"{', processed_at' if self.has_processed_at else ''}) ON {t.display} TO <lake role>"
                            ) from e


@dataclass
class _Watermark:
    """The poll's checkpoint after a page: the watermark, saved with the page's rows; with
    --mark-processed, the (key, xmin) of each row landed, flagged in the lake once committed."""

    lake_table: str
    watermark: Any
    landed: list[tuple[str, str]]

    def save(self, conn: psycopg.Connection, rows: int) -> None:
        conn.execute(
            "insert into paynorm.poll_state as s (lake_table, watermark, rows_landed, polls)"
            " values (%s, %s, %s, 0) on conflict (lake_table) do update set"
            " watermark = excluded.watermark, rows_landed = s.rows_landed + excluded.rows_landed,"
            " updated_at = now()",
            (self.lake_table, self.watermark, rows))


class _Connections:
    """The warehouse pool and the lake connections of a run, opened on demand: after a failure the
    lake side is dropped and the next attempt reconnects (and describes the table again)."""

    def __init__(self, settings: Settings, poller: Poller) -> None:
        self.settings = settings
        self.poller = poller
        self.pool: Any = None
        self.lake: psycopg.Connection | None = None
        self.writer: psycopg.Connection | None = None

    def ready(self) -> None:
        s = self.settings
        if self.pool is None:
            check_connection(s.warehouse_dsn)  # a bad password fails here, at once, not in the pool
            pool = open_pool(s.warehouse_dsn, max_size=2)
            try:
                with pool.connection() as wh:
                    init_warehouse(wh)
                    wh.execute(_STATE_DDL)
            except BaseException:
                pool.close()
                raise
            self.pool = pool
        if self.lake is None:
            lake = lakemod.connect(s.lake_dsn)
            try:
                self.poller._prepare(lake)
            except BaseException:
                lake.close()
                raise
            self.lake = lake
        if self.poller.mark_processed and self.writer is None:
            self.writer = lakemod.connect(s.lake_dsn, read_only=False)

    def drop_lake(self) -> None:
        for conn in (self.lake, self.writer):
            if conn is not None:
                conn.close()
        self.lake = self.writer = None

    def close(self) -> None:
        self.drop_lake()
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def poll(settings: Settings, *, once: bool = False, mark_processed: bool = False, safety_lag: float = 300.0,
         stop: threading.Event | None = None, max_attempts: int | None = None) -> PollResult:
    """Poll until stopped (or one full pass with ``once``). Raises ConfigError for a permanent
    problem, TransientError when the lake or warehouse stayed unreachable past the retry deadline
    (or ``max_attempts``, for a caller that retries on its own); a stop request returns what was
    done, with ``stopped`` set if it cut a pass short."""
    stop = stop or threading.Event()
    require_dsn(settings.lake_dsn, "DATALAKE_DATABASE_URL")
    require_dsn(settings.warehouse_dsn, "DATABASE_URL")
    log.info("polling %s from %s%s", settings.table, redact_dsn(settings.lake_dsn),
             " (marking rows processed in the lake)" if mark_processed else "")
    poller = Poller(settings, mark_processed=mark_processed, safety_lag=safety_lag)
    conns = _Connections(settings, poller)
    total = PollResult()

    def one_pass() -> bool:
        try:
            conns.ready()
            return poller.poll_once(conns.lake, conns.writer, conns.pool, stop, total)  # type: ignore[arg-type]
        except BaseException:
            conns.drop_lake()
            raise

    started, before = time.monotonic(), (0, 0)
    try:
        for completed in run_source(settings, one_pass, once=once, stop=stop, what="poll",
                                    interval=settings.interval, max_attempts=max_attempts):
            if not completed:
                total.stopped = True
                return total
            total.polls += 1
            log.info("poll: %s rows read, %s landed or changed, %.2fs", total.rows_read - before[0],
                     total.rows_written - before[1], time.monotonic() - started,
                     extra={"table": settings.table, "pass": total.polls, "rows_read": total.rows_read - before[0],
                            "rows_written": total.rows_written - before[1],
                            "seconds": round(time.monotonic() - started, 3)})
            started, before = time.monotonic(), (total.rows_read, total.rows_written)
    except TransientError:
        if not stop.is_set():
            raise
        total.stopped = True  # stopped while backing off
        return total
    finally:
        conns.close()
    if once and total.polls == 0:  # stopped before the pass began
        total.stopped = True
    return total
