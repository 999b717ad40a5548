"""`paynorm poll`: the brief's polling mode, for lakes without logical replication.

Keyset polling on a watermark ``(created_at, primary key)``. Every poll re-reads a safety window
(``created_at >= watermark - safety_lag``) so a row whose ``created_at`` is older than the
watermark but that committed later is still landed; rows that did not change are not rewritten
(the landing upsert compares images for sources without an LSN), so the re-read costs no
downstream work. Deletes are invisible to polling: use CDC when they matter.

``--mark-processed`` is the brief's protocol: read ``WHERE NOT processed`` and, only after the
warehouse commit, ``UPDATE ... SET processed = true, processed_at = now()`` for exactly the rows
just landed. It is the only paynorm mode that writes to the lake.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from . import lake as lakemod
from . import metrics
from .landing import LandingBatch, init_warehouse, write_batch
from .replicate import open_pool
from .settings import Settings, redact_dsn

log = logging.getLogger(__name__)

SOURCE = "poll"

_STATE_DDL = """
create table if not exists paynorm.poll_state (
    lake_table    text primary key,
    watermark     text,                 -- created_at (as text) of the newest row landed
    rows_landed   bigint not null default 0,
    polls         bigint not null default 0,
    updated_at    timestamptz not null default now()
)
"""


@dataclass
class PollResult:
    rows_read: int = 0
    rows_written: int = 0
    rows_marked: int = 0
    polls: int = 0


class PollError(RuntimeError):
    """The lake table cannot be polled as configured; the message says why."""


class Poller:
    def __init__(self, settings: Settings, *, mark_processed: bool, safety_lag: float,
                 watermark_column: str = "created_at") -> None:
        self.settings = settings
        self.mark_processed = mark_processed
        self.safety_lag = safety_lag
        self.watermark_column = watermark_column

    def _prepare(self, conn: psycopg.Connection) -> None:
        self.table = lakemod.describe_table(conn, self.settings.table, self.settings.payload_column)
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

    # -- queries --------------------------------------------------------------------------------

    def _page_query(self, has_cursor: bool) -> sql.Composed:
        t = self.table
        pk = lakemod.keyset_columns(t)
        alias = sql.Identifier(lakemod.KEYSET_ALIAS)
        select = sql.SQL("select {}").format(lakemod.text_select_list(t))
        if self.mark_processed:
            query = select + sql.SQL(" from {} as {} where not {}").format(
                t.ident, alias, lakemod.keyset_columns(t, "processed")[0])
            if has_cursor:
                query += sql.SQL(" and ({}) > ({})").format(sql.SQL(", ").join(pk), lakemod.pk_params(t))
            return query + sql.SQL(" order by {} limit %s").format(sql.SQL(", ").join(pk))
        assert self.ts_type is not None
        ts = lakemod.keyset_columns(t, self.watermark_column)[0]
        ts_param = sql.SQL("%s::{}").format(sql.Identifier(*self.ts_type))
        query = select + sql.SQL(", {}::text from {} as {}").format(ts, t.ident, alias)
        if has_cursor:
            query += sql.SQL(" where ({}, {}) > ({}, {})").format(
                ts, sql.SQL(", ").join(pk), ts_param, lakemod.pk_params(t))
        else:
            query += sql.SQL(" where {} >= {} - make_interval(secs => %s)").format(ts, ts_param)
        return query + sql.SQL(" order by {}, {} limit %s").format(ts, sql.SQL(", ").join(pk))

    # -- one pass ---------------------------------------------------------------------------------

    def poll_once(self, lake: psycopg.Connection, writer: psycopg.Connection | None, pool: Any,
                  stop: threading.Event) -> PollResult:
        """Read every row past the (lagged) watermark, land it, move the watermark."""
        res = PollResult(polls=1)
        with pool.connection() as wh:
            row = wh.execute("select watermark from paynorm.poll_state where lake_table = %s",
                             (self.table.qualified,)).fetchone()
        watermark = row[0] if row else None
        npk = len(self.table.pk)
        cursor: list[str] | None = None
        batch = LandingBatch(SOURCE, self.settings.max_payload_bytes)
        while not stop.is_set():
            if self.mark_processed:
                params: list[Any] = [*(cursor or []), self.settings.batch_size]
            elif cursor is None:
                params = [watermark or "-infinity", self.safety_lag, self.settings.batch_size]
            else:
                params = [*cursor, self.settings.batch_size]
            records = lake.execute(self._page_query(cursor is not None), params).fetchall()
            if not records:
                break
            batch.clear()
            for r in lakemod.rows_from_text(self.table, records, op="P", lsn=None):
                batch.add(r)
            last = records[-1]
            if self.mark_processed:
                cursor = list(last[:npk])
            else:
                cursor = [last[-1], *last[:npk]]
                newest = max(r[-1] for r in records)
                watermark = newest if watermark is None else max(watermark, newest, key=self._ts_key)
            with pool.connection() as wh:
                with wh.transaction():
                    written = write_batch(wh, batch)
                    wh.execute(
                        "insert into paynorm.poll_state as s (lake_table, watermark, rows_landed, polls)"
                        " values (%s, %s, %s, 1) on conflict (lake_table) do update set"
                        " watermark = excluded.watermark, rows_landed = s.rows_landed + excluded.rows_landed,"
                        " updated_at = now()",
                        (self.table.qualified, watermark, written))
            metrics.ROWS_LANDED.labels("P").inc(written)
            res.rows_read += len(records)
            res.rows_written += written
            if self.mark_processed and writer is not None:
                res.rows_marked += self._mark(writer, [r[0] for r in records])
            log.info("poll batch: %s rows read, %s written%s", len(records), written,
                     f", {len(records)} marked processed" if self.mark_processed else "")
            if len(records) < self.settings.batch_size:
                break
        with pool.connection() as wh:
            wh.execute("update paynorm.poll_state set polls = polls + 1, updated_at = now() where lake_table = %s",
                       (self.table.qualified,))
        return res

    def _ts_key(self, text: str) -> Any:
        """Order watermark texts as the column's type does (they come from ``col::text``)."""
        try:
            dt = datetime.fromisoformat(text.replace(" ", "T"))
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        except ValueError:  # -infinity and other specials sort first
            return datetime.min.replace(tzinfo=timezone.utc)

    def _mark(self, writer: psycopg.Connection, keys: list[str]) -> int:
        """After the warehouse commit: flag exactly the rows just landed (the brief's protocol)."""
        t = self.table
        nsp, typ = t.pk_types[0]
        set_clause = sql.SQL("processed = true, processed_at = now()") if self.has_processed_at \
            else sql.SQL("processed = true")
        query = sql.SQL("update {} set {} where {} = any(%s::{}[])").format(
            t.ident, set_clause, sql.Identifier(t.pk[0]), sql.Identifier(nsp, typ))
        try:
            return writer.execute(query, (keys,)).rowcount
        except psycopg.errors.InsufficientPrivilege as e:
            raise PollError(f"--mark-processed needs the right to flag rows: GRANT UPDATE (processed"
                            f"{', processed_at' if self.has_processed_at else ''}) ON {t.qualified} TO <lake role>"
                            ) from e


