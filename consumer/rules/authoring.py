"""Tools for writing rules: `paynorm mappings test FILE.yml` and `paynorm mappings scaffold`.

`test_rule` shows what a rule would capture in a warehouse now, compiled by the build's own macros
(`paynorm_rule_preview`): how many rows, which of them another active rule matches today, their
statuses, a sample of amounts. `scaffold_fixture` lands one payload in a scratch warehouse and
writes a fixture whose `expected` is what the build makes of it, for the author to review.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .files import DEFAULT_DIR, FIXTURES_SUBDIR
from .model import MappingError, Rule, document
from .store import ensure_schema
from .validate import validate_rule

__all__ = ["RuleTestReport", "preview_sql", "test_rule", "scaffold_fixture", "FIXTURE_COLUMNS"]

# Canonical columns every event fixture states (null included): the fixture test compares each.
FIXTURE_COLUMNS = (
    "transaction_id", "merchant_id", "merchant_name", "merchant_country", "provider", "event_type", "status",
    "provider_status_raw", "decline_category", "response_code_raw", "error_message", "amount_minor", "currency",
    "currency_exponent", "amount", "amount_raw", "amount_withheld_reason", "payment_method", "card_network",
    "issuer_country", "latency_ms", "event_at", "is_test", "source_format", "normalizer", "mapping_id",
)


def preview_sql(dsn: str, rule: "Rule | dict[str, Any] | list[Rule | dict[str, Any]]", *, shape_key: str | None = None, home: str | Path = ".paynorm",
                project_dir: str | Path | None = None) -> str:
    """The SQL of `paynorm_rule_preview` for ``rule`` (compiled by dbt, run by the caller)."""
    from .. import transform

    candidate = [document(r) for r in rule] if isinstance(rule, list) else document(rule)
    shape = ", shape_key=env_var('PAYNORM_CANDIDATE_SHAPE')" if shape_key else ""
    # the candidate reaches the macro through the environment, not --vars: vars that change at every
    # call would make dbt parse the whole project again each time (no partial parsing)
    return transform.compile_inline(
        dsn, "{{ paynorm_rule_preview(fromjson(env_var('PAYNORM_CANDIDATE'))" + shape + ") }}", home=home,
        env={"PAYNORM_CANDIDATE": json.dumps(candidate), "PAYNORM_CANDIDATE_SHAPE": shape_key or ""},
        project_dir=project_dir or transform.PROJECT_DIR)


@dataclass
class RuleTestReport:
    rule_id: str
    errors: list[str] = field(default_factory=list)
    rows: int = 0
    events: int = 0
    collisions: dict[str, int] = field(default_factory=dict)  # active rule id -> rows it matches today
    statuses: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    withheld: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.collisions

    def render(self) -> str:
        if self.errors:
            return "\n".join([f"rule {self.rule_id} is invalid:"] + [f"  {e}" for e in self.errors])
        lines = [f"rule {self.rule_id} captures {self.rows:,} landed row(s): {self.events:,} would be events"]
        if self.invalid:
            lines.append("  quarantined: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.invalid.items())))
        if self.withheld:
            lines.append("  amount withheld: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.withheld.items())))
        lines.append("  statuses: " + (", ".join(f"{k} {v:,}" for k, v in sorted(self.statuses.items())) or "-"))
        for rid, n in sorted(self.collisions.items()):
            lines.append(f"  COLLISION: {n:,} of these rows are matched today by active rule {rid}")
        if self.sample:
            lines.append(f"  {'lake_key':<38} {'event_type':<13} {'status':<10} {'amount':>14} {'cur':<4} raw")
            for r in self.sample:
                amount = r["amount"] if r["amount"] is not None else (r["amount_withheld_reason"] or "-")
                lines.append(f"  {str(r['lake_key'])[:38]:<38} {str(r['event_type']):<13} {str(r['status']):<10} "
                             f"{str(amount):>14} {str(r['currency'] or '-'):<4} {r['amount_raw'] or ''}")
        return "\n".join(lines)


def test_rule(dsn: str, rule: "Rule | dict[str, Any]", *, home: str | Path = ".paynorm", sample: int = 10,
              project_dir: str | Path | None = None) -> RuleTestReport:
    """What ``rule`` would capture in the warehouse at ``dsn`` now (built with `paynorm transform`)."""
    rule = document(rule)
    report = RuleTestReport(str(rule.get("id")))
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn)
        report.errors = validate_rule(rule, conn)
        if report.errors:
            return report
        code = preview_sql(dsn, rule, home=home, project_dir=project_dir)
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(f"select * from ({code}) as preview order by lake_key").fetchall()  # noqa: S608 - dbt-compiled
    report.rows = len(rows)
    report.events = sum(r["outcome"] == "event" for r in rows)
    report.collisions = dict(Counter(r["current_mapping_id"] for r in rows if r["current_mapping_id"]))
    report.statuses = dict(Counter(str(r["status"]) for r in rows if r["outcome"] == "event"))
    report.invalid = dict(Counter(r["invalid_reason"] for r in rows if r["invalid_reason"]))
    report.withheld = dict(Counter(r["amount_withheld_reason"] for r in rows if r["amount_withheld_reason"]))
    by_status: dict[str, list[dict[str, Any]]] = {}
    for r in rows:  # a sample that shows every status first
        by_status.setdefault(str(r["status"]), []).append(r)
    picked: list[dict[str, Any]] = []
    while len(picked) < sample and any(by_status.values()):
        for k in list(by_status):
            if by_status[k] and len(picked) < sample:
                picked.append(by_status[k].pop(0))
    report.sample = picked
    return report


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).isoformat()
    return v


def scaffold_fixture(rule_id: str, raw: Any, *, case: str, description: str, row: dict[str, Any] | None = None,
                     directory: str | Path = DEFAULT_DIR, settings: Any = None,
                     overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Land ``raw`` (the payload as the lake stores it) in a scratch warehouse, build with the rules of
    ``directory`` and write ``<directory>/fixtures/<rule_id>__<case>.json`` with what came out.

    Raises MappingError when the payload is not captured by ``rule_id`` (the fixture would assert
    another rule) or the file exists and ``overwrite`` is false.
    """
    from ..scratch import ScratchError, scratch

    path = Path(directory) / FIXTURES_SUBDIR / f"{rule_id}__{case}.json"
    if path.exists() and not overwrite:
        raise MappingError(f"{path} exists (use --overwrite to replace it)")
    row = dict(row or {})
    key = str(uuid.uuid4())
    record = {"id": key, "data": raw, "merchant": row.get("merchant"), "transactional_id": row.get("transactional_id"),
              "created_at": row.get("created_at")}
    try:
        with scratch() as sc:
            sc.insert([record])
            sc.run(settings, mappings_dir=directory)
            with psycopg.connect(sc.warehouse_dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
                ev = cur.execute("select * from paynorm_marts.normalized_payment_events where lake_key = %s",
                                 (key,)).fetchone()
                qu = cur.execute("select reason, mapping_id from paynorm_marts.normalization_quarantine "
                                 "where lake_key = %s", (key,)).fetchone()
    except ScratchError as e:
        raise MappingError(str(e)) from e
    if ev is not None:
        expected: dict[str, Any] = {"outcome": "event", "reason": None, "mapping_id": ev["mapping_id"]}
        expected.update({c: _json_value(ev[c]) for c in FIXTURE_COLUMNS})
    elif qu is not None:
        expected = {"outcome": "quarantine", "reason": qu["reason"], "mapping_id": qu["mapping_id"]}
    else:
        expected = {"outcome": "pending", "reason": None, "mapping_id": None}
    if expected["mapping_id"] != rule_id:
        raise MappingError(f"the payload is not captured by {rule_id}: it ends {expected['outcome']} "
                                    f"with rule {expected['mapping_id'] or '(none)'}; fix the rule's match first")
    fixture = {"description": description, "row": row, "raw": raw, "expected": expected}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_pretty_exact(fixture) + "\n")
    return path, fixture


def _pretty_exact(obj: Any) -> str:
    """Indented JSON in which a Decimal stays the exact number it was (json.dumps knows no Decimal)."""
    marker = "\u0000dec:"
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=lambda d: marker + str(d) if isinstance(d, Decimal)
                      else str(d))
    return re.sub(r'"\\u0000dec:([-+0-9.eE]+)"', r"\1", text)
