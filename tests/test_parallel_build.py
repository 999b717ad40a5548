"""A full build run by parallel workers gives what a serial build gives, row for row.

A full build splits the landing into one range of shape keys per parallel worker
(macros/rules/paynorm_shape_ranges.sql), each range sorted by shape and read whole by one worker.
Here the planner is made to run it in workers (parallel costs set to zero: the landing is small) and
the result is compared with a build that runs no workers (one range, one process): every row of the
normalized model and of the events, undecodable rows (no shape key) and deleted rows included.
So is a build that carries only the keys of the row image its rules read (paynorm_row_image) with
one that carries the whole image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from consumer import transform
from tests.dbt_fixtures import (Warehouse, built_warehouse, intermediate_schema, landing_row,  # noqa: F401
                                load_fixtures, marts_schema)

PARALLEL = ("-c parallel_setup_cost=0 -c parallel_tuple_cost=0 -c min_parallel_table_scan_size=0"
            " -c min_parallel_index_scan_size=0 -c max_parallel_workers_per_gather=2")
SERIAL = "-c max_parallel_workers_per_gather=0"
BUILD_COLUMNS = ("normalized_at", "build_xmin")  # what differs between two builds by design


def _rows() -> list[dict[str, Any]]:
    rows = [landing_row(k, v) for k, v in load_fixtures().items()]
    # rows without a shape key (nothing decodable) belong to the first range
    # (the first one with its payload column, which its excerpt shows)
    for i in range(3):
        image = {"id": i, "data": "<not xml"} if i == 0 else {"id": i}
        rows.append({"lake_key": f"undecodable-{i}", "row_data": json.dumps(image), "payload": None,
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


# -- the row image a build carries (macros/rules/paynorm_row_image.sql) ---------------------------

#: (row-side paths of a rule set, as [jsonpath, is_predicate], the keys the image keeps; None: whole)
ROW_IMAGE_CASES: list[tuple[list[tuple[str | None, bool]], list[str] | None]] = [
    ([], []),
    ([('$ ? (@.source like_regex "[a-z]" flag "i")', True), ("$.source", False)], ["source"]),
    ([("lax $.merchant.id", False), ("strict $.source", False)], ["merchant", "source"]),
    ([('$."my key".x', False)], ["my key"]),
    ([("$.año", False)], ["año"]),
    ([("$.source.size()", False)], ["source"]),  # a method inside a kept value
    ([("$.a ? (@.b == $.c)", True)], ["a", "b", "c"]),  # every named key kept (a superset)
    ([('$ ? (@.source like_regex "$.data|@.x")', True)], ["source"]),  # accessors in a literal read nothing
    ([('$ ? (@.a == "x\\"$.data")', True)], ["a"]),  # nor in a literal with an escaped quote
    ([(None, False), ("$.source", False)], ["source"]),  # a null row_path is no path
    ([("$.*", False)], None),
    ([("$.**.x", False)], None),
    ([("$.keyvalue()", False)], None),
    ([("$[0]", False)], None),
    ([("$", False)], None),
    ([('$ ? (@ == "x")', True)], None),
    ([("$ ? (@.source == \"x\")", False)], None),  # a root filter as a value: the whole root
    ([('$."a\\"b"', False)], None),
    ([("$.source ? (@.size() > 0)", True)], None),
    ([("$.a$b", False)], None),
    ([("$x", False)], None),
]

#: Row images each path is evaluated on, whole and narrowed: keys present, absent, JSON null, nested.
ROW_IMAGES = [
    {"id": 1, "source": "Stripe", "data": {"x": 1}, "merchant": {"id": "m1"}, "my key": {"x": 2},
     "año": 2024, "a": {"b": 1}, "b": 1, "c": 1, "x": "x"},
    {"id": 2, "data": "raw", "source": None, "merchant": None},
    {"id": 3, "source": [1, 2], "a": [{"b": 1}]},
]


def _rule_doc(paths: list[tuple[str | None, bool]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"fields": {}}
    for i, (path, predicate) in enumerate(paths):
        if predicate:
            doc["row_match"] = path
        else:
            doc["fields"][f"f{i}"] = {"row_path": path}
    return {"id": "r", "rule": doc}


def test_row_image_keeps_what_the_rules_paths_read(wh: Warehouse) -> None:
    """Each case compiles to the keys expected (or to the whole image), and every path of a narrowed
    case finds in the narrowed image what it finds in the whole one, on every row image (landed
    with its payload column apart or inline)."""
    cases = [[_rule_doc(paths)] for paths, _ in ROW_IMAGE_CASES]
    inline = ("{% for c in var('cases') %}{% if not loop.first %} union all {% endif %}"
              "select {{ loop.index0 }} as i, r.n, r.img as whole,"
              " {{ paynorm_sql_string(paynorm_row_image_keys(c) | tojson) }}::jsonb as keys,"
              " {{ paynorm_row_image(c, 'r.cols', 'r.pk', 'r.pl') }} as narrowed from images as r{% endfor %}")
    compiled = transform.compile_inline(wh.dsn, inline, home=wh.home, vars={"cases": cases})
    # each image as the landing stores it: an object payload column apart, named by payload_key
    query = ("with images (img, n, cols, pk, pl) as (select i.img, i.n,"
             " case when jsonb_typeof(i.img->'data') = 'object' then i.img - 'data' else i.img end,"
             " case when jsonb_typeof(i.img->'data') = 'object' then 'data' end,"
             " case when jsonb_typeof(i.img->'data') = 'object' then i.img->'data' end"
             " from unnest(%s::jsonb[]) with ordinality as i (img, n)) " + compiled)
    checked = 0
    with wh.connect() as conn:
        got = conn.execute(query, ([json.dumps(i) for i in ROW_IMAGES],)).fetchall()
        assert len(got) == len(ROW_IMAGE_CASES) * len(ROW_IMAGES)
        for i, _, whole, keys, narrowed in got:
            paths, expected = ROW_IMAGE_CASES[i]
            assert keys == expected, paths
            if expected is None:
                assert narrowed == whole, paths
                continue
            assert set(narrowed) == set(expected) & set(whole), paths
            for path, predicate in paths:
                if path is None:
                    continue
                fn = psycopg.sql.Identifier("jsonb_path_exists" if predicate else "jsonb_path_query_array")
                q = psycopg.sql.SQL("select {f}(%s::jsonb, %s::jsonpath, '{{}}', true), "
                                    "{f}(%s::jsonb, %s::jsonpath, '{{}}', true)").format(f=fn)
                a, b = conn.execute(q, (json.dumps(whole), path, json.dumps(narrowed), path)).fetchone()
                assert a == b, (path, whole, narrowed)
                checked += 1
    assert checked > 20


def test_narrowed_row_image_builds_what_the_whole_image_builds(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full build that carries only the keys the rules read gives, row for row, what a build
    carrying the whole row image gives: rows matched by row_match rules, excerpts of rows whose
    payload did not decode and deleted rows included."""
    monkeypatch.setenv("PGOPTIONS", PARALLEL)
    models = (f"{intermediate_schema()}.int_transactions_normalized", f"{marts_schema()}.normalized_payment_events")
    builds = {}
    for narrow in (True, False):
        res = transform.transform(wh.dsn, home=wh.home, full_refresh=True, vars={"paynorm_narrow_row_image": narrow})
        assert res.success, res.summary()
        compiled = next((wh.home / "dbt" / "target" / "compiled").rglob("int_transactions_normalized.sql")).read_text()
        narrowed = "jsonb_build_object('source', case when s.payload_key = 'source'" in compiled
        whole = '"raw".row_image(s.row_columns, s.payload_key, s.payload)' in compiled
        assert narrowed == narrow and whole == (not narrow)
        builds[narrow] = {m: _snapshot(wh, m) for m in models}
    for m in models:
        assert builds[True][m] == builds[False][m], m
    with wh.connect() as conn:  # the comparison covered rows of the row_match rules and raw excerpts
        matched = conn.execute(f"select count(*) from {models[1]} where mapping_id like 'brief_%%'").fetchone()[0]
        raw = conn.execute(f"select count(*) from {models[0]} where payload_excerpt like '%%not xml%%'").fetchone()[0]
    assert matched > 0 and raw == 1


