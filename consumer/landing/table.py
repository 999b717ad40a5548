"""The landing table ``raw.lake_transactions``: row images in, one set-based upsert out.

Every source (CDC stream, snapshot, poll, files) builds ``LandingRow``s and hands a batch to
``write_batch`` inside the caller's warehouse transaction, so the data and the source position
commit together. Upserts are ordered by LSN: an image only replaces one that is not newer, which is
what lets a snapshot and the stream interleave in any order and a replayed batch do no harm.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, Iterable, Sequence

import psycopg
from psycopg import sql

from .decoder import decode_pairs

log = logging.getLogger(__name__)

#: Lake columns tried, in order, as the payload column when none is configured.
PAYLOAD_COLUMN_CANDIDATES = ("data", "transaction_data", "payload")

_JSON_TYPES = {"json", "jsonb"}
_quote = json.encoder.encode_basestring  # the C string encoder behind json.dumps, without its overhead
_key_cache: dict[str, str] = {}
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def init_warehouse(conn: psycopg.Connection) -> None:
    """Create the paynorm and raw schemas and the landing objects; safe to run at every start."""
    ddl = resources.files("consumer").joinpath("sql/warehouse.sql").read_text()
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtextextended('paynorm.init', 0))")
        conn.execute(ddl)


def encode_json_value(value: Any, is_json: bool) -> str:
    """One lake column value as JSON text, exactly: numbers stay decimal text, jsonb stays as sent.

    wal2json sends json/jsonb columns as strings holding JSON, numbers as bare JSON numbers (parsed
    here as Decimal), booleans as JSON booleans and everything else as strings.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, Decimal)):
        if isinstance(value, Decimal) and not value.is_finite():
            return "null"
        return str(value)
    if is_json:
        # jsonb cannot hold \u0000; json columns can. Drop the escape, keep the rest.
        return _NUL_ESCAPE.sub(r"\1", value) if "\\u0000" in value else value
    return _quote(value)


def encode_text_value(text: str | None, category: str, is_json: bool) -> str:
    """A column read as ``col::text`` in a snapshot, encoded exactly as ``encode_json_value`` would."""
    if text is None:
        return "null"
    if is_json:
        return encode_json_value(text, True)
    if category == "N":  # numeric types: the text output is a valid JSON number unless NaN/Infinity
        return "null" if text in ("NaN", "Infinity", "-Infinity") else text
    if category == "B":
        return "true" if text in ("t", "true") else "false"
    return _quote(text)


@dataclass(slots=True)
class LandingRow:
    """One change to land. ``columns`` maps column name to encoded JSON text.

    ``partial`` means some columns are missing (an UPDATE without its unchanged TOASTed columns,
    or a DELETE that only carries the key): the stored image is kept and the new columns merged in.
    ``payload_raw`` is None when the payload column is not among ``columns``.
    """

    lake_key: str
    columns: dict[str, str]
    op: str
    lsn: str | None
    xid: int | None
    committed_at: str | None
    partial: bool = False
    deleted: bool = False
    payload_raw: str | None = None
    payload_is_json: bool = True
    has_payload: bool = False
    #: The key of the payload in ``columns``; when set and the decoded payload is the column's own
    #: JSON text, the payload travels to the warehouse once (see ``staged_records``).
    payload_column: str | None = None


class LandingBatch:
    """Changes buffered for one warehouse transaction, deduplicated by lake key in arrival order."""

    def __init__(self, source: str, max_payload_bytes: int = 1024 * 1024) -> None:
        self.source = source
        self.max_payload_bytes = max_payload_bytes
        self.rows: dict[str, LandingRow] = {}
        self.changes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: LandingRow) -> None:
        """Add a change; a partial change for a key already buffered merges into it."""
        self.changes += 1
        prev = self.rows.get(row.lake_key)
        if prev is not None and row.partial and not row.deleted and not prev.deleted:
            prev.columns.update(row.columns)
            if row.has_payload:
                prev.payload_raw, prev.has_payload = row.payload_raw, True
                prev.payload_is_json, prev.payload_column = row.payload_is_json, row.payload_column
            prev.op, prev.lsn, prev.xid, prev.committed_at = row.op, row.lsn, row.xid, row.committed_at
            return
        if prev is not None:
            if row.deleted and not prev.deleted:  # a tombstone keeps the last image seen
                row.columns = {**prev.columns, **row.columns}
                row.payload_raw, row.has_payload = prev.payload_raw, prev.has_payload
                row.payload_is_json, row.payload_column = prev.payload_is_json, prev.payload_column
                row.partial = prev.partial
            del self.rows[row.lake_key]  # keep arrival order: the key moves to the end
        self.rows[row.lake_key] = row

    def clear(self) -> None:
        self.rows.clear()
        self.changes = 0


