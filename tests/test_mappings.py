"""Mapping rules: schema, SQL checks, sync into paynorm.mappings, list/show/status."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from consumer import rules
from tests.dbt_fixtures import Warehouse, make_warehouse  # noqa: F401


@pytest.fixture(scope="module")
def conn(dbt_tmp: Path) -> Iterator[psycopg.Connection]:  # noqa: F811
    gen = make_warehouse(dbt_tmp, "pg-mappings")
    w: Warehouse = next(gen)
    try:
        with w.connect() as c:
            yield c
    finally:
        gen.close()


def stripe() -> dict:
    return rules.parse_rule((rules.DEFAULT_DIR / "stripe_charge.yml").read_text())


def test_builtin_rules_are_valid_offline_and_in_postgres(conn: psycopg.Connection) -> None:
    assert rules.validate_files() == {}
    assert rules.validate_files(conn=conn) == {}
    assert len(rules.load_rule_files()) >= 7


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["fields"].update(foo={"path": "$.x"}), "fields/foo: not a canonical field"),
    (lambda r: r["fields"]["status"]["map"].update(x="ok"), "fields/status/map/x"),
    (lambda r: r["fields"].update(event_type={"const": "purchase"}), "fields/event_type/const"),
    (lambda r: r["fields"].update(decline_category={"const": "bad_luck"}), "fields/decline_category/const"),
    (lambda r: r.update(match='$.object == "charge"'), "not a SQL/JSON path filter expression"),
    (lambda r: r.update(id="Bad-Id"), "id:"),
    (lambda r: r.pop("formats"), "'formats' is a required property"),
    (lambda r: r["fields"].pop("status"), "'status' is a required property"),
    (lambda r: r["fields"].update(amount={"path": "$.amount"}), "'unit' is a required property"),
    (lambda r: r["fields"].update(amount={"path": "$.a", "unit": "cents"}), "fields/amount/unit"),
    (lambda r: r["fields"].update(currency={"path": "$.a", "const": "usd"}), "exactly one of path"),
    (lambda r: r["fields"].update(event_at={"path": "$.a", "format": "unix"}), "fields/event_at/format"),
    (lambda r: r["fields"].update(issuer_country={"path": "$.a", "country": "iso"}), "fields/issuer_country/country"),
    (lambda r: r.update(formats=["yaml"]), "formats/0"),
])
def test_schema_refuses_with_reason(mutate, expected: str) -> None:
    r = stripe()
    mutate(r)
    errors = rules.validate_rule(r)
    assert errors and any(expected in e for e in errors), errors


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.update(match='$ ? (@.object == "charge"'), "match: jsonpath"),
    (lambda r: r["fields"].update(transaction_id={"path": "$.id["}), "fields.transaction_id.path: jsonpath"),
    (lambda r: r["fields"]["status"]["cases"][0].update(when='$ ? (@.a ==)'), "fields.status.cases[0].when"),
    (lambda r: r["fields"].update(response_code_raw={"path": "$.x", "regex": "(("}), "fields.response_code_raw.regex"),
    (lambda r: r["fields"].update(amount={"path": "$.a", "unit": "minor", "exponent_path": "$$"}), "exponent_path"),
])
def test_sql_checks_refuse_with_reason(conn: psycopg.Connection, mutate, expected: str) -> None:
    r = stripe()
    mutate(r)
    assert rules.validate_rule(r) == [] or expected.startswith("fields.amount")  # schema alone passes
    errors = rules.validate_rule(r, conn)
    assert errors and any(expected in e for e in errors), errors


def test_boolean_predicate_refused_by_sql_check(conn: psycopg.Connection) -> None:
    # passes the schema pattern (has '? ('), but the top level is a boolean expression
    r = stripe()
    r["match"] = '$ ? (@.a == 1) == true'
    errors = rules.validate_rule(r, conn)
    assert any("is a boolean expression, which always exists" in e for e in errors), errors


def test_yaml_quirks() -> None:
    r = rules.parse_rule("id: abc\nfields:\n  status:\n    map: {1: approved, '2': declined}\n")
    assert r["fields"]["status"]["map"] == {"1": "approved", "2": "declined"}
    with pytest.raises(rules.MappingError, match="quote it"):
        rules.parse_rule("id: abc\nfields:\n  status:\n    map: {yes: approved}\n")


def test_file_level_checks(tmp_path: Path) -> None:
    shutil.copy(rules.DEFAULT_DIR / "stripe_charge.yml", tmp_path / "stripe_charge.yml")
    shutil.copy(rules.DEFAULT_DIR / "stripe_charge.yml", tmp_path / "other_name.yml")
    (tmp_path / "broken.yml").write_text("id: [unclosed\n")
    problems = rules.validate_files(tmp_path)
    # files are read in name order: other_name.yml claims the id first, stripe_charge.yml is the duplicate
    assert set(problems) == {"other_name.yml", "stripe_charge.yml", "broken.yml"}
    assert any("differs from the file name" in e for e in problems["other_name.yml"])
    assert any("duplicate id 'stripe_charge' (also in other_name.yml)" in e for e in problems["stripe_charge.yml"])
    assert any("not valid YAML" in e for e in problems["broken.yml"])


def test_sync_list_show_status(conn: psycopg.Connection, tmp_path: Path) -> None:
    for f in ("stripe_charge.yml", "adyen_payment_response.yml"):
        shutil.copy(rules.DEFAULT_DIR / f, tmp_path / f)
    bad = stripe()
    bad["id"] = "bad_rule"
    bad["match"] = '$ ? (@.object == "charge"'
    (tmp_path / "bad_rule.yml").write_text(rules.rule_to_yaml(bad))

    res = rules.sync(conn, tmp_path)
    assert sorted(res.inserted) == ["adyen_payment_response", "stripe_charge"]
    assert list(res.refused) == ["bad_rule"] and "does not compile" in res.refused["bad_rule"][0]
    assert rules.get_rule(conn, "bad_rule") is None
    h1 = rules.active_ruleset_hash(conn)

    res = rules.sync(conn, tmp_path)
    assert sorted(res.unchanged) == ["adyen_payment_response", "stripe_charge"] and not res.inserted
    assert rules.active_ruleset_hash(conn) == h1

    # an edit is an update and changes the rule set hash
    r = stripe()
    r["priority"] = 150
    (tmp_path / "stripe_charge.yml").write_text(rules.rule_to_yaml(r))
    res = rules.sync(conn, tmp_path)
    assert res.updated == ["stripe_charge"]
    h2 = rules.active_ruleset_hash(conn)
    assert h2 != h1

    listed = rules.list_rules(conn)
    assert [x["id"] for x in listed][:2] == ["stripe_charge", "adyen_payment_response"]  # priority order
    shown = rules.get_rule(conn, "stripe_charge")
    assert shown["rule"]["priority"] == 150 and shown["origin"] == "builtin"
    assert shown["source_file"].endswith("stripe_charge.yml") and shown["provider"] == "stripe"

    rules.set_status(conn, "stripe_charge", "proposed")
    assert [x["id"] for x in rules.list_rules(conn, status="active")] == ["adyen_payment_response"]
    assert rules.active_ruleset_hash(conn) != h2
    with pytest.raises(rules.MappingError):
        rules.set_status(conn, "nope", "active")

    # prune: a builtin rule whose file disappeared is rejected, not deleted
    (tmp_path / "adyen_payment_response.yml").unlink()
    res = rules.sync(conn, tmp_path, prune=True)
    assert res.deactivated == ["adyen_payment_response"]
    assert rules.get_rule(conn, "adyen_payment_response")["status"] == "rejected"


def test_sync_validates_only_when_a_file_differs_from_what_is_stored(
        conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation is most of a sync's time, and every transform syncs: when every file is stored
    exactly as it is (validated when it was written), there is nothing to validate."""
    from consumer.rules import store
    for name in ("probe_sync_a", "probe_sync_b"):  # rules of their own, proposed: no build uses them
        r = stripe()
        r.update(id=name, status="proposed")
        (tmp_path / f"{name}.yml").write_text(rules.rule_to_yaml(r))
    calls: list[Path] = []
    real = store.validate_files
    monkeypatch.setattr(store, "validate_files", lambda d, *a, **k: calls.append(Path(d)) or real(d, *a, **k))
    rules.sync(conn, tmp_path)
    assert calls == [tmp_path]
    res = rules.sync(conn, tmp_path)
    assert calls == [tmp_path] and sorted(res.unchanged) == ["probe_sync_a", "probe_sync_b"]
    (tmp_path / "new_rule.yml").write_text("id: new_rule\nmatch: '$ ? (@.object == \"charge\"'\n")
    res = rules.sync(conn, tmp_path)
    assert len(calls) == 2 and list(res.refused) == ["new_rule"] and rules.get_rule(conn, "new_rule") is None


