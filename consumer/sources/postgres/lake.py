"""The lake side: read-only connections, table metadata, the slot, and wal2json changes as landing rows."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

import orjson
import psycopg
from psycopg import conninfo, sql

from ...landing import PAYLOAD_COLUMN_CANDIDATES, LandingRow, encode_json_value, encode_text_value

log = logging.getLogger(__name__)

#: Session settings for every lake connection: read-only, and value text output independent of the
#: server's defaults so snapshot rows and streamed rows look the same.
_LAKE_OPTIONS = "-c default_transaction_read_only=on -c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1"


class LakeError(RuntimeError):
    """A lake-side problem the operator must fix; the message says how."""


class SlotLost(LakeError):
    """The slot was dropped or invalidated: changes may be missing until a re-snapshot."""


def lsn_to_int(lsn: str) -> int:
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lake_conninfo(dsn: str, *, replication: bool = False, read_only: bool = True) -> str:
    """The lake DSN with paynorm's session options (and ``replication=database`` for the stream)."""
    params = conninfo.conninfo_to_dict(dsn)
    opts = params.get("options") or ""
    ours = _LAKE_OPTIONS if read_only else _LAKE_OPTIONS.replace("-c default_transaction_read_only=on ", "")
    params["options"] = f"{opts} {ours}".strip()
    params.setdefault("application_name", "paynorm")
    params.setdefault("connect_timeout", "10")
    if replication:
        params["replication"] = "database"
    return conninfo.make_conninfo("", **params)


def connect(dsn: str, *, autocommit: bool = True, read_only: bool = True) -> psycopg.Connection:
    return psycopg.connect(lake_conninfo(dsn, read_only=read_only), autocommit=autocommit)


@dataclass(frozen=True)
class Column:
    name: str
    category: str  # pg_type.typcategory: N numeric, B boolean, ...
    is_json: bool
    type_name: str = ""  # pg_type.typname


_JSON_TYPE_NAMES = frozenset({"json", "jsonb"})
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LakeTable:
    """What paynorm needs to know of the lake table: its columns, primary key and payload column."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    pk_types: tuple[tuple[str, str], ...]  # (schema, type name) per pk column, for keyset casts
    payload_column: str | None
    oid: int = 0  # pg_class OID: the table is tracked by it, names can change under the slot
    replica_identity: str = "d"  # pg_class.relreplident: d(efault = primary key), n(othing), f(ull), i(ndex)
    identity_index: str | None = None  # the REPLICA IDENTITY USING INDEX index, if any
    identity_columns: tuple[str, ...] = ()  # its columns
    sql_name: str = ""  # schema.table quoted where SQL needs it (the server's quote_ident), for messages

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        """The table's name as SQL spells it (quoted where needed), for messages."""
        return self.sql_name or self.ident.as_string(None)

    def lake_key(self, values: list[str]) -> str:
        """The landing key: the primary key as text (a JSON array of texts when composite)."""
        return values[0] if len(values) == 1 else json.dumps(values)


def split_table_name(text: str) -> tuple[str, str]:
    """(schema, table) of a table setting. Plain ``schema.table`` names the parts as the catalog
    spells them (the last dot separates them; no schema means public); SQL-quoted parts
    (``"Lake Data"."Raw Transactions"``, ``""`` for a quote) are for names that hold a dot."""
    text = text.strip()
    if '"' not in text:
        schema, _, name = text.rpartition(".")
        return (schema or "public", name)
    parts: list[str] = []
    i, n = 0, len(text)
    while i <= n:
        if i < n and text[i] == '"':
            buf, i = [], i + 1
            while i < n:
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    break
                buf.append(text[i])
                i += 1
            if i >= n:
                raise LakeError(f"table name {text!r}: unterminated double quote")
            i += 1
            part = "".join(buf)
        else:
            end = text.find(".", i)
            end = n if end < 0 else end
            part = text[i:end]
            i = end
        parts.append(part)
        if i < n and text[i] != ".":
            raise LakeError(f"table name {text!r}: expected a dot after {part!r}")
        i += 1
    if len(parts) > 2 or not parts[-1]:
        raise LakeError(f"table name {text!r}: write schema.table (quote a part that holds a dot)")
    return (parts[0] if len(parts) == 2 else "public", parts[-1])


