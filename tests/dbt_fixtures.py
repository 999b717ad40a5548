"""Shared helpers of the dbt tests: a private PostgreSQL cluster, landing rows, provider fixtures.

Its fixtures are registered once by tests/conftest.py (``pytest_plugins``); test modules import the
helpers they need (``from tests.dbt_fixtures import ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from consumer import rules, transform
from consumer.rules.authoring import FIXTURE_COLUMNS
from consumer.devdb import Cluster, DevDBError, setup_warehouse

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "mappings" / "fixtures"
WAREHOUSE_SQL = REPO / "consumer" / "sql" / "warehouse.sql"

# Canonical columns every event fixture must state (null included): the test checks each of them.
CHECKED_COLUMNS = FIXTURE_COLUMNS


@dataclass
class Warehouse:
    cluster: Cluster
    dsn: str
    home: Path

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def build(self, *args: str, full_refresh: bool = False, sync_rules: bool = True,
              mappings_dir: Path = rules.DEFAULT_DIR) -> transform.TransformResult:
        res = transform.transform(self.dsn, home=self.home, full_refresh=full_refresh, sync_rules=sync_rules,
                                  mappings_dir=mappings_dir, select=list(args) or None)
        return res

    def dbt(self, *args: str) -> transform.TransformResult:
        return transform.run_dbt(self.dsn, list(args), home=self.home)


def make_warehouse(tmp: Path, name: str = "pg") -> Iterator[Warehouse]:
    try:
        cluster = Cluster(tmp / name)
        cluster.init()
        cluster.start()
    except DevDBError as e:  # pragma: no cover - environment without PostgreSQL
        pytest.skip(f"no local PostgreSQL: {e}")
    try:
        dsn = setup_warehouse(cluster)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(WAREHOUSE_SQL.read_text())
            rules.ensure_schema(conn)
        yield Warehouse(cluster, dsn, tmp / f"{name}-home")
    finally:
        cluster.destroy()


def built_warehouse(tmp: Path, name: str, rows: list[Any]) -> Iterator[Warehouse]:
    """A warehouse with ``rows`` landed and every model built: the body of a module fixture."""
    gen = make_warehouse(tmp, name)
    w = next(gen)
    try:
        with w.connect() as conn:
            land(conn, rows)
        res = w.build()
        assert res.success, res.summary()
        yield w
    finally:
        gen.close()


@pytest.fixture(scope="session")
def dbt_tmp() -> Iterator[Path]:
    base = Path(os.environ.get("PAYNORM_TEST_TMP", tempfile.gettempdir()))
    d = Path(tempfile.mkdtemp(prefix="paynorm-dbt-", dir=base))
    os.chmod(d, 0o755)  # the postgres system user must reach the data directory when we are root
    yield d
    shutil.rmtree(d, ignore_errors=True)


def load_fixtures() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}


def landing_row(lake_key: str, fixture: dict[str, Any]) -> dict[str, Any]:
    """A raw.lake_transactions row for a fixture, decoded with the consumer's decoder."""
    from consumer.decode import decode_payload

    raw = fixture["raw"]
    row_data = rules.fixture_row_image(lake_key, fixture)
    dec = decode_payload(json.dumps(raw), is_json=True)
    return {
        "lake_key": lake_key, "row_data": json.dumps(row_data), "payload": dec.payload,
        "payload_format": dec.payload_format, "decode_error": dec.decode_error, "shape_key": dec.shape_key,
    }


def land(conn: psycopg.Connection, rows: list[dict[str, Any]], *, deleted: bool = False) -> None:
    """Upsert landing rows the way the consumer does (a new load_seq at every write)."""
    with conn.transaction():
        for r in rows:
            conn.execute(
                """
                insert into raw.lake_transactions (lake_key, row_data, payload, payload_format, decode_error,
                                                   shape_key, op, deleted, source, committed_at)
                values (%(lake_key)s, %(row_data)s::jsonb, %(payload)s::jsonb, %(payload_format)s,
                        %(decode_error)s, %(shape_key)s, 'I', %(deleted)s, 'test', now())
                on conflict (lake_key) do update set
                    row_data = excluded.row_data, payload = excluded.payload,
                    payload_format = excluded.payload_format, decode_error = excluded.decode_error,
                    shape_key = excluded.shape_key, op = case when excluded.deleted then 'D' else 'U' end,
                    deleted = excluded.deleted, loaded_at = clock_timestamp(),
                    load_seq = nextval('raw.load_seq')
                """,
                {**r, "deleted": deleted},
            )


def marts_schema() -> str:
    return f"{transform.DEFAULT_SCHEMA}_marts"


def intermediate_schema() -> str:
    return f"{transform.DEFAULT_SCHEMA}_intermediate"
