"""The demo generator: its own templates, varied records, reproducible, and every built-in rule hit.

The end-to-end test loads a generated lake, runs the real pipeline (replication, dbt, LLM step) and
compares every normalized event with the template its record was drawn from.
"""

from __future__ import annotations

import collections
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from consumer import rules
from consumer.demo import (ATTEMPT_TYPES, DEFAULT_ANCHOR, _PLACEHOLDER, approval_target, generate_planned, generate_records,
                           insert_records, load_templates, render, render_id)
from consumer.jsonutil import dumps_exact
from consumer.pipeline import Pipeline
from tests.conftest import Env


def _builtin_rule_ids() -> set[str]:
    return {rf.id for rf in rules.load_rule_files()}


def test_templates_are_package_data_and_cover_every_builtin_rule() -> None:
    templates = load_templates()
    assert {t.rule for t in templates if t.status != "quarantine"} >= _builtin_rule_ids()
    rnd = random.Random(1)
    when = datetime(2026, 11, 20, 13, 5, 7, tzinfo=timezone.utc)
    for t in templates:  # every placeholder renders to a payload the lake can store
        payload = render(t, index=3, seed=7, when=when, rnd=rnd)
        assert "{{pn:" not in dumps_exact(payload), t.name
        used = {(m.group(1), m.group(2)) for m in _PLACEHOLDER.finditer(t.text)}
        assert {("id", str(k)) for k in range(len(t.ids))} <= used, t.name
        assert {("t", str(k)) for k in range(len(t.times))} <= used, t.name


def test_same_seed_same_rows_and_ids_do_not_depend_on_the_window() -> None:
    a = list(generate_records(600, seed=3))
    assert a == list(generate_records(600, seed=3))
    assert [r["id"] for r in a] != [r["id"] for r in generate_records(600, seed=4)]
    moved = list(generate_records(600, seed=3, anchor=DEFAULT_ANCHOR + timedelta(days=9), days=12))
    # A rerun with another window upserts the same lake rows (same ids), only times move.
    assert [r["id"] for r in moved] == [r["id"] for r in a]
    assert [r["transactional_id"] for r in moved] == [r["transactional_id"] for r in a]
    assert [r["created_at"] for r in moved] != [r["created_at"] for r in a]


def test_times_spread_over_the_window_with_daily_and_hourly_patterns() -> None:
    anchor = datetime(2026, 6, 1, tzinfo=timezone.utc)
    created = [datetime.fromisoformat(r["created_at"]) for r in generate_records(6000, seed=9, anchor=anchor)]
    assert all(anchor - timedelta(days=30) <= c <= anchor + timedelta(minutes=5) for c in created)
    assert len({c.date() for c in created}) >= 30
    hours = collections.Counter(c.hour for c in created)
    assert hours[19] > 3 * hours[3]  # evenings are busy, nights are quiet


def test_ids_are_unique_per_record_and_keep_their_shape() -> None:
    for orig in ["ch_3MmlLrLkdIwHu7ix0snN0B15", "9E884542-81B3-4419-9A75-BCC6FB495EF1", "2149186775", "ORD-88",
                 "CHAR1234", "pay_xrwmaqlar73uhjtyoghc7bspa4"]:
        ids = [render_id(orig, i, 12345678901234567) for i in range(20000)]
        assert len(set(ids)) == len(ids), orig
        head = orig.split("_")[0] + "_" if "_" in orig else orig[:4] if orig.startswith(("ORD-", "CHAR")) else ""
        assert all(i.startswith(head) for i in ids)
    uuidish = render_id("9E884542-81B3-4419-9A75-BCC6FB495EF1", 17, 99)
    assert [len(p) for p in uuidish.split("-")] == [8, 4, 4, 4, 12] and uuidish == uuidish.upper()