# row_data and payload are jsonb here so COPY parses each once; payload_key (when set) names the
# payload column, which staged_records left out of row_data (the landing stores it that way too).
# toast_tuple_target: a staged row under 8 kB is not compressed here, so it reaches the landing as the
# landing stores it (uncompressed up to 8 kB, lz4 beyond: warehouse.sql); a value compressed here
# would be copied into the landing as it is, with the default pglz, which every jsonpath of a build
# then has to decompress.
STAGING_DDL = """
create temp table if not exists _paynorm_landing (
    lake_key text, row_data jsonb, partial boolean, has_payload boolean, payload jsonb,
    payload_format text, decode_error text, shape_key text, op text, deleted boolean,
    lake_lsn text, lake_xid bigint, committed_at text, payload_key text
) with (toast_tuple_target = 8160) on commit delete rows
"""

_UPSERT_TEMPLATE = """
insert into raw.lake_transactions as t (
    lake_key, row_data, payload_key, payload, payload_format, decode_error, shape_key, op, deleted, source,
    lake_lsn, lake_xid, committed_at, loaded_at, load_seq)
select s.lake_key,
       -- row_data leaves out the column payload_key names (see warehouse.sql): a complete change is
       -- staged that way already; a partial one merges into the stored full image, then drops it.
       case when not s.partial then s.row_data
            when k.payload_key is null then coalesce(w.image, '{}'::jsonb) || s.row_data
            else (coalesce(w.image, '{}'::jsonb) || s.row_data) - k.payload_key end,
       k.payload_key,
       case when s.has_payload then s.payload else w.payload end,
       case when s.has_payload then s.payload_format else coalesce(w.payload_format, 'empty') end,
       case when s.has_payload then s.decode_error
            when w.lake_key is null and not s.deleted
                then 'payload column missing from the change (unchanged TOAST) and no earlier image'
            else w.decode_error end,
       case when s.has_payload then s.shape_key else w.shape_key end,
       s.op, s.deleted, %(source)s, s.lake_lsn::pg_lsn, s.lake_xid, s.committed_at::timestamptz,
       clock_timestamp(), nextval('raw.load_seq')
from _paynorm_landing s
-- The stored image is only needed to merge partial changes. "offset 0" keeps this lateral
-- subquery a per-row probe: without it the planner pulls it up into a hash join that reads the
-- whole landing table for every batch (measured: 220 ms of a 770 ms batch at 100k landed rows,
-- growing with the table). As a probe, the condition on s alone is a one-time filter: complete
-- rows (most) never touch the index at all.
left join lateral (
    select w.lake_key, raw.row_image(w.row_data, w.payload_key, w.payload) as image, w.payload_key,
           w.payload, w.payload_format, w.decode_error, w.shape_key
    from raw.lake_transactions w
    where w.lake_key = s.lake_key and (s.partial or not s.has_payload)
    offset 0
) w on true
-- The payload column the new image leaves out: the change's own when it carries the payload or is
-- complete (a complete change without one has no payload column), else the stored image's.
cross join lateral (
    select case when s.has_payload or not s.partial then s.payload_key else w.payload_key end as payload_key
) k
on conflict (lake_key) do update set
    row_data = excluded.row_data, payload_key = excluded.payload_key, payload = excluded.payload,
    payload_format = excluded.payload_format,
    decode_error = excluded.decode_error, shape_key = excluded.shape_key, op = excluded.op,
    deleted = excluded.deleted, source = excluded.source, lake_lsn = excluded.lake_lsn,
    lake_xid = excluded.lake_xid, committed_at = excluded.committed_at,
    loaded_at = excluded.loaded_at, load_seq = excluded.load_seq
where case
    -- Source precedence (the landing contract, README): a file record never rewrites, revives or
    -- tombstones a row another source owns (a lake row CDC or poll landed), unless the files are
    -- declared to be the lake's own export (UPSERT_FROM_STAGING_AS_LAKE_EXPORT): then the file's image
    -- is the row's, whatever landed it (a later CDC change, with its LSN, replaces it again).
    when excluded.source like 'file:%%' and t.source <> excluded.source then {files_are_lake}
    -- CDC images are ordered by LSN: an image only replaces one that is not newer.
    when excluded.lake_lsn is not null and t.lake_lsn is not null then excluded.lake_lsn >= t.lake_lsn
    -- An image without an LSN (poll, files) never overrides an image or a tombstone CDC landed: it
    -- cannot say whether it is newer.
    when excluded.lake_lsn is null and t.lake_lsn is not null then false
    -- Sources without an LSN re-read rows: rewrite only what changed, so dbt's incremental models
    -- see only new and changed rows.
    when excluded.lake_lsn is null then (t.row_data, t.payload_key, t.payload, t.deleted, t.source)
        is distinct from (excluded.row_data, excluded.payload_key, excluded.payload, excluded.deleted, excluded.source)
    else true
end
"""
#: The landing upsert (parameter: source). Files never take over rows other sources own...
UPSERT_FROM_STAGING = _UPSERT_TEMPLATE.replace("{files_are_lake}", "false")
#: ... unless they are the lake's own export (`paynorm load --files-are-lake-export`).
UPSERT_FROM_STAGING_AS_LAKE_EXPORT = _UPSERT_TEMPLATE.replace("{files_are_lake}", "true")

