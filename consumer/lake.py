"""The lake side: read-only connections, table metadata, the slot, and wal2json changes as landing rows."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import orjson
import psycopg
from psycopg import conninfo, sql

from .landing import PAYLOAD_COLUMN_CANDIDATES, LandingRow, encode_json_value, encode_text_value

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

    @property
    def may_have_fraction(self) -> bool:
        """A numeric column wal2json sends as a bare JSON number that is not an integer."""
        return self.category == "N" and self.type_name not in _INTEGER_TYPES


_INTEGER_TYPES = frozenset({"int2", "int4", "int8", "oid"})
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

    @property
    def exact_numbers(self) -> bool:
        """Whether a change of this table can carry a fractional number (which must stay exact)."""
        return any(c.may_have_fraction for c in self.columns)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def lake_key(self, values: list[str]) -> str:
        """The landing key: the primary key as text (a JSON array of texts when composite)."""
        return values[0] if len(values) == 1 else json.dumps(values)


def describe_table(conn: psycopg.Connection, table: str, payload_column: str = "") -> LakeTable:
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    rows = conn.execute(
        """
        select a.attname, t.typcategory, t.typname in ('json', 'jsonb'), t.typname
        from pg_attribute a join pg_type t on t.oid = a.atttypid
        where a.attrelid = (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = %s and c.relname = %s)
          and a.attnum > 0 and not a.attisdropped
        order by a.attnum
        """,
        (schema, name),
    ).fetchall()
    if not rows:
        raise LakeError(f"lake table {schema}.{name} not found (or no SELECT right on it); set --table")
    pk = conn.execute(
        """
        select a.attname, tn.nspname, t.typname
        from pg_index i
        join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
        join pg_type t on t.oid = a.atttypid join pg_namespace tn on tn.oid = t.typnamespace
        where i.indrelid = (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = %s and c.relname = %s)
          and i.indisprimary
        order by array_position(i.indkey, a.attnum)
        """,
        (schema, name),
    ).fetchall()
    if not pk:
        raise LakeError(f"lake table {schema}.{name} has no primary key: paynorm needs one to key the landing")
    columns = tuple(Column(r[0], r[1], r[2], r[3]) for r in rows)
    names = {c.name for c in columns}
    if payload_column:
        if payload_column not in names:
            raise LakeError(f"payload column {payload_column!r} not in {schema}.{name}")
        payload = payload_column
    else:
        payload = next((c for c in PAYLOAD_COLUMN_CANDIDATES if c in names), None)
    return LakeTable(schema, name, columns, tuple(r[0] for r in pk), tuple((r[1], r[2]) for r in pk), payload)


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
    """(schema, type name) of a column, for casting parameters to it; None if there is no such column."""
    row = conn.execute(
        "select tn.nspname, t.typname from pg_attribute a join pg_type t on t.oid = a.atttypid"
        " join pg_namespace tn on tn.oid = t.typnamespace"
        " where a.attrelid = %s::regclass and a.attname = %s and not a.attisdropped",
        (table.qualified, column)).fetchone()
    return (row[0], row[1]) if row else None


# -- the slot -------------------------------------------------------------------------------------


def wal2json_options(table: LakeTable) -> list[str]:
    """The slot's output options, as the flat name/value list both transports pass on."""
    escaped = ".".join(part.replace("\\", "\\\\").replace(".", "\\.").replace(",", "\\,").replace("*", "\\*")
                       for part in (table.schema, table.name))
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


def parse_message_fast(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """``parse_message`` with orjson (3x faster on a 1.3 kB change), ONLY for tables whose changes
    carry no number but 64-bit integers (``message_parser`` decides): orjson reads ``1.10`` as a
    float and silently turns an integer beyond 64 bits into a float too, and both can only come
    from numeric, real or double columns. What orjson refuses goes through ``parse_message``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return parse_message(data)


def message_parser(table: LakeTable) -> Callable[[bytes | bytearray | memoryview | str], dict[str, Any]]:
    """The fastest exact parser of this table's wal2json changes."""
    return parse_message if table.exact_numbers else parse_message_fast


class ChangeConverter:
    """Turns wal2json v2 I/U/D objects of one table into ``LandingRow``s."""

    def __init__(self, table: LakeTable) -> None:
        self.table = table
        self.pk = table.pk
        self.payload_column = table.payload_column
        self.full_width = len(table.columns)

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
        rows = [row]
        if action == "U" and change.get("identity"):
            old = self._key(change["identity"])
            if old is not None and old != key:  # the primary key changed: the old key is gone
                rows.insert(0, LandingRow(old, {}, "D", lsn, xid, ts, partial=True, deleted=True))
        return rows

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