def test_upsert_rule_for_llm_origin(conn: psycopg.Connection) -> None:
    r = copy.deepcopy(stripe())
    r["id"] = "llm_example"
    out = rules.upsert_rule(conn, r, origin="llm", status="proposed", model="m-1", prompt_hash="abc",
                               validation={"rows_checked": 3})
    assert out == "inserted"
    row = rules.get_rule(conn, "llm_example")
    assert (row["origin"], row["status"], row["model"], row["prompt_hash"]) == ("llm", "proposed", "m-1", "abc")
    assert row["validation"] == {"rows_checked": 3}
    r["fields"]["nope"] = {"path": "$.x"}
    with pytest.raises(rules.MappingError, match="not a canonical field"):
        rules.upsert_rule(conn, r, origin="llm")


def test_ddl_is_idempotent(conn: psycopg.Connection) -> None:
    rules.ensure_schema(conn)
    rules.ensure_schema(conn)
    assert conn.execute("select paynorm.try_timestamptz('2024-02-30T10:00:00Z')").fetchone()[0] is None


# -- money policy and fixture overlaps ---------------------------------------------------------------


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["fields"]["amount"].update(unit="major"), "unit major contradicts stripe's amount convention"),
    (lambda r: r.update(provider={"path": "$.psp"}), "cannot read minor units"),
    (lambda r: r["fields"].update(currency={"const": "USD"}), "never produced by const, map or cases"),
    (lambda r: r["fields"].update(currency={"path": "$.currency", "map": {"cop": "USD"}}), "never produced"),
    (lambda r: r.update(api="rest_pl"), "no convention for provider 'stripe' API 'rest_pl'"),
])
def test_money_policy_refuses_with_reason(mutate, expected: str) -> None:
    """Pure logic: an amount is read under its provider's documented convention, never guessed."""
    r = stripe()
    mutate(r)
    errors = rules.validate_rule(r)
    assert errors and any(expected in e for e in errors), errors


