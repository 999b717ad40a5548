"""End to end: land every provider fixture, run `paynorm transform` (dbt build), check the marts.

One private cluster and one initial build for the whole module; the incremental tests then build
again and check what changed. Every canonical field of every event fixture is compared.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from consumer import rules
from tests.dbt_fixtures import (CHECKED_COLUMNS, Warehouse, land, landing_row, load_fixtures,  # noqa: F401
                                built_warehouse, make_warehouse, marts_schema, intermediate_schema)

FIXTURES = load_fixtures()
MARTS = marts_schema()
INTER = intermediate_schema()


@pytest.fixture(scope="module")
def wh(dbt_tmp: Path) -> Iterator[Warehouse]:  # noqa: F811
    yield from built_warehouse(dbt_tmp, "pg", [landing_row(k, v) for k, v in FIXTURES.items()])


def rows(conn: psycopg.Connection, q: str, *a: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(q, a).fetchall())


def norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    return value


def outcome_of(conn: psycopg.Connection, key: str) -> tuple[str, str | None, str | None]:
    ev = rows(conn, f"select mapping_id from {MARTS}.normalized_payment_events where lake_key = %s", key)
    qu = rows(conn, f"select reason, mapping_id from {MARTS}.normalization_quarantine where lake_key = %s", key)
    pe = rows(conn, f"select 1 from {MARTS}.normalization_pending where lake_key = %s", key)
    assert len(ev) + len(qu) + len(pe) == 1, (key, ev, qu, pe)
    if ev:
        return "event", None, ev[0]["mapping_id"]
    if qu:
        return "quarantine", qu[0]["reason"], qu[0]["mapping_id"]
    return "pending", None, None


@pytest.mark.parametrize("key", sorted(FIXTURES))
def test_fixture_outcome_and_every_field(wh: Warehouse, key: str) -> None:
    expected = FIXTURES[key]["expected"]
    with wh.connect() as conn:
        outcome, reason, mapping_id = outcome_of(conn, key)
        assert (outcome, reason, mapping_id) == (expected["outcome"], expected.get("reason"), expected["mapping_id"])
        if outcome != "event":
            return
        missing = [c for c in CHECKED_COLUMNS if c not in expected]
        assert not missing, f"fixture {key} must state every canonical column; missing {missing}"
        got = rows(conn, f"select * from {MARTS}.normalized_payment_events where lake_key = %s", key)[0]
    diffs = {c: (norm(got[c]), expected[c]) for c in CHECKED_COLUMNS if norm(got[c]) != expected[c]}
    assert not diffs, f"{key}: column: (got, expected) {diffs}"


def test_every_fixture_has_a_known_rule() -> None:
    ids = {rf.id for rf in rules.load_rule_files()}
    for key, fx in FIXTURES.items():
        mid = fx["expected"].get("mapping_id")
        assert mid is None or mid in ids, (key, mid)
    # every built-in rule has at least one fixture
    covered = {fx["expected"].get("mapping_id") for fx in FIXTURES.values()}
    assert not (ids - covered), f"rules without a fixture: {sorted(ids - covered)}"


def test_event_ids_and_money_types(wh: Warehouse) -> None:
    with wh.connect() as conn:
        types = dict(conn.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = %s and table_name = 'normalized_payment_events'", (MARTS,)).fetchall())
        assert types["amount"] == "numeric" and types["amount_minor"] == "bigint"
        assert types["event_id"] == "uuid"
        assert "double precision" not in types.values() and "real" not in types.values()
        n, distinct = conn.execute(
            f"select count(*), count(distinct event_id) from {MARTS}.normalized_payment_events").fetchone()
        assert n == distinct == sum(1 for f in FIXTURES.values() if f["expected"]["outcome"] == "event")


def test_kpis(wh: Warehouse) -> None:
    with wh.connect() as conn:
        # brief_payu_like approved (422.45 USD) and declined (COP), same day/merchant/country (other
        # PayU fixtures are other merchants or days)
        # one row per currency: the approved USD attempt and the declined COP one are two rows
        kp = rows(conn, f"select * from {MARTS}.payment_kpis_daily where provider = 'payu' "
                        f"and merchant_id = '38b80531-5702-43b7-84e0-e7fb86bd73b5' and event_date = '2025-01-15' "
                        f"order by currency")
        assert [k["currency"] for k in kp] == ["COP", "USD"]
        assert [sum(k[c] for k in kp) for c in ("attempts", "approved", "declined", "errors", "pending")] == [2, 1, 1, 0, 0]
        assert [(k["approval_rate"], k["approved_amount"]) for k in kp] == [
            (Decimal("0.0000"), Decimal("0")), (Decimal("1.0000"), Decimal("422.45"))]
        lat = rows(conn, f"select * from {MARTS}.payment_latency_daily where provider = 'payu' "
                         f"and event_date = '2025-01-15'")
        assert len(lat) == 1
        observed = sorted(r[0] for r in conn.execute(
            f"select latency_ms from {MARTS}.normalized_payment_events where provider = 'payu' and not is_test "
            "and latency_ms is not null and event_type in ('authorization', 'sale', 'unknown') "
            "and (event_at at time zone 'UTC')::date = '2025-01-15'").fetchall())
        assert lat[0]["events_with_latency"] == len(observed) >= 2
        assert lat[0]["latency_p50_ms"] in observed and lat[0]["latency_p95_ms"] in observed
        assert lat[0]["latency_p50_ms"] <= lat[0]["latency_p95_ms"] <= lat[0]["latency_p99_ms"] == observed[-1]
        # test-mode Stripe charge is excluded from KPIs
        total = conn.execute(f"select sum(attempts) from {MARTS}.payment_kpis_daily where provider = 'stripe'").fetchone()[0]
        live_stripe = conn.execute(
            f"select count(*) from {MARTS}.normalized_payment_events where provider = 'stripe' and not is_test "
            "and event_type in ('authorization', 'sale', 'unknown')").fetchone()[0]
        assert total == live_stripe and total > 0


def _counts(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "events": conn.execute(f"select count(*), max(normalized_at) from {MARTS}.normalized_payment_events").fetchone(),
        "int": conn.execute(f"select count(*), max(normalized_at) from {INTER}.int_transactions_normalized").fetchone(),
    }


def test_incremental_noop_then_update_then_delete(wh: Warehouse) -> None:
    with wh.connect() as conn:
        before = _counts(conn)
        res = wh.build()
        assert res.success, res.summary()
        assert _counts(conn) == before, "a build with no new rows must change nothing"
        # incremental int model touched zero rows
        node = [n for n in res.nodes if n.unique_id.endswith("int_transactions_normalized")][0]
        assert node.rows_affected == 0, node

        # an updated lake row updates its event
        fx = json.loads(json.dumps(FIXTURES["brief_payu_like__approved"]))
        fx["raw"]["amount_details"]["value"] = 500.01
        fx["raw"]["status"] = "DECLINED"
        land(conn, [landing_row("brief_payu_like__approved", fx)])
        # an event row becomes quarantined (bad amount) -> it must leave the events
        fx2 = json.loads(json.dumps(FIXTURES["brief_stripe_abbrev__approved"]))
        fx2["raw"]["amt"] = "lots"
        land(conn, [landing_row("brief_stripe_abbrev__approved", fx2)])
        # a deleted lake row removes its event
        land(conn, [landing_row("stripe_charge__kwd_three_decimals", FIXTURES["stripe_charge__kwd_three_decimals"])],
             deleted=True)
        res = wh.build()
        assert res.success, res.summary()
        node = [n for n in res.nodes if n.unique_id.endswith("int_transactions_normalized")][0]
        assert node.rows_affected == 3, node
        ev = rows(conn, f"select status, amount, amount_minor from {MARTS}.normalized_payment_events "
                        "where lake_key = 'brief_payu_like__approved'")
        assert ev == [{"status": "declined", "amount": Decimal("500.01"), "amount_minor": 50001}]
        assert outcome_of(conn, "brief_stripe_abbrev__approved") == ("quarantine", "bad_amount", "brief_stripe_abbrev")
        assert not rows(conn, f"select 1 from {MARTS}.normalized_payment_events "
                              "where lake_key = 'stripe_charge__kwd_three_decimals'")
        assert not rows(conn, f"select 1 from {MARTS}.normalization_quarantine "
                              "where lake_key = 'stripe_charge__kwd_three_decimals'")
        # restore the fixtures for the other tests (module order is not guaranteed)
        land(conn, [landing_row(k, FIXTURES[k]) for k in
                    ("brief_payu_like__approved", "brief_stripe_abbrev__approved", "stripe_charge__kwd_three_decimals")])
        res = wh.build()
        assert res.success, res.summary()
        assert outcome_of(conn, "brief_stripe_abbrev__approved")[0] == "event"


def test_new_rule_renormalizes_pending_rows(wh: Warehouse, tmp_path: Path) -> None:
    key = "pending__unknown_shape"
    with wh.connect() as conn:
        assert outcome_of(conn, key) == ("pending", None, None)
        # the LLM step marks the shape as tried and failed -> quarantine no_rule
        shape = conn.execute("select shape_key from raw.lake_transactions where lake_key = %s", (key,)).fetchone()[0]
        conn.execute("insert into paynorm.llm_shapes (shape_key, status) values (%s, 'failed')", (shape,))
        res = wh.build()
        assert res.success, res.summary()
        assert outcome_of(conn, key) == ("quarantine", "no_rule", None)
        events_before = conn.execute(f"select count(*) from {MARTS}.normalized_payment_events").fetchone()[0]

        # a new active rule for the shape: the quarantined row gets another chance
        rules_dir = tmp_path / "mappings"
        shutil.copytree(rules.DEFAULT_DIR, rules_dir)
        # the new rule is meant to capture the shape this fixture says no rule knows
        (rules_dir / "fixtures" / f"{key}.json").unlink()
        (rules_dir / "test_foo_bar.yml").write_text(
            "id: test_foo_bar\n"
            "description: test-only rule for the {foo, bar} shape\n"
            "provider: {const: stripe}\n"
            "formats: [json]\n"
            "match: '$ ? (exists(@.foo) && exists(@.bar.baz))'\n"
            "fields:\n"
            "  transaction_id: {path: '$.bar.baz'}\n"
            "  status: {const: approved}\n"
            "  amount: {path: '$.foo', unit: minor}\n"
            "  currency: {path: '$.bar.currency'}\n"
        )
        try:
            res = wh.build(mappings_dir=rules_dir)
            assert res.success, res.summary()
            assert outcome_of(conn, key) == ("event", None, "test_foo_bar")
            ev = rows(conn, f"select provider, transaction_id, amount, amount_minor, currency, amount_raw, "
                            f"amount_withheld_reason from {MARTS}.normalized_payment_events where lake_key = %s", key)[0]
            # minor units without a currency: the event lands, its amount is withheld with the reason
            assert ev == {"provider": "stripe", "transaction_id": "x", "amount": None, "amount_minor": None,
                          "currency": None, "amount_raw": "1", "amount_withheld_reason": "no_currency"}
            # rows matched by unchanged rules were not re-normalized
            assert conn.execute(f"select count(*) from {MARTS}.normalized_payment_events").fetchone()[0] \
                == events_before + 1
        finally:
            conn.execute("delete from paynorm.mappings where id = 'test_foo_bar'")
            conn.execute("delete from paynorm.llm_shapes where shape_key = %s", (shape,))
        res = wh.build()
        assert res.success, res.summary()
        assert outcome_of(conn, key) == ("pending", None, None)


def test_conservation_test_can_fail(wh: Warehouse) -> None:
    """The dbt conservation test catches a row that is in two places, and one in none."""
    with wh.connect() as conn:
        res = wh.dbt("test", "--select", "test_name:every_landed_row_placed_once")
        assert res.success and res.nodes, res.summary()
        quarantined = conn.execute(f"select lake_key from {MARTS}.normalization_quarantine limit 1").fetchone()[0]
        try:
            # an event moved onto a quarantined row: one row nowhere, one in two places
            conn.execute(f"update {MARTS}.normalized_payment_events set lake_key = %s"
                         f" where lake_key = 'stripe_charge__succeeded'", (quarantined,))
            res = wh.dbt("test", "--select", "test_name:every_landed_row_placed_once")
            assert not res.success and "Got 2 results" in res.failures[0].message, res.summary()
            conn.execute(f"delete from {MARTS}.normalized_payment_events where lake_key = %s", (quarantined,))
            res = wh.dbt("test", "--select", "test_name:every_landed_row_placed_once")
            assert not res.success and "Got 1 result," in res.failures[0].message, res.summary()
        finally:
            res = wh.build(full_refresh=True)
            assert res.success, res.summary()


def test_mappings_test_shows_what_a_rule_would_capture(wh: Warehouse) -> None:
    """`paynorm mappings test`: compiled by the build's own macros, on the built warehouse."""
    from consumer.rules import authoring

    rule = rules.parse_rule((rules.DEFAULT_DIR / "stripe_charge.yml").read_text())
    report = authoring.test_rule(wh.dsn, rule, home=wh.home)
    stripe = {k for k, f in FIXTURES.items() if f["expected"].get("mapping_id") == "stripe_charge"}
    assert report.ok and report.rows == len(stripe) and not report.collisions, report.render()
    with wh.connect() as conn:
        built = rows(conn, f"select lake_key, status, amount from {MARTS}.normalized_payment_events "
                           f"where mapping_id = 'stripe_charge'")
    assert sum(report.statuses.values()) == len(built)
    assert report.statuses == {s: sum(1 for b in built if b["status"] == s) for s in {b["status"] for b in built}}
    shown = {r["lake_key"]: (r["status"], r["amount"]) for r in report.sample}
    assert all(shown[b["lake_key"]] == (b["status"], b["amount"]) for b in built if b["lake_key"] in shown)
    # a greedy rule: what it would take from the rules that match those rows today
    greedy = {**rule, "id": "greedy_test", "match": "$ ? (exists(@.amount))"}
    report = authoring.test_rule(wh.dsn, greedy, home=wh.home)
    assert not report.ok and report.collisions.get("stripe_charge") == len(stripe), report.render()
    assert "COLLISION" in report.render()
    bad = {**rule, "id": "bad_test", "fields": {**rule["fields"], "amount": {"path": "$.amount", "unit": "major"}}}
    report = authoring.test_rule(wh.dsn, bad, home=wh.home)
    assert report.errors and "contradicts stripe's amount convention" in report.render()