def poll(settings: Settings, *, once: bool = False, mark_processed: bool = False, safety_lag: float = 300.0,
         stop: threading.Event | None = None) -> PollResult:
    """Poll until stopped (or one full pass with ``once``)."""
    stop = stop or threading.Event()
    log.info("polling %s from %s%s", settings.table, redact_dsn(settings.lake_dsn),
             " (marking rows processed in the lake)" if mark_processed else "")
    total = PollResult()
    pool = open_pool(settings.warehouse_dsn, max_size=2)
    poller = Poller(settings, mark_processed=mark_processed, safety_lag=safety_lag)
    backoff = 1.0
    try:
        with pool.connection() as wh:
            init_warehouse(wh)
            wh.execute(_STATE_DDL)
        while not stop.is_set():
            try:
                with lakemod.connect(settings.lake_dsn) as lake:
                    writer = lakemod.connect(settings.lake_dsn, read_only=False) if mark_processed else None
                    try:
                        poller._prepare(lake)
                        while not stop.is_set():
                            started = time.monotonic()
                            r = poller.poll_once(lake, writer, pool, stop)
                            total.rows_read += r.rows_read
                            total.rows_written += r.rows_written
                            total.rows_marked += r.rows_marked
                            total.polls += 1
                            log.info("poll: %s rows read, %s landed or changed, %.2fs", r.rows_read, r.rows_written,
                                     time.monotonic() - started)
                            backoff = 1.0
                            if once:
                                return total
                            stop.wait(settings.interval)
                    finally:
                        if writer is not None:
                            writer.close()
            except psycopg.OperationalError as e:
                log.warning("connection problem (%s); retrying in %.0fs", str(e).strip().splitlines()[0], backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, settings.max_backoff)
        return total
    finally:
        pool.close()