def table_oid(conn: psycopg.Connection, schema: str, name: str) -> int | None:
    """The OID of ``schema.name`` (exact, case-sensitive names), None if there is no such table."""
    row = conn.execute("select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                       " where n.nspname = %s and c.relname = %s", (schema, name)).fetchone()
    return int(row[0]) if row else None


def describe_table(conn: psycopg.Connection, table: str, payload_column: str = "") -> LakeTable:
    schema, name = split_table_name(table)
    rel = conn.execute(
        """
        select c.oid, c.relreplident, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
               (select i.indexrelid::regclass::text from pg_index i where i.indrelid = c.oid and i.indisreplident),
               (select array_agg(a.attname::text order by k.ord)
                from pg_index i cross join unnest(i.indkey) with ordinality k(attnum, ord)
                join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where i.indrelid = c.oid and i.indisreplident)
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and c.relname = %s
        """,
        (schema, name),
    ).fetchone()
    rows = conn.execute(
        """
        select a.attname, t.typcategory, t.typname in ('json', 'jsonb'), t.typname
        from pg_attribute a join pg_type t on t.oid = a.atttypid
        where a.attrelid = %s and a.attnum > 0 and not a.attisdropped
        order by a.attnum
        """,
        (rel[0] if rel else 0,),
    ).fetchall()
    if rel is None or not rows:
        raise LakeError(f"lake table {schema}.{name} not found (or no SELECT right on it); set --table")
    pk = conn.execute(
        """
        select a.attname, tn.nspname, t.typname
        from pg_index i
        join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
        join pg_type t on t.oid = a.atttypid join pg_namespace tn on tn.oid = t.typnamespace
        where i.indrelid = %s and i.indisprimary
        order by array_position(i.indkey, a.attnum)
        """,
        (rel[0],),
    ).fetchall()
    if not pk:
        raise LakeError(f"lake table {schema}.{name} has no primary key: paynorm needs one to key the landing")
    columns = tuple(Column(r[0], r[1], r[2], r[3]) for r in rows)
    names = {c.name for c in columns}
    if payload_column:
        if payload_column not in names:
            raise LakeError(f"payload column {payload_column!r} is not a column of {schema}.{name} (its columns: "
                            f"{', '.join(c.name for c in columns)}): set --payload-column / PAYNORM_PAYLOAD_COLUMN")
        payload = payload_column
    else:
        payload = next((c for c in PAYLOAD_COLUMN_CANDIDATES if c in names), None)
    return LakeTable(schema, name, columns, tuple(r[0] for r in pk), tuple((r[1], r[2]) for r in pk), payload,
                     oid=int(rel[0]), replica_identity=rel[1], sql_name=rel[2], identity_index=rel[3],
                     identity_columns=tuple(rel[4] or ()))


def replica_identity_problem(table: LakeTable) -> str | None:
    """Why the table's replica identity would lose changes (None when it cannot): wal2json sends
    an UPDATE's or DELETE's old key from the replica identity only, so it must hold the primary key
    paynorm keys the landing by. DEFAULT (the primary key) and FULL (the whole old row) do."""
    fix = (f"run ALTER TABLE {table.display} REPLICA IDENTITY DEFAULT (or FULL) on the lake, then "
           f"`paynorm replicate --resnapshot` if changes were made meanwhile")
    if table.replica_identity == "n":
        return (f"lake table {table.qualified} has REPLICA IDENTITY NOTHING: its updates and deletes reach the "
                f"slot without a key and are lost; {fix}")
    if table.replica_identity == "i" and not set(table.pk) <= set(table.identity_columns):
        return (f"lake table {table.qualified} has REPLICA IDENTITY USING INDEX {table.identity_index} on "
                f"({', '.join(table.identity_columns)}), which does not hold its primary key "
                f"({', '.join(table.pk)}): deletes and key changes would be lost; {fix}")
    return None


def text_select_list(table: LakeTable) -> sql.Composable:
    """Primary key then every column, all as text: what ``rows_from_text`` turns into landing rows."""
    keys = [sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.pk]
    cols = [sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.columns]
    return sql.SQL(", ").join(keys + cols)


#: Alias of the lake table in keyset queries. ORDER BY and WHERE must name the table's columns
#: through it: the select list outputs every column as text under its own name, and an unqualified
#: ORDER BY name means the OUTPUT column — the text — which sorted integer keys as "10" < "9" (rows
#: skipped by the next keyset page) and sorted the whole table at every page.
KEYSET_ALIAS = "_lake"


def keyset_columns(table: LakeTable, *columns: str) -> list[sql.Composable]:
    """``_lake.<column>`` for each of ``columns`` (the primary key when none is given)."""
    return [sql.Identifier(KEYSET_ALIAS, c) for c in (columns or table.pk)]


def pk_params(table: LakeTable) -> sql.Composable:
    """Placeholders for a primary key value given as text, cast back to the key's types (keysets)."""
    return sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.Identifier(nsp, typ)) for nsp, typ in table.pk_types)