def test_validation_path_and_build_agree_on_every_fixture(wh: Warehouse) -> None:
    """Parity: the preview the rule validation uses (paynorm_rule_preview, for LLM rules and
    `mappings test`) gives every canonical column the build gives, on every built-in fixture."""
    from consumer.rules import authoring

    builtin = [rf.rule for rf in rules.load_rule_files()]
    code = authoring.preview_sql(wh.dsn, builtin, home=wh.home)
    with wh.connect() as conn:
        preview = {r["lake_key"]: r for r in rows(conn, f"select * from ({code}) as p")}
        built = {r["lake_key"]: r for r in rows(conn, f"select * from {MARTS}.normalized_payment_events")}
        quarantined = {r["lake_key"]: r for r in rows(conn, f"select * from {MARTS}.normalization_quarantine")}
    compared = [c for c in CHECKED_COLUMNS if c not in ("event_at", "source_format")]
    events = [k for k, f in FIXTURES.items() if f["expected"]["outcome"] == "event"]
    assert events and set(built) == set(events)
    for key in events:
        p, b = preview[key], built[key]
        diffs = {c: (p[c], b[c]) for c in compared if p[c] != b[c]}
        if p["event_at_parsed"] is not None:
            diffs.update({} if p["event_at_parsed"] == b["event_at"] else {"event_at": (p["event_at_parsed"], b["event_at"])})
        assert p["outcome"] == "event" and not diffs, (key, diffs)
    for key, q in quarantined.items():
        if q["mapping_id"] is not None:  # matched, then quarantined by the conversion
            assert (preview[key]["outcome"], preview[key]["invalid_reason"]) == ("quarantine", q["reason"]), key
    matched = {k for k, f in FIXTURES.items() if f["expected"].get("mapping_id")}
    assert set(preview) == matched  # the preview captures exactly the rows the build matched
