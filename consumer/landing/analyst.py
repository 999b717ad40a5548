"""A read-only analyst role: SELECT on the marts and nothing else paynorm owns.

Analysts query ``paynorm_marts``; the landing (``raw``), paynorm's own tables and the staging and
intermediate schemas hold raw payloads (card data, emails) and stay out of their reach. The role is
a NOLOGIN group: people or BI tools log in with their own roles and are made members of it.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import errors, sql

from ..errors import ConfigError

log = logging.getLogger(__name__)

MARTS_SCHEMA = "paynorm_marts"
#: Schemas the analyst role must not read (privileges granted on them earlier are revoked).
PRIVATE_SCHEMAS = ("raw", "paynorm", "paynorm_staging", "paynorm_intermediate", "paynorm_reference")


def ensure_analyst_role(conn: psycopg.Connection, role: str, *, marts_schema: str = MARTS_SCHEMA,
                        private_schemas: tuple[str, ...] = PRIVATE_SCHEMAS) -> bool:
    """Create the NOLOGIN group ``role`` if missing and grant it read access to the marts only.

    Grants USAGE on the marts schema, SELECT on its tables and views, and default privileges so the
    tables dbt creates later (as the current user, the warehouse owner) are readable too: dbt
    replaces a mart table at every build. Returns True when the role was created. Idempotent.
    """
    ident = sql.Identifier(role)
    schema = sql.Identifier(marts_schema)
    created = False
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtextextended('paynorm.init', 0))")
        if conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone() is None:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("create role {} nologin").format(ident))
                created = True
            except errors.InsufficientPrivilege as e:
                raise ConfigError(
                    f"cannot create role {role!r}: the warehouse user needs CREATEROLE, or an administrator "
                    f"runs `create role {role} nologin` first (then paynorm init grants it the marts)") from e
            except errors.DuplicateObject:
                pass  # created concurrently by someone else
        conn.execute(sql.SQL("create schema if not exists {}").format(schema))
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(schema, ident))
        conn.execute(sql.SQL("grant select on all tables in schema {} to {}").format(schema, ident))
        conn.execute(sql.SQL("alter default privileges in schema {} grant select on tables to {}")
                     .format(schema, ident))
        present = [r[0] for r in conn.execute(
            "select nspname from pg_namespace where nspname = any(%s) order by nspname",
            (list(private_schemas),)).fetchall()]
        for name in present:
            s = sql.Identifier(name)
            conn.execute(sql.SQL("revoke all on all tables in schema {} from {}").format(s, ident))
            conn.execute(sql.SQL("revoke all on schema {} from {}").format(s, ident))
    log.info("analyst role %s %s: select on schema %s", role, "created" if created else "updated", marts_schema)
    return created