def rows_from_text(table: LakeTable, records: list[tuple[Any, ...]], *, op: str, lsn: str | None) -> list[LandingRow]:
    """Landing rows from records selected with ``text_select_list`` (extra trailing columns ignored);
    encoded exactly as the stream encodes the same values."""
    npk = len(table.pk)
    ncols = len(table.columns)
    out = []
    for rec in records:
        columns: dict[str, str] = {}
        payload_raw = None
        payload_is_json = True
        for col, text in zip(table.columns, rec[npk:npk + ncols]):
            columns[col.name] = encode_text_value(text, col.category, col.is_json)
            if col.name == table.payload_column:
                payload_raw, payload_is_json = text, col.is_json
        out.append(LandingRow(table.lake_key(list(rec[:npk])), columns, op, lsn, None, None,
                              payload_raw=payload_raw, payload_is_json=payload_is_json,
                              has_payload=table.payload_column is not None, payload_column=table.payload_column))
    return out


def column_type(conn: psycopg.Connection, table: LakeTable, column: str) -> tuple[str, str] | None:
    """(schema, type name) of a column, domains resolved to their base type; None if there is no
    such column. Looked up by schema and table name, so names that need quoting work."""
    row = conn.execute(
        "select tn.nspname, t.typname from pg_attribute a"
        " join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace"
        " join pg_type d on d.oid = a.atttypid"
        " join pg_type t on t.oid = case when d.typtype = 'd' then d.typbasetype else d.oid end"
        " join pg_namespace tn on tn.oid = t.typnamespace"
        " where n.nspname = %s and c.relname = %s and a.attname = %s and a.attnum > 0 and not a.attisdropped",
        (table.schema, table.name, column)).fetchone()
    return (row[0], row[1]) if row else None


# -- the table's identity while replicating -------------------------------------------------------


class TableChanged(LakeError):
    """The table the slot follows is no longer the one paynorm copied (dropped and re-created,
    renamed, replica identity changed): changes may be missing until a re-snapshot."""


_RESNAPSHOT = "run `paynorm replicate --resnapshot` to copy it again"


#: The table's identity now: by OID (name, row type version and owner, replica identity) and the
#: OID its name resolves to.
_IDENTITY_QUERY = """
        select c.oid::bigint, n.nspname, c.relname, t.xmin::text, t.typowner::bigint, c.relreplident,
               (select i.indexrelid::regclass::text from pg_index i where i.indrelid = c.oid and i.indisreplident),
               (select array_agg(a.attname::text order by k.ord)
                from pg_index i cross join unnest(i.indkey) with ordinality k(attnum, ord)
                join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where i.indrelid = c.oid and i.indisreplident),
               (select c2.oid::bigint from pg_class c2 join pg_namespace n2 on n2.oid = c2.relnamespace
                where n2.nspname = %(schema)s and c2.relname = %(name)s)
        from (select %(oid)s::oid as want) w
        left join pg_class c on c.oid = w.want
        left join pg_namespace n on n.oid = c.relnamespace
        left join pg_type t on t.oid = c.reltype
"""