def test_money_policy_accepts_what_it_can_verify() -> None:
    r = stripe()
    assert rules.check_money(r) == []
    r.update(provider={"const": "payu"}, api="rest_pl")  # PayU Poland: minor units, unlike PayU Latam
    assert rules.check_money(r) == []
    r.pop("api")
    r.update(provider={"const": "acmepay"})  # unknown convention: accepted, the build withholds the amount
    assert rules.check_money(r) == []
    r.update(provider={"path": "$.psp"})  # an envelope naming its PSP: major only (read with a decimal point)
    r["fields"]["amount"]["unit"] = "major"
    assert rules.check_money(r) == []


def test_every_builtin_rule_with_an_amount_has_a_documented_convention() -> None:
    """Built-in rules fix their provider, and the provider's convention is in the seed."""
    missing = []
    for rf in rules.load_rule_files():
        prov = rf.rule.provider_const
        if "amount" in rf.rule.fields and prov and rules.convention_for(prov, rf.rule.api) is None:
            missing.append(f"{rf.id} ({prov})")
    assert not missing, missing


def test_rule_without_fixture_is_reported(tmp_path: Path) -> None:
    shutil.copy(rules.DEFAULT_DIR / "stripe_charge.yml", tmp_path / "stripe_charge.yml")
    problems = rules.validate_files(tmp_path)
    assert any("no fixture" in e for e in problems["stripe_charge.yml"]), problems
    assert rules.validate_files(tmp_path, require_fixtures=False) == {}