def test_outcome_mix_per_provider() -> None:
    """Approval is measured on payment attempts, as in the marts (refunds, captures, voids apart)."""
    planned = [t for _, t in generate_planned(20000, seed=5) if t is not None and t.status != "quarantine"]
    by_provider: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t in planned:
        if t.event_type in ATTEMPT_TYPES:
            by_provider[t.provider or t.rule][t.status] += 1
    rated = 0
    for provider, c in by_provider.items():
        decided = c["approved"] + c["declined"]
        if decided >= 100 and c["declined"] and c["approved"]:
            rated += 1
            assert 0.68 <= c["approved"] / decided <= 0.97, (provider, c)
            assert abs(c["approved"] / decided - approval_target(provider)) < 0.08, (provider, c)
    assert rated >= 10
    total = sum(by_provider.values(), collections.Counter())
    assert 0.75 <= total["approved"] / (total["approved"] + total["declined"]) <= 0.92
    statuses = collections.Counter(t.status for t in planned)
    assert 0.01 <= statuses["error"] / len(planned) <= 0.06 and statuses["pending"] > 0
    follow = collections.Counter(t.event_type for t in planned if t.event_type not in ATTEMPT_TYPES)
    assert follow["refund"] >= 0.03 * len(planned) and follow["chargeback"] > 0
    tests = sum(1 for t in planned if t.is_test)
    assert tests / len(planned) < 0.04


def test_generated_lake_normalizes_as_planned(env: Env, tmp_path: Path) -> None:
    """Every built-in rule matches some generated record, and each record normalizes to what its
    template says (rule, status, test flag), with unique ids and times inside the window."""
    n, anchor, days = 2500, DEFAULT_ANCHOR, 30
    plan = list(generate_planned(n, seed=7, anchor=anchor, days=days))
    with env.lake_conn() as lake:
        assert insert_records(lake, (r for r, _ in plan)) == n
        assert insert_records(lake, generate_records(n, seed=7, anchor=anchor, days=days)) == 0  # rerun: no new rows
    assert Pipeline(env.settings(home=tmp_path / "home")).run(once=True, interval=0) == 0
    with env.wh_conn() as wh:
        events = wh.execute("select lake_key, mapping_id, status, is_test, event_at, transaction_id, provider,"
                            " currency, amount_minor, event_type from paynorm_marts.normalized_payment_events").fetchall()
        quarantined = {r[0] for r in wh.execute("select lake_key from paynorm_marts.normalization_quarantine")}
        pending = wh.execute("select count(*) from paynorm_marts.normalization_pending").fetchone()[0]
    assert len(events) + len(quarantined) + pending == n
    assert quarantined and pending
    assert {e[1] for e in events} >= _builtin_rule_ids()

    by_key = {e[0]: e for e in events}
    wrong = []
    for record, t in plan:
        if t is None or t.status == "quarantine":
            continue
        e = by_key.get(record["id"])
        got = (e[1], e[2], e[3]) if e else ("quarantine" if record["id"] in quarantined else "pending", None, None)
        if got != (t.rule, t.status, t.is_test):
            wrong.append((t.name, got))
    assert not wrong, wrong[:10]

    # Ids the generator writes are unique per rule (a payload without one, e.g. Authorize.Net's
    # transId "0" on an error, keeps what the provider sends).
    per_rule: dict[str, list[str]] = collections.defaultdict(list)
    for record, t in plan:
        if t is not None and t.tid and record["id"] in by_key:
            per_rule[t.rule].append(by_key[record["id"]][5])
    assert len(per_rule) > 150
    dupes = {rule: len(ids) - len(set(ids)) for rule, ids in per_rule.items() if len(ids) != len(set(ids))}
    assert not dupes, dupes

    lo, hi = anchor - timedelta(days=days + 1), anchor + timedelta(days=1)
    outside = [(e[1], e[4]) for e in events if e[4] is None or not lo <= e[4] <= hi]
    assert not outside, outside[:10]
    assert len({e[4].date() for e in events}) >= 25

    amounts = [(e[7], e[8]) for e in events if e[8] is not None]
    assert len(set(amounts)) >= 0.5 * len(amounts)
    decided = collections.Counter(e[2] for e in events if e[2] in ("approved", "declined") and e[9] in ATTEMPT_TYPES)
    assert 0.72 <= decided["approved"] / (decided["approved"] + decided["declined"]) <= 0.93
    assert sum(1 for e in events if e[3]) / len(events) < 0.05