JSON_VALUE_PATHS = ["$.a", "$.a.b", "$.a.b.c", "$.items", "$.n", "$.z", "$._x9", "$.a[0]", "$.*", 'strict $.a.b']
JSON_VALUE_DOCS = [
    {"a": {"b": {"c": "x"}}, "items": [1, 2], "n": 1.50, "z": None, "_x9": True},
    {"a": [{"b": 1}, {"b": 2}]},  # an array on the way: lax mode unwraps it, #>> finds nothing
    {"a": {"b": [{"c": 3}]}},
    {"a": {"b": None}},
    {"a": "text", "n": "1e2"},
    [{"a": {"b": "in an array root"}}],
    "scalar",
    {},
]


def test_json_value_reads_what_the_jsonpath_reads(wh: Warehouse) -> None:
    """paynorm_json_value (#>> first for plain keys) against the jsonpath alone, on documents where
    the two could differ: arrays on the way or at the root, JSON null, nested values, scalars."""
    inline = ("{% for p in var('paths') %}{% if not loop.first %} union all {% endif %}"
              "select {{ loop.index0 }} as i, d.n, {{ paynorm_json_value('d.doc', p) }} as fast,"
              " (jsonb_path_query_first(d.doc, {{ paynorm_sql_string(p) }}::jsonpath, '{}'::jsonb, true) #>> '{}')"
              " as slow from docs as d{% endfor %}")
    compiled = transform.compile_inline(wh.dsn, inline, home=wh.home, vars={"paths": JSON_VALUE_PATHS})
    assert compiled.count("#>> '{a,b}'") == 1  # the fast form is what is compared
    query = "with docs (doc, n) as (select * from unnest(%s::jsonb[]) with ordinality) " + compiled
    with wh.connect() as conn:
        got = conn.execute(query, ([json.dumps(d) for d in JSON_VALUE_DOCS],)).fetchall()
    assert len(got) == len(JSON_VALUE_PATHS) * len(JSON_VALUE_DOCS)
    differ = [(JSON_VALUE_PATHS[i], JSON_VALUE_DOCS[n - 1], fast, slow) for i, n, fast, slow in got if fast != slow]
    assert not differ
    assert sum(1 for _, _, fast, _ in got if fast is not None) > 10
