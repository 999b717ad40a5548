"""A full build run by parallel workers gives what a serial build gives, row for row.

A full build splits the landing into one range of shape keys per parallel worker
(macros/rules/paynorm_shape_ranges.sql), each range sorted by shape and read whole by one worker.
Here the planner is made to run it in workers (parallel costs set to zero: the landing is small) and
the result is compared with a build that runs no workers (one range, one process): every row of the
normalized model and of the events, undecodable rows (no shape key) and deleted rows included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from tests.dbt_fixtures import (Warehouse, built_warehouse, intermediate_schema, landing_row,  # noqa: F401
                                load_fixtures, marts_schema)

PARALLEL = ("-c parallel_setup_cost=0 -c parallel_tuple_cost=0 -c min_parallel_table_scan_size=0"
            " -c min_parallel_index_scan_size=0 -c max_parallel_workers_per_gather=2")
SERIAL = "-c max_parallel_workers_per_gather=0"
BUILD_COLUMNS = ("normalized_at", "build_xmin")  # what differs between two builds by design


def _rows() -> list[dict[str, Any]]:
    rows = [landing_row(k, v) for k, v in load_fixtures().items()]
    # rows without a shape key (nothing decodable) belong to the first range
    for i in range(3):
        rows.append({"lake_key": f"undecodable-{i}", "row_data": json.dumps({"id": i}), "payload": None,
                     "payload_format": "json", "decode_error": "JSON: broken", "shape_key": None})
    return rows


@pytest.fixture(scope="module")
def wh(dbt_tmp: Path) -> Iterator[Warehouse]:  # noqa: F811
    yield from built_warehouse(dbt_tmp, "pg-parallel", _rows())


def _snapshot(wh: Warehouse, relation: str) -> list[tuple[Any, ...]]:
    with wh.connect() as conn:
        cols = [r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema || '.' || table_name = %s"
            " order by ordinal_position", (relation,)) if r[0] not in BUILD_COLUMNS]
        assert cols, relation
        q = psycopg.sql.SQL("select {} from {} order by lake_key").format(
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, cols)),
            psycopg.sql.Identifier(*relation.split(".")))
        return [tuple(r) for r in conn.execute(q)]


def _full_build(wh: Warehouse, monkeypatch: pytest.MonkeyPatch, options: str) -> str:
    """A --full-refresh with these session settings; the normalized model's compiled SQL."""
    monkeypatch.setenv("PGOPTIONS", options)
    res = wh.build(full_refresh=True)
    assert res.success, res.summary()
    compiled = next((wh.home / "dbt" / "target" / "compiled").rglob("int_transactions_normalized.sql"))
    return compiled.read_text()


def test_parallel_full_build_equals_serial(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    with wh.connect() as conn:
        assert conn.execute("select count(*) from raw.lake_transactions where shape_key is null").fetchone()[0] >= 3
        conn.execute("update raw.lake_transactions set deleted = true, load_seq = nextval('raw.load_seq')"
                     " where lake_key = (select min(lake_key) from raw.lake_transactions where shape_key is not null)")
    compiled = _full_build(wh, monkeypatch, PARALLEL)
    assert compiled.count("order by s.shape_key") == 2  # two workers: two ranges
    with psycopg.connect(wh.dsn, autocommit=True, options=PARALLEL + " -c jit=off") as conn:
        plan = "\n".join(r[0] for r in conn.execute("explain " + compiled))
    assert "Gather" in plan and "Parallel Append" in plan, plan[:2000]
    models = (f"{intermediate_schema()}.int_transactions_normalized", f"{marts_schema()}.normalized_payment_events")
    parallel = {m: _snapshot(wh, m) for m in models}

    assert _full_build(wh, monkeypatch, SERIAL).count("order by s.shape_key") == 1  # no workers: one range
    serial = {m: _snapshot(wh, m) for m in models}
    for m in models:
        assert parallel[m] == serial[m], m
    with wh.connect() as conn:  # and the comparison covered every kind of row
        outcomes = dict(conn.execute(f"select outcome, count(*) from {models[0]} group by outcome").fetchall())
    assert sum(outcomes.values()) == len(_rows()) and {"event", "quarantine", "deleted"} <= outcomes.keys(), outcomes
