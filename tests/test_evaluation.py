"""`paynorm eval`: the scoring logic without a database, and the real scratch run through the CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from consumer import evaluation as ev
from consumer.cli import cli


def _label(status: str, amount: str | None = None, currency: str | None = None, provider: str = "acme") -> ev.Label:
    return ev.Label(provider, status, Decimal(amount) if amount else None, currency, None, None, "high")


def _record(key: str, label: ev.Label) -> ev.CorpusRecord:
    return ev.CorpusRecord(1, {"id": key, "data": {}}, label, "src", "json")


@pytest.mark.parametrize("event_type, status, expected", [
    ("sale", "approved", "approved"),
    ("refund", "approved", "refunded"),
    ("void", "approved", "cancelled"),
    ("sale", "cancelled", "cancelled"),
    ("refund", "error", "error"),  # a failed refund keeps its status
    ("void", "declined", "declined"),
    ("capture", "approved", "approved"),
    (None, None, None),
])
def test_label_status_vocabulary(event_type: str | None, status: str | None, expected: str | None) -> None:
    assert ev.label_status(event_type, status) == expected


def test_money_verdicts_invented_withheld_and_wrong() -> None:
    """An amount the label does not have is invented (wrong); one left NULL is withheld (allowed)."""
    records = [
        _record("ok", _label("approved", "10.00", "USD")),
        _record("withheld", _label("approved", "10.00", "USD")),
        _record("100x", _label("approved", "1.00", "USD")),
        _record("invented", _label("declined")),
        _record("currency", _label("approved", "5.00", None)),
        _record("pending", _label("approved", "5.00", "EUR")),
    ]
    observed = {
        "ok": ev.Observed("event", event_type="sale", status="approved", amount=Decimal("10.00"), currency="USD"),
        "withheld": ev.Observed("event", event_type="sale", status="approved", currency="USD"),
        "100x": ev.Observed("event", event_type="sale", status="approved", amount=Decimal("100"), currency="USD"),
        "invented": ev.Observed("event", event_type="sale", status="declined", amount=Decimal("3")),
        "currency": ev.Observed("event", event_type="sale", status="approved", amount=Decimal("5"), currency="BRL"),
        "pending": ev.Observed("pending"),
    }
    report = ev.score(records, observed)
    verdicts = {r.key: (r.amount, r.currency) for r in report.rows}
    assert verdicts == {"ok": ("ok", "ok"), "withheld": ("withheld", "ok"), "100x": ("wrong", "ok"),
                        "invented": ("wrong", "ok"), "currency": ("ok", "wrong"), "pending": ("n/a", "n/a")}
    t = report.totals
    assert (t["normalized"], t["pending"], t["wrong_amounts"], t["wrong_currencies"], t["amounts_withheld"]) == \
        (5, 1, 2, 1, 1)
    assert {r.key for r in report.money_errors()} == {"100x", "invented", "currency"}
    assert any("wrong amount" in f for f in report.failures())
    text = report.render()
    assert "WRONG amounts 2, WRONG currencies 1" in text and "amount 100 USD vs label 1.00 USD" in text


def test_thresholds_and_lost_rows() -> None:
    records = [_record(k, _label("approved")) for k in ("a", "b", "c", "d")]
    observed = {"a": ev.Observed("event", event_type="sale", status="approved"),
                "b": ev.Observed("event", event_type="refund", status="approved"),
                "c": ev.Observed("quarantine", reason="no_rule")}
    report = ev.score(records, observed)
    t = report.totals
    assert (t["coverage_pct"], t["status_pct"], t["lost"], t["quarantine_reasons"]) == (50.0, 50.0, 1, {"no_rule": 1})
    assert report.confusion() == {"approved": {"(lost)": 1, "(quarantine)": 1, "approved": 1, "refunded": 1}}
    failures = report.failures(min_coverage=60, min_status=99)
    assert any("coverage 50.0%" in f for f in failures) and any("statuses correct 50.0%" in f for f in failures)
    assert any("1 record(s) lost" in f for f in failures)
    assert report.failures(min_coverage=50, min_status=50) == ["1 record(s) lost: in no mart, no quarantine, "
                                                               "not pending"]
    json.dumps(report.to_dict(), default=str)  # the --json output serializes


def test_bad_corpus_lines_name_the_line(tmp_path: Path) -> None:
    good = {"record": {"id": "1", "data": {}}, "label": {"provider": "a", "status": "approved", "amount": "1.00",
            "currency": None, "country": None, "response_code": None, "confidence": "high"}}
    cases = [("not json", "not JSON"), (json.dumps({**good, "label": {**good["label"], "status": "ok"}}), "label.status"),
             (json.dumps({**good, "label": {**good["label"], "amount": 1.5}}), "label.amount"),
             (json.dumps({"record": {"data": {}}, "label": good["label"]}), "record must be")]
    for text, expected in cases:
        p = tmp_path / "c.jsonl"
        p.write_text(json.dumps(good) + "\n" + text + "\n")
        with pytest.raises(ev.EvalError, match=expected) as info:
            ev.read_corpus(p)
        assert "c.jsonl:2" in str(info.value)
    p.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ev.EvalError, match="duplicate record id"):
        ev.read_corpus(p)


def test_eval_command_on_a_scratch_cluster(tmp_path: Path) -> None:
    """The real run: a lake and a warehouse of their own, replicate, dbt, marts; JSON output; exit 1
    on a wrong amount (a label that disagrees with what the Stripe rule reads: 25.99, not 2599.00)."""
    charge = {"id": "ch_1", "object": "charge", "amount": 2599, "currency": "usd", "status": "succeeded",
              "captured": True, "created": 1700000000, "livemode": False}
    lines = [
        {"record": {"id": "00000000-0000-4000-8000-000000000001", "data": charge,
                    "merchant": {"id": "m", "name": "M", "country": "US"},
                    "transactional_id": "00000000-0000-4000-8000-0000000000a1"},
         "label": {"provider": "stripe", "status": "approved", "amount": "25.99", "currency": "USD", "country": None,
                   "response_code": None, "confidence": "high"}, "source": "test", "format": "json"},
        {"record": {"id": "00000000-0000-4000-8000-000000000002", "data": {"nobody": "knows", "this": 1},
                    "merchant": None, "transactional_id": None},
         "label": {"provider": "zeta", "status": "declined", "amount": None, "currency": None, "country": None,
                   "response_code": None, "confidence": "high"}, "source": "test", "format": "json"},
    ]
    lines[0]["label"]["amount"] = "2599.00"  # a label saying the rule reads 100x too little
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = CliRunner().invoke(cli, ["eval", str(corpus), "--json", "--min-coverage", "50"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["totals"]["normalized"] == 1 and out["totals"]["pending"] == 1
    assert out["failures"] == ["1 wrong amount(s) and 0 wrong currency(ies)"]
    row = next(r for r in out["rows"] if r["provider"] == "stripe")
    assert (row["observed"]["amount"], row["observed"]["currency"], row["amount"]) == ("25.99", "USD", "wrong")
    assert [r["lake_key"] for r in out["money_errors"]] == [lines[0]["record"]["id"]]