#: Columns of a staged record, in order (``staged_records`` yields tuples of them).
STAGED_COLUMNS = ("lake_key, row_data, partial, has_payload, payload, payload_format, decode_error, shape_key, "
                  "op, deleted, lake_lsn, lake_xid, committed_at, payload_key")
_COPY = f"copy _paynorm_landing ({STAGED_COLUMNS}) from stdin"


def _row_json(columns: dict[str, str], skip: str | None = None) -> str:
    parts = []
    for k, v in columns.items():
        if k == skip:
            continue
        qk = _key_cache.get(k)
        if qk is None:
            qk = _key_cache[k] = _quote(k) + ":"
        parts.append(qk + v)
    return "{" + ",".join(parts) + "}"


def staged_records(batch: LandingBatch) -> Iterable[tuple[Any, ...]]:
    """The batch's rows as staged records (``STAGED_COLUMNS``), payloads decoded.

    When the decoded payload is the payload column's own JSON text (a JSON object in a jsonb
    column: most rows), row_data leaves that column out and ``payload_key`` names it, so the text
    crosses the wire, is parsed into jsonb and is stored once instead of twice (the landing keeps
    it that way: ``raw.row_image`` gives the full image back).
    """
    return _staged(list(batch.rows.values()), batch.max_payload_bytes, None)


def payload_pairs(rows: Iterable[LandingRow]) -> list[tuple[str | None, bool]]:
    """What decoding needs of the rows that carry a payload, in order: (text, is_json) pairs
    (``decoder.DecodeWorker`` decodes them in another process; ``stage_rows`` takes the results)."""
    return [(r.payload_raw, r.payload_is_json) for r in rows if r.has_payload]


def _staged(rows: Sequence[LandingRow], max_bytes: int,
            decoded: Sequence[tuple[Any, ...]] | None) -> Iterable[tuple[Any, ...]]:
    results = iter(decoded if decoded is not None else decode_pairs(payload_pairs(rows), max_bytes))
    for r in rows:
        payload = fmt = err = shape = key = None
        if r.has_payload:
            payload, fmt, err, shape = next(results)
            pc = r.payload_column
            if pc is not None and payload is not None and r.columns.get(pc) == payload:
                key = pc
        yield (r.lake_key, _row_json(r.columns, key), r.partial, r.has_payload, payload, fmt, err, shape,
               r.op, r.deleted, r.lsn, r.xid, r.committed_at, key)


def stage(batch: LandingBatch) -> list[tuple[Any, ...]]:
    """Decode the batch now (CPU work, no database): ``write_batch`` can take the result later,
    on another thread, after the batch itself has been cleared and refilled."""
    return list(staged_records(batch))


def stage_rows(rows: Sequence[LandingRow], max_bytes: int,
               decoded: Sequence[tuple[Any, ...]] | None = None) -> list[tuple[Any, ...]]:
    """``stage`` for rows taken out of a batch, with their payloads already decoded elsewhere
    (``decoded``: ``decoder.decode_pairs`` of their ``payload_pairs``) or decoded now."""
    return list(_staged(rows, max_bytes, decoded))