def test_overlapping_hand_written_rule_is_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    """A broad rule that would capture other rules' fixtures is refused by validate and by sync,
    unless its priority says it yields."""
    rules_dir = tmp_path / "mappings"
    shutil.copytree(rules.DEFAULT_DIR, rules_dir)
    (rules_dir / "greedy_amount.yml").write_text(
        "id: greedy_amount\ndescription: anything with an amount\nprovider: {const: stripe}\nformats: [json]\n"
        "match: '$ ? (exists(@.amount))'\npriority: 500\nfields:\n  status: {const: approved}\n"
        "  amount: {path: '$.amount', unit: minor}\n  currency: {path: '$.currency'}\n")
    (rules_dir / "fixtures" / "greedy_amount__x.json").write_text(
        '{"description": "x", "raw": {"amount": 1, "currency": "usd", "greedy": true},'
        ' "expected": {"outcome": "event", "reason": null, "mapping_id": "greedy_amount"}}')
    problems = rules.validate_files(rules_dir, conn=conn)
    errs = problems.get("greedy_amount.yml", [])
    assert any("fixture(s) of rule stripe_charge (stripe_charge__" in e for e in errs), problems
    res = rules.sync(conn, rules_dir)
    assert "greedy_amount" in res.refused
    # yielding to every other rule (lowest priority) is an explicit intent: only the capture of a
    # shape that should wait for the LLM step (a fixture expecting no rule) is left
    (rules_dir / "greedy_amount.yml").write_text((rules_dir / "greedy_amount.yml").read_text().replace("priority: 500",
                                                                                            "priority: 0"))
    errs = rules.validate_files(rules_dir, conn=conn)["greedy_amount.yml"]
    assert errs and all("expect no rule to match them" in e for e in errs), errs
    conn.execute("delete from paynorm.mappings where id = 'greedy_amount'")


def test_scaffold_writes_a_fixture_from_the_build(tmp_path: Path) -> None:
    """`paynorm mappings scaffold`: a scratch build of one payload becomes a fixture to review;
    a payload the rule does not capture is refused."""
    import json as _json

    from click.testing import CliRunner

    from consumer.cli import cli

    rules_dir = tmp_path / "mappings"
    shutil.copytree(rules.DEFAULT_DIR, rules_dir)
    payload = tmp_path / "charge.json"
    payload.write_text('{"id": "ch_9", "object": "charge", "amount": 1050, "currency": "eur", "status": "failed",'
                       ' "captured": false, "created": 1700000000, "livemode": true,'
                       ' "failure_message": "Your card was declined.", "outcome": {"type": "issuer_declined",'
                       ' "reason": "insufficient_funds"}}')
    res = CliRunner().invoke(cli, ["mappings", "scaffold", "stripe_charge", str(payload), "--case", "scaffolded",
                                   "--description", "test", "--dir", str(rules_dir)])
    assert res.exit_code == 0, res.output
    fx = _json.loads((rules_dir / "fixtures" / "stripe_charge__scaffolded.json").read_text())
    e = fx["expected"]
    assert (e["outcome"], e["mapping_id"], e["status"], e["amount"], e["currency"], e["decline_category"]) == \
        ("event", "stripe_charge", "declined", "10.50", "EUR", "insufficient_funds")
    assert set(e) >= set(rules.authoring.FIXTURE_COLUMNS)
    other = tmp_path / "other.json"
    other.write_text('{"something": "else"}')
    res = CliRunner().invoke(cli, ["mappings", "scaffold", "stripe_charge", str(other), "--case", "x",
                                   "--description", "test", "--dir", str(rules_dir)])
    assert res.exit_code == 1 and "not captured by stripe_charge" in res.output


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["fields"].update(transaction_id={"path": "$.id", "map": {"ch_1": "TX-1"}}),
     "fields.transaction_id: a map may only produce canonical values"),
    (lambda r: r["fields"]["status"]["map"].update(RECHAZADA="approved"), "'RECHAZADA' -> 'approved' contradicts"),
    (lambda r: r["fields"]["status"]["map"].update(recusado="approved"), "'recusado' -> 'approved' contradicts"),
    (lambda r: r["fields"]["status"]["map"].update(aprobada="declined"), "'aprobada' -> 'declined' contradicts"),
    (lambda r: r["fields"].update(is_test={"path": "$.status", "negate": True}), "is not a live/test flag"),
    (lambda r: r["fields"].update(is_test={"path": "$.test", "negate": True}), "negate is only for flags"),
    (lambda r: r["fields"].update(card_network={"path": "$.brand", "map": {"vi": "vizza"}}), "not canonical"),
])
def test_what_no_rule_may_do_hand_written_or_not(mutate, expected: str) -> None:
    """The same semantic checks as for LLM rules refuse a hand-written rule."""
    r = stripe()
    mutate(r)
    errors = rules.validate_rule(r)
    assert errors and any(expected in e for e in errors), errors


def test_one_ruleset_hash(conn: psycopg.Connection) -> None:
    """Python and the dbt models read the same function."""
    rules.sync(conn)
    h = conn.execute("select paynorm.active_ruleset_hash()").fetchone()[0]
    assert rules.active_ruleset_hash(conn) == h and len(h) == 32
