"""`paynorm doctor`: every prerequisite checked, one actionable line per problem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import psycopg

from .sources.postgres import lake as lakemod
from .secrets import redact_dsn
from .settings import Settings


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    warning: bool = False


def _lake_checks(settings: Settings, conn: psycopg.Connection) -> Iterator[Check]:
    wal_level = conn.execute("show wal_level").fetchone()[0]  # type: ignore[index]
    yield Check("wal_level", wal_level == "logical",
                "logical" if wal_level == "logical" else
                f"is {wal_level}: ALTER SYSTEM SET wal_level = logical; then restart the lake server")
    role = conn.execute("select rolreplication, rolsuper from pg_roles where rolname = current_user").fetchone()
    assert role is not None
    yield Check("replication right", bool(role[0] or role[1]),
                "role has REPLICATION" if role[0] or role[1] else
                "the lake role lacks REPLICATION: ALTER ROLE <role> REPLICATION (or use `paynorm poll`)")
    try:
        schema, name = lakemod.split_table_name(settings.table)
        oid = lakemod.table_oid(conn, schema, name)
    except lakemod.LakeError as e:
        schema = name = ""
        oid = None
        yield Check("lake table", False, f"{e}: check --table / PAYNORM_LAKE_TABLE")
    if schema and oid is None:
        yield Check("lake table", False, f"{settings.table} not found (schema {schema!r}, table {name!r}; names are "
                    f"case-sensitive): check --table / PAYNORM_LAKE_TABLE")
    elif oid is not None:
        can, quoted = conn.execute("select has_table_privilege(%s::oid, 'select'),"
                                   " quote_ident(%s) || '.' || quote_ident(%s)", (oid, schema, name)).fetchone()  # type: ignore[misc]
        yield Check("select right", bool(can), f"SELECT on {settings.table}" if can else
                    f"GRANT SELECT ON {quoted} TO <lake role>")
        if can:
            try:
                table = lakemod.describe_table(conn, settings.table, settings.payload_column)
                yield Check("primary key", True, ", ".join(table.pk))
                yield Check("payload column", table.payload_column is not None,
                            table.payload_column or "none of data/transaction_data/payload: set --payload-column")
                problem = lakemod.replica_identity_problem(table)
                yield Check("replica identity", problem is None, problem or _replica_identity_text(table))
            except lakemod.LakeError as e:
                yield Check("lake table", False, str(e))
    slots_max = int(conn.execute("show max_replication_slots").fetchone()[0])  # type: ignore[index]
    used = conn.execute("select count(*) from pg_replication_slots").fetchone()[0]  # type: ignore[index]
    slot = lakemod.slot_info(conn, settings.slot)
    if slot is None:
        yield Check("replication slots", used < slots_max, f"{used}/{slots_max} used" if used < slots_max else
                    f"all {slots_max} slots used: raise max_replication_slots or drop unused slots")
        wal2json = _wal2json_loadable(conn) if role[0] or role[1] else None
        if wal2json is not None:
            yield wal2json
        yield Check("slot", True, f"{settings.slot} not created yet (the first `paynorm replicate` creates it)")
    else:
        yield Check("wal2json", slot["plugin"] == "wal2json", "slot uses wal2json" if slot["plugin"] == "wal2json"
                    else f"slot {settings.slot} uses {slot['plugin']}: choose another --slot")
        healthy = slot["wal_status"] in ("reserved", "extended")
        yield Check("slot health", slot["wal_status"] != "lost",
                    f"{slot['wal_status']}, {slot['retained_bytes'] or 0:,} bytes of WAL retained"
                    if slot["wal_status"] != "lost" else
                    "slot invalidated (wal_status=lost): run `paynorm replicate --resnapshot`",
                    warning=not healthy and slot["wal_status"] != "lost")
    keep = conn.execute("show max_slot_wal_keep_size").fetchone()[0]  # type: ignore[index]
    yield Check("max_slot_wal_keep_size", keep not in ("-1",),
                f"{keep}" if keep != "-1" else
                "unlimited (-1): a stalled consumer can fill the lake's disk; set e.g. ALTER SYSTEM SET "
                "max_slot_wal_keep_size = '50GB'", warning=keep == "-1")


def _replica_identity_text(table: lakemod.LakeTable) -> str:
    if table.replica_identity == "f":
        return "FULL (old rows carry every column)"
    if table.replica_identity == "i":
        return f"USING INDEX {table.identity_index} ({', '.join(table.identity_columns)}), holds the primary key"
    return "DEFAULT (the primary key)"


def _wal2json_loadable(conn: psycopg.Connection) -> Check | None:
    """Create and drop a throw-away slot: the only sure test that the server can load wal2json."""
    probe = "paynorm_doctor_probe"
    try:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json', true)", (probe,))
        conn.execute("select pg_drop_replication_slot(%s)", (probe,))
        return Check("wal2json", True, "output plugin loads on the lake server")
    except psycopg.errors.UndefinedFile:
        return Check("wal2json", False, "wal2json is not installed on the lake server: "
                     "apt-get install postgresql-<major>-wal2json (or your platform's package)")
    except psycopg.Error as e:
        return Check("wal2json", False, f"could not test a slot: {str(e).strip().splitlines()[0]}")


def run_checks(settings: Settings) -> Iterator[Check]:
    if not settings.lake_dsn:
        yield Check("lake DSN", False, "set DATALAKE_DATABASE_URL")
    else:
        try:
            with lakemod.connect(settings.lake_dsn) as conn:
                yield Check("lake connection", True, redact_dsn(settings.lake_dsn))
                yield from _lake_checks(settings, conn)
        except psycopg.OperationalError as e:
            yield Check("lake connection", False, f"{redact_dsn(settings.lake_dsn)}: {str(e).strip().splitlines()[-1]}")
    if not settings.warehouse_dsn:
        yield Check("warehouse DSN", False, "set DATABASE_URL")
        return
    try:
        with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
            yield Check("warehouse connection", True, redact_dsn(settings.warehouse_dsn))
            ready = conn.execute("select to_regclass('raw.lake_transactions') is not null").fetchone()[0]  # type: ignore[index]
            yield Check("warehouse schema", bool(ready), "raw.lake_transactions exists" if ready else
                        "not initialized: run `paynorm init` (or any `paynorm replicate` does it)", warning=not ready)
    except psycopg.OperationalError as e:
        yield Check("warehouse connection", False,
                    f"{redact_dsn(settings.warehouse_dsn)}: {str(e).strip().splitlines()[-1]}")