class TableGuard:
    """Tracks the lake table by OID while its slot is read.

    wal2json filters the slot by name (add-tables): while the table has another name, or after it
    was dropped and re-created, its changes never reach paynorm, and keepalives would confirm the
    slot past them for good. So the table's identity is recorded with the replication state and
    checked at session start, and again before any position is confirmed to the lake: its OID, and
    the version (xmin) of its row type in pg_type, which PostgreSQL rewrites when, and only when,
    the table is renamed or moved to another schema (or changes owner, told apart by typowner),
    so a rename away and back is seen even when no check fell in between. Any of these stops the
    consumer (``TableChanged``) before the slot is confirmed past the event.

    A check also reads pg_locks first: a DDL holds its ACCESS EXCLUSIVE lock until after it is
    visible, so when none is held every DDL whose commit the stream already delivered is visible.
    """

    def __init__(self, dsn: str, table: LakeTable, *, interval: float = 1.0,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.dsn = dsn
        self.table = table
        self.interval = interval
        self.record = record  # stores an accepted identity with the replication state
        self.identity: dict[str, Any] | None = None
        self.safe = 0  # highest position a check has covered
        self.last_check = 0.0
        self.conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def current(self) -> dict[str, Any]:
        """The table's identity now, looked up by the recorded OID (or the described one)."""
        oid = self.identity["oid"] if self.identity else self.table.oid
        row = self._connection().execute(_IDENTITY_QUERY, {"oid": oid, "schema": self.table.schema,
                                                            "name": self.table.name}).fetchone()
        assert row is not None
        return {"oid": row[0], "schema": row[1], "name": row[2], "type_version": row[3], "type_owner": row[4],
                "replica_identity": row[5], "identity_index": row[6], "identity_columns": list(row[7] or ()),
                "oid_by_name": row[8], "payload_column": self.table.payload_column}

    def start(self, recorded: dict[str, Any] | None) -> None:
        """Check the table against the identity recorded by the previous run (None: record it now)."""
        if recorded is None:
            self._accept(self.current())
            return
        self.identity = dict(recorded)
        now = self.current()
        self._compare(now)
        old_payload = recorded.get("payload_column")
        if old_payload and self.table.payload_column is None:
            raise LakeError(payload_gone_message(self.table, old_payload))
        if self._stored(now) != self.identity:
            if old_payload != self.table.payload_column:
                log.warning("lake table %s: payload column is now %r (was %r)", self.table.qualified,
                            self.table.payload_column, old_payload)
            self._accept(now)

    @staticmethod
    def _stored(now: dict[str, Any]) -> dict[str, Any]:
        return {k: now[k] for k in ("oid", "type_version", "type_owner", "payload_column")}

    def _accept(self, now: dict[str, Any]) -> None:
        self.identity = self._stored(now)
        if self.record is not None:
            self.record(self.identity)

    def _compare(self, now: dict[str, Any]) -> None:
        assert self.identity is not None
        q, oid = self.table.qualified, self.identity["oid"]
        if now["oid"] is None:
            if now["oid_by_name"] is not None:
                raise TableChanged(f"lake table {q} was dropped and re-created (OID {oid} is gone, the table of that "
                                   f"name is OID {now['oid_by_name']}): rows of the old table would stay live and "
                                   f"changes may be missing; {_RESNAPSHOT}")
            raise TableChanged(f"lake table {q} was dropped or renamed (OID {oid} is gone and no table has that "
                               f"name): {_RESNAPSHOT} once it is back")
        if (now["schema"], now["name"]) != (self.table.schema, self.table.name):
            raise TableChanged(f"lake table {q} was renamed to {now['schema']}.{now['name']}: the slot follows it "
                               f"by name and misses its changes under another name; rename it back, then "
                               f"{_RESNAPSHOT}")
        if now["type_version"] != self.identity["type_version"]:
            if now["type_owner"] == self.identity["type_owner"]:
                raise TableChanged(f"lake table {q} was renamed (or moved to another schema) and back: the slot "
                                   f"follows it by name, so changes made meanwhile never reached it; {_RESNAPSHOT}")
            self._accept(now)  # an owner change rewrites the row type too
        problem = replica_identity_problem(replace(
            self.table, replica_identity=now["replica_identity"], identity_index=now["identity_index"],
            identity_columns=tuple(now["identity_columns"])))
        if problem:
            raise TableChanged(problem)

    def verify(self) -> bool:
        """Check the table now; False (nothing known) while a DDL holds it, TableChanged if it changed."""
        assert self.identity is not None
        conn = self._connection()
        held = conn.execute(
            "select exists(select 1 from pg_locks where locktype = 'relation' and mode = 'AccessExclusiveLock'"
            " and granted and relation = %s"
            " and database = (select oid from pg_database where datname = current_database()))",
            (self.identity["oid"],)).fetchone()
        if held and held[0]:
            return False
        self._compare(self.current())
        return True

    def allow(self, lsn: int, *, force: bool = False) -> int:
        """The highest position up to ``lsn`` (a position already received) that may be confirmed to
        the lake: ``lsn`` once a check made now passes; between checks (every ``interval`` seconds
        unless ``force``) the last position a check covered."""
        if lsn <= self.safe:
            return lsn
        now = time.monotonic()
        if not force and now - self.last_check < self.interval:
            return self.safe
        self.last_check = now
        if self.verify():
            self.safe = lsn
        return min(lsn, self.safe)

    def describe_again(self, settings_table: str, payload_setting: str) -> LakeTable:
        """The table described again after its columns changed (a change named a column paynorm did
        not know), with the payload column chosen again as at startup; stops (LakeError) when the
        table is another one now, or had a payload column and none fits any more."""
        old = self.table
        new = describe_table(self._connection(), settings_table, payload_setting)
        if new.oid != old.oid:
            raise TableChanged(f"lake table {old.qualified} is another table now (OID {old.oid} -> {new.oid}): "
                               f"{_RESNAPSHOT}")
        if old.payload_column is not None and new.payload_column is None:
            raise LakeError(payload_gone_message(new, old.payload_column))
        if new.payload_column != old.payload_column:
            log.warning("lake table %s: payload column is now %r (was %r)", new.qualified, new.payload_column,
                        old.payload_column)
        self.table = new
        if self.identity is not None and self.identity.get("payload_column") != new.payload_column:
            self.identity = {**self.identity, "payload_column": new.payload_column}
            if self.record is not None:
                self.record(self.identity)
        return new


def payload_gone_message(table: LakeTable, old: str) -> str:
    return (f"payload column {old!r} is no longer a column of lake table {table.qualified} (renamed? its columns: "
            f"{', '.join(c.name for c in table.columns)}): set --payload-column / PAYNORM_PAYLOAD_COLUMN to the "
            f"column that holds the payload now, then start `paynorm replicate` again")


# -- the slot -------------------------------------------------------------------------------------


def wal2json_table_pattern(schema: str, name: str) -> str:
    """``schema.table`` as wal2json's add-tables wants it. Its README: special characters (space,
    single quote, comma, period, asterisk) must be escaped with a backslash; its parser
    (``string_to_SelectTable``, ``parse_table_identifier``) splits on unescaped commas, whitespace and
    the first unescaped period, reads ``*`` as a wildcard, and drops every backslash, keeping the
    character after it. So a backslash before every ASCII character but letters, digits and ``_``
    (a backslash included) is always read back as that character."""
    def esc(part: str) -> str:
        return "".join(f"\\{ch}" if ch < "\x80" and not (ch.isalnum() or ch == "_") else ch for ch in part)
    return f"{esc(schema)}.{esc(name)}"


def wal2json_options(table: LakeTable) -> list[str]:
    """The slot's output options, as the flat name/value list both transports pass on."""
    escaped = wal2json_table_pattern(table.schema, table.name)
    return [
        "format-version", "2",
        "include-transaction", "1",
        "include-lsn", "1",
        "include-xids", "1",
        "include-timestamp", "1",
        "include-type-oids", "0",
        "add-tables", escaped,
    ]


def slot_info(conn: psycopg.Connection, slot: str) -> dict[str, Any] | None:
    row = conn.execute(
        """
        select slot_name, plugin, database, active, active_pid, wal_status,
               confirmed_flush_lsn::text, restart_lsn::text,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint as retained_bytes,
               pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint as lag_bytes,
               safe_wal_size
        from pg_replication_slots where slot_name = %s
        """,
        (slot,),
    ).fetchone()
    if row is None:
        return None
    keys = ["slot_name", "plugin", "database", "active", "active_pid", "wal_status", "confirmed_flush_lsn",
            "restart_lsn", "retained_bytes", "lag_bytes", "safe_wal_size"]
    return dict(zip(keys, row))


def oldest_unconfirmed_change(conn: psycopg.Connection, slot: str, schema: str, name: str) -> datetime | None:
    """Commit time of the first change to the lake table past the slot's confirmed position, or
    None when there is none: how far behind a consumer is, in time, when nobody streams the slot.

    Peeks one change (nothing is consumed) with transactions left out, so the empty begin/commit
    pairs of other tables' transactions on a busy instance do not count. Decoding stops at the
    first change of ours; with none, it reads to the end of WAL (callers bound it with a
    statement_timeout). A slot another process streams from raises ObjectInUse."""
    options = ["format-version", "2", "include-transaction", "0", "include-timestamp", "1",
               "add-tables", wal2json_table_pattern(schema, name),
               # logical messages are no change of ours: only a prefix nobody writes is let through
               "add-msg-prefixes", "paynorm.no-messages"]
    row = conn.execute("select (data::json ->> 'timestamp')::timestamptz"
                       " from pg_logical_slot_peek_changes(%s, null, 1, variadic %s::text[]) limit 1",
                       (slot, options)).fetchone()
    return None if row is None else row[0]


def create_slot(conn: psycopg.Connection, slot: str) -> str:
    """Create the wal2json slot; its consistent point (the snapshot's L0)."""
    row = conn.execute("select lsn::text from pg_create_logical_replication_slot(%s, 'wal2json')", (slot,)).fetchone()
    assert row is not None
    log.info("created replication slot %s at %s", slot, row[0])
    return row[0]


def drop_slot(conn: psycopg.Connection, slot: str) -> None:
    if conn.execute("select 1 from pg_replication_slots where slot_name = %s", (slot,)).fetchone():
        conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        log.info("dropped replication slot %s", slot)


def check_slot(conn: psycopg.Connection, slot: str) -> dict[str, Any]:
    """The slot's row, or SlotLost with what to do about it."""
    info = slot_info(conn, slot)
    if info is None:
        raise SlotLost(f"replication slot {slot!r} no longer exists on the lake: changes since the last applied "
                       f"position may be lost; run `paynorm replicate --resnapshot` to re-copy the table")
    if info["wal_status"] == "lost":
        raise SlotLost(f"replication slot {slot!r} was invalidated (wal_status=lost, max_slot_wal_keep_size "
                       f"exceeded): run `paynorm replicate --resnapshot` to re-copy the table")
    if info["plugin"] != "wal2json":
        raise LakeError(f"slot {slot!r} uses plugin {info['plugin']!r}, not wal2json: choose another --slot")
    return info


def current_lsn(conn: psycopg.Connection) -> str:
    row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return row[0]


# -- wal2json changes -----------------------------------------------------------------------------


def parse_message(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """One wal2json v2 object; numbers as Decimal, never float."""
    return json.loads(bytes(data) if not isinstance(data, str) else data, parse_float=Decimal)


_FLOAT = float


def parse_change(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """One wal2json change, exactly and fast: orjson first, and the exact ``parse_message`` again
    when a column value came out as a float. orjson makes a float of every fraction (``1.10``) and
    of every integer beyond 64 bits, and both only come from numeric, real or double columns, so a
    change without them is exact as orjson read it. Decided per change, not per table: a numeric
    column added while the stream runs changes nothing (measured on a 1.5 kB change: 3.0 us
    against 12 us for ``parse_message``; the check costs about 0.1 us)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return parse_message(data)
    cols = obj.get("columns")
    if cols is not None:
        for c in cols:
            if c["value"].__class__ is _FLOAT:
                return parse_message(data)
    ident = obj.get("identity")
    if ident is not None:
        for c in ident:
            if c["value"].__class__ is _FLOAT:
                return parse_message(data)
    return obj


class ChangeConverter:
    """Turns wal2json v2 I/U/D objects of one table into ``LandingRow``s.

    ``on_relation_change`` (optional) is called when a change shows that the table's columns are
    not the ones described (a column it does not know, with the payload column missing, or an
    insert of another width); it returns the table described again (or raises to stop)."""

    def __init__(self, table: LakeTable, on_relation_change: Callable[[], LakeTable] | None = None) -> None:
        self.on_relation_change = on_relation_change
        self._use(table)

    def _use(self, table: LakeTable) -> None:
        self.table = table
        self.pk = table.pk
        self.payload_column = table.payload_column
        self.full_width = len(table.columns)
        self.described = frozenset(c.name for c in table.columns)
        self.known = set(self.described)

    def _key(self, cols: list[dict[str, Any]]) -> str | None:
        if len(self.pk) == 1:  # the common case, without building a dict
            pk = self.pk[0]
            for c in cols:
                if c["name"] == pk:
                    return _key_text(c["value"])
            return None
        values = {c["name"]: c["value"] for c in cols if c["name"] in self.pk}
        if len(values) != len(self.pk):
            return None
        return self.table.lake_key([_key_text(values[k]) for k in self.pk])

    def convert(self, change: dict[str, Any], lsn: str, xid: int | None, ts: str | None) -> list[LandingRow]:
        action = change["action"]
        if action == "D":
            key = self._key(change.get("identity") or [])
            if key is None:
                log.warning("DELETE without primary key identity skipped: %s", change)
                return []
            return [LandingRow(key, {}, "D", lsn, xid, ts, partial=True, deleted=True)]
        cols = change.get("columns") or []
        key = self._key(cols)
        if key is None:
            log.warning("%s without primary key columns skipped", action)
            return []
        row = self._row(key, cols, action, lsn, xid, ts)
        if ((not row.has_payload and self.payload_column is not None)
                or (action == "I" and len(cols) != self.full_width)) and self._relation_changed(cols):
            row = self._row(key, cols, action, lsn, xid, ts)
            gone = [c["name"] for c in cols if c["name"] not in self.described]
            if not row.has_payload and self.payload_column is not None and gone:
                raise LakeError(f"lake table {self.table.qualified}: a change carries columns the table no longer "
                                f"has ({', '.join(gone)}) and not its payload column {self.payload_column!r}: its "
                                f"columns changed again since; run `paynorm replicate --resnapshot`")
        rows = [row]
        if action == "U" and change.get("identity"):
            old = self._key(change["identity"])
            if old is not None and old != key:  # the primary key changed: the old key is gone
                rows.insert(0, LandingRow(old, {}, "D", lsn, xid, ts, partial=True, deleted=True))
        return rows

    def _relation_changed(self, cols: list[dict[str, Any]]) -> bool:
        """Whether the change names a column the description does not know; if so, describe the
        table again (True). A payload column merely missing is an unchanged TOASTed value."""
        unknown = [c["name"] for c in cols if c["name"] not in self.known]
        if not unknown or self.on_relation_change is None:
            return False
        log.info("lake table %s: change with unknown columns %s; reading its columns again",
                 self.table.qualified, ", ".join(unknown))
        self._use(self.on_relation_change())
        # A change decoded before a later ALTER may name columns the table no longer has: remember
        # them, so the next such change does not read the catalog again.
        self.known.update(unknown)
        return True

    def _row(self, key: str, cols: list[dict[str, Any]], op: str, lsn: str, xid: int | None,
             ts: str | None) -> LandingRow:
        encoded: dict[str, str] = {}
        payload_raw = None
        has_payload = False
        payload_is_json = True
        payload_column = self.payload_column
        for c in cols:
            name, value = c["name"], c["value"]
            is_json = c["type"] in _JSON_TYPE_NAMES
            if value.__class__ is str and not is_json:  # most columns: a string to quote, inlined
                encoded[name] = _quote(value)
            else:
                encoded[name] = encode_json_value(value, is_json)
            if name == payload_column:
                has_payload = True
                payload_is_json = is_json
                payload_raw = value if (value is None or isinstance(value, str)) else encoded[name]
        return LandingRow(key, encoded, op, lsn, xid, ts, partial=len(cols) < self.full_width,
                          payload_raw=payload_raw, payload_is_json=payload_is_json, has_payload=has_payload,
                          payload_column=self.payload_column if has_payload else None)


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