def write_batch(conn: psycopg.Connection, batch: LandingBatch | None, records: list[tuple[Any, ...]] | None = None,
                *, source: str | None = None, files_are_lake_export: bool = False) -> int:
    """Upsert the batch (or its ``stage``d records) into the landing table, inside the caller's
    transaction; rows written. Source precedence applies (``UPSERT_FROM_STAGING``);
    ``files_are_lake_export`` lets file records take over rows of other sources.

    If PostgreSQL refuses the batch because of one row's content (a value jsonb cannot hold, JSON
    nested past the server's stack limit), the rows are retried one by one and each refused row
    lands as a stub with the reason in ``decode_error``: the stream never stops on a bad row.
    """
    if records is None:
        assert batch is not None
        records = stage(batch)
    source = source if source is not None else batch.source if batch is not None else None
    assert source is not None
    if not records:
        return 0
    conn.execute(STAGING_DDL)
    try:
        with conn.transaction():
            return _upsert(conn, records, source, files_are_lake_export)
    except _ROW_ERRORS as e:
        log.warning("batch refused by the warehouse (%s); landing its rows one by one",
                    str(e).strip().splitlines()[0])
    written = 0
    for rec in records:
        try:
            with conn.transaction():
                written += _upsert(conn, [rec], source, files_are_lake_export, clear=True)
        except _ROW_ERRORS as e:
            reason = f"landing refused the row: {str(e).strip().splitlines()[0]}"[:300]
            log.warning("lake row %s: %s", rec[0], reason)
            stub = (rec[0], json.dumps({"_paynorm_error": reason}), False, True, None, rec[5] or "text",
                    reason, None, *rec[8:13], None)
            with conn.transaction():
                written += _upsert(conn, [stub], source, files_are_lake_export, clear=True)
    return written


_ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded)


def _upsert(conn: psycopg.Connection, records: Sequence[Sequence[Any]], source: str, files_are_lake_export: bool,
            clear: bool = False) -> int:
    with conn.cursor() as cur:
        with cur.copy(_COPY) as copy:
            for rec in records:
                copy.write_row(rec)
    n = upsert_staged(conn, source, files_are_lake_export=files_are_lake_export)
    if clear:  # the temp table empties itself at commit; within one transaction, do it by hand
        conn.execute("delete from _paynorm_landing")
    return n


def upsert_staged(conn: psycopg.Connection, source: str, *, files_are_lake_export: bool = False) -> int:
    """Upsert the records staged in ``_paynorm_landing`` (STAGING_DDL) as ``source``, with source
    precedence; rows written. ``write_batch`` stages and calls it; a source that streams its records
    into the staging table itself (a file) calls it once at the end."""
    upsert = UPSERT_FROM_STAGING_AS_LAKE_EXPORT if files_are_lake_export else UPSERT_FROM_STAGING
    return conn.execute(upsert, {"source": source}).rowcount


#: Staged records whose key is a row another source owns: precedence keeps that row.
_OWNED_ELSEWHERE = """
select count(*) from _paynorm_landing s join raw.lake_transactions t on t.lake_key = s.lake_key
where t.source <> %(source)s
"""


def staged_owned_elsewhere(conn: psycopg.Connection, source: str) -> int:
    """How many staged records the upsert will leave out because another source owns their row
    (so the source can say so: precedence keeps rows, it never drops records silently)."""
    return conn.execute(_OWNED_ELSEWHERE, {"source": source}).fetchone()[0]  # type: ignore[index]


# Rows of ``source`` that are not staged (records of a file's older version that the new one no longer
# has): only rows this very source owns (source = 'file:<key>'), never a row another source (CDC, poll, another file) landed. The
# owner is checked on the row being updated too, not only in the set difference: when a concurrent
# writer (the CDC consumer) takes the row over first, the update re-checks its latest version and
# leaves it alone.
_TOMBSTONE_UNSTAGED = """
update raw.lake_transactions t set deleted = true, op = 'F', loaded_at = clock_timestamp(),
       load_seq = nextval('raw.load_seq')
from (select lake_key from raw.lake_transactions
      where source = %(source)s and source like 'file:%%' and not deleted
      except
      select lake_key from _paynorm_landing) gone
where t.lake_key = gone.lake_key and t.source = %(source)s and not t.deleted
"""

def tombstone_unstaged(conn: psycopg.Connection, source: str) -> int:
    """Mark deleted every live row of ``source`` whose key is not staged; rows tombstoned."""
    return conn.execute(_TOMBSTONE_UNSTAGED, {"source": source}).rowcount


def tombstone_source(conn: psycopg.Connection, source: str, *, before_lsn: str, op: str,
                     xid: int | None = None, committed_at: str | None = None, inclusive: bool = False) -> int:
    """Mark deleted every live row of ``source`` older than ``before_lsn`` (TRUNCATE, re-snapshot)."""
    query = sql.SQL(
        "update raw.lake_transactions set deleted = true, op = %(op)s, lake_lsn = %(lsn)s::pg_lsn,"
        " lake_xid = %(xid)s, committed_at = coalesce(%(ts)s::timestamptz, committed_at),"
        " loaded_at = clock_timestamp(), load_seq = nextval('raw.load_seq')"
        " where source = %(source)s and not deleted and lake_lsn {cmp} %(lsn)s::pg_lsn"
    ).format(cmp=sql.SQL("<=" if inclusive else "<"))
    cur = conn.execute(query, {"op": op, "lsn": before_lsn, "xid": xid, "ts": committed_at, "source": source})
    return cur.rowcount
