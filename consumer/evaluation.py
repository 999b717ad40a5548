"""`paynorm eval`: score the normalization against a labelled corpus of real provider payloads.

The corpus format (one JSON object per line) is the one of ``shared/corpus/README.md``::

    {"record": {"id", "data", "merchant", "transactional_id"},
     "label": {"provider", "status", "amount", "currency", "country", "response_code", "confidence"},
     "source": "...", "format": "json|xml|nvp|csv|text"}

:func:`evaluate` loads the records into a scratch lake on a scratch PostgreSQL cluster (never the
user's databases), runs one real ``paynorm run --once`` cycle over it (CDC snapshot, dbt, the LLM
step only when asked, marts) and compares what landed in ``normalized_payment_events``,
``normalization_quarantine`` and ``normalization_pending`` with the labels. :func:`score` is the
pure comparison, usable without a database.

How a canonical event is compared with a label: the label's ``refunded`` is a refund event that
was approved, ``cancelled`` a void that was approved or any event whose status is ``cancelled``; a
failed refund or void keeps its status (``declined``/``error``). An amount or currency the label
does not have (null) but the event states is *wrong* (invented); one the label has but the event
leaves null is *withheld* (allowed: never guessed).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "EvalError", "Label", "CorpusRecord", "Observed", "RowScore", "Report",
    "read_corpus", "label_status", "score", "evaluate",
]

log = logging.getLogger(__name__)

LABEL_STATUSES = ("approved", "declined", "error", "pending", "refunded", "cancelled")
_LABEL_KEYS = ("provider", "status", "amount", "currency", "country", "response_code", "confidence")


class EvalError(ValueError):
    """The corpus cannot be read, or the scratch run failed; the message says where."""


@dataclass(frozen=True)
class Label:
    provider: str
    status: str
    amount: Decimal | None
    currency: str | None
    country: str | None
    response_code: str | None
    confidence: str


@dataclass(frozen=True)
class CorpusRecord:
    line: int
    record: dict[str, Any]
    label: Label
    source: str
    format: str

    @property
    def key(self) -> str:
        return str(self.record["id"])


@dataclass
class Observed:
    """Where one lake row ended up, and the canonical values of its event if it became one."""

    outcome: str  # event | quarantine | pending | lost
    reason: str | None = None
    mapping_id: str | None = None
    provider: str | None = None
    event_type: str | None = None
    status: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    issuer_country: str | None = None
    response_code: str | None = None


@dataclass
class RowScore:
    line: int
    key: str
    source: str
    format: str
    label: Label
    observed: Observed
    predicted_status: str | None
    status_ok: bool | None  # None when not an event
    amount: str  # ok | withheld | wrong | n/a (not an event)
    currency: str  # ok | withheld | wrong | n/a
    provider_ok: bool | None

    @property
    def money_wrong(self) -> bool:
        return self.amount == "wrong" or self.currency == "wrong"


def _parse_amount(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvalError(f"{where}: label.amount must be a decimal string or null, got {value!r}")
    try:
        return Decimal(value)
    except InvalidOperation as e:
        raise EvalError(f"{where}: label.amount {value!r} is not a decimal") from e


def read_corpus(path: str | os.PathLike[str]) -> list[CorpusRecord]:
    """Every record of a labelled JSONL file; EvalError names the first bad line."""
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"corpus file not found: {p}")
    out: list[CorpusRecord] = []
    seen: set[str] = set()
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{p.name}:{n}"
            try:
                obj = json.loads(line, parse_float=Decimal)
            except ValueError as e:
                raise EvalError(f"{where}: not JSON ({e})") from e
            rec, lab = obj.get("record"), obj.get("label")
            if not isinstance(rec, dict) or "id" not in rec or "data" not in rec:
                raise EvalError(f"{where}: record must be an object with id and data")
            if not isinstance(lab, dict) or any(k not in lab for k in _LABEL_KEYS):
                raise EvalError(f"{where}: label must have {', '.join(_LABEL_KEYS)}")
            if lab["status"] not in LABEL_STATUSES:
                raise EvalError(f"{where}: label.status {lab['status']!r} is not one of {', '.join(LABEL_STATUSES)}")
            label = Label(str(lab["provider"]), lab["status"], _parse_amount(lab["amount"], where),
                          lab["currency"], lab["country"], lab["response_code"], str(lab["confidence"]))
            key = str(rec["id"])
            if key in seen:
                raise EvalError(f"{where}: duplicate record id {key}")
            seen.add(key)
            out.append(CorpusRecord(n, rec, label, str(obj.get("source", "")), str(obj.get("format", ""))))
    if not out:
        raise EvalError(f"{p}: no records")
    return out


def label_status(event_type: str | None, status: str | None) -> str | None:
    """A canonical (event_type, status) in the corpus's label vocabulary."""
    if status is None:
        return None
    if status == "approved" and event_type == "refund":
        return "refunded"
    if status == "approved" and event_type == "void":
        return "cancelled"
    return status


def _verdict(label: Any, got: Any) -> str:
    if got is None:
        return "ok" if label is None else "withheld"
    if label is None:
        return "wrong"
    return "ok" if label == got else "wrong"


def score(records: Iterable[CorpusRecord], observed: dict[str, Observed]) -> Report:
    """Compare what the pipeline produced (by lake key) with the labels. Pure: no database."""
    rows: list[RowScore] = []
    for r in records:
        obs = observed.get(r.key) or Observed("lost")
        if obs.outcome != "event":
            rows.append(RowScore(r.line, r.key, r.source, r.format, r.label, obs, None, None, "n/a", "n/a", None))
            continue
        pred = label_status(obs.event_type, obs.status)
        rows.append(RowScore(
            r.line, r.key, r.source, r.format, r.label, obs, pred, pred == r.label.status,
            _verdict(r.label.amount, obs.amount), _verdict(r.label.currency, obs.currency),
            obs.provider == r.label.provider,
        ))
    return Report(rows)


def _pct(n: int, d: int) -> float | None:
    return round(100.0 * n / d, 1) if d else None


@dataclass
class Report:
    rows: list[RowScore]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- figures ----------------------------------------------------------------------------------

    @staticmethod
    def _figures(rows: list[RowScore]) -> dict[str, Any]:
        events = [r for r in rows if r.observed.outcome == "event"]
        with_amount = [r for r in events if r.label.amount is not None]
        quarantined = Counter(r.observed.reason or "?" for r in rows if r.observed.outcome == "quarantine")
        return {
            "records": len(rows),
            "normalized": len(events),
            "pending": sum(r.observed.outcome == "pending" for r in rows),
            "quarantined": sum(quarantined.values()),
            "quarantine_reasons": dict(sorted(quarantined.items())),
            "lost": sum(r.observed.outcome == "lost" for r in rows),
            "coverage_pct": _pct(len(events), len(rows)),
            "status_correct": sum(bool(r.status_ok) for r in events),
            "status_pct": _pct(sum(bool(r.status_ok) for r in events), len(events)),
            "labelled_amounts": len(with_amount),
            "amount_currency_correct": sum(r.amount == "ok" and r.currency == "ok" for r in with_amount),
            "amounts_withheld": sum(r.amount == "withheld" for r in events),
            "wrong_amounts": sum(r.amount == "wrong" for r in events),
            "wrong_currencies": sum(r.currency == "wrong" for r in events),
            "provider_correct": sum(bool(r.provider_ok) for r in events),
        }

    @property
    def totals(self) -> dict[str, Any]:
        return self._figures(self.rows)

    def by_provider(self) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[RowScore]] = {}
        for r in self.rows:
            groups.setdefault(r.label.provider, []).append(r)
        return {p: self._figures(g) for p, g in sorted(groups.items())}

    def confusion(self) -> dict[str, dict[str, int]]:
        """label status -> predicted status (or the row's outcome when it is not an event) -> count."""
        table: dict[str, Counter[str]] = {s: Counter() for s in LABEL_STATUSES}
        for r in self.rows:
            table[r.label.status][r.predicted_status or f"({r.observed.outcome})"] += 1
        return {k: dict(sorted(v.items())) for k, v in table.items() if v}

    def money_errors(self) -> list[RowScore]:
        return [r for r in self.rows if r.money_wrong]

    def status_errors(self) -> list[RowScore]:
        return [r for r in self.rows if r.status_ok is False]

    def failures(self, *, min_coverage: float = 0.0, min_status: float = 0.0) -> list[str]:
        """Why the run fails its thresholds (empty = it passes)."""
        t = self.totals
        out = []
        if (t["coverage_pct"] or 0.0) < min_coverage:
            out.append(f"coverage {t['coverage_pct']}% is below --min-coverage {min_coverage}%")
        if t["normalized"] and (t["status_pct"] or 0.0) < min_status:
            out.append(f"statuses correct {t['status_pct']}% is below --min-status {min_status}%")
        if t["wrong_amounts"] or t["wrong_currencies"]:
            out.append(f"{t['wrong_amounts']} wrong amount(s) and {t['wrong_currencies']} wrong currency(ies)")
        if t["lost"]:
            out.append(f"{t['lost']} record(s) lost: in no mart, no quarantine, not pending")
        return out

    # -- output -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def row(r: RowScore) -> dict[str, Any]:
            o = asdict(r.observed)
            return {"line": r.line, "lake_key": r.key, "source": r.source, "provider": r.label.provider,
                    "label": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(r.label).items()},
                    "observed": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in o.items()},
                    "predicted_status": r.predicted_status, "status_ok": r.status_ok,
                    "amount": r.amount, "currency": r.currency}
        return {"meta": self.meta, "totals": self.totals, "by_provider": self.by_provider(),
                "confusion": self.confusion(),
                "money_errors": [row(r) for r in self.money_errors()],
                "status_errors": [row(r) for r in self.status_errors()],
                "rows": [row(r) for r in self.rows]}

    def render(self, *, details: bool = True) -> str:
        t = self.totals
        lines = [
            f"records {t['records']}: normalized {t['normalized']} ({t['coverage_pct']}%), "
            f"pending {t['pending']}, quarantined {t['quarantined']}"
            + (f" ({', '.join(f'{k} {v}' for k, v in t['quarantine_reasons'].items())})" if t['quarantined'] else "")
            + f", lost {t['lost']}",
            f"statuses correct: {t['status_correct']}/{t['normalized']} ({t['status_pct']}%)",
            f"amount+currency correct: {t['amount_currency_correct']}/{t['labelled_amounts']} labelled amounts; "
            f"withheld {t['amounts_withheld']}; WRONG amounts {t['wrong_amounts']}, "
            f"WRONG currencies {t['wrong_currencies']}",
            f"provider named correctly: {t['provider_correct']}/{t['normalized']}",
            "",
            f"{'provider':<22}{'rec':>5}{'norm':>6}{'pend':>6}{'quar':>6}{'status ok':>11}{'money ok':>10}"
            f"{'wrong':>7}",
        ]
        for p, f in self.by_provider().items():
            lines.append(f"{p:<22}{f['records']:>5}{f['normalized']:>6}{f['pending']:>6}{f['quarantined']:>6}"
                         f"{str(f['status_correct']) + '/' + str(f['normalized']):>11}"
                         f"{str(f['amount_currency_correct']) + '/' + str(f['labelled_amounts']):>10}"
                         f"{f['wrong_amounts'] + f['wrong_currencies']:>7}")
        conf = self.confusion()
        cols = sorted({c for v in conf.values() for c in v})
        lines += ["", "status confusion (rows: label, columns: paynorm)",
                  f"{'':<11}" + "".join(f"{c[:11]:>12}" for c in cols)]
        for lab, v in conf.items():
            lines.append(f"{lab:<11}" + "".join(f"{v.get(c, 0) or '.':>12}" for c in cols))
        money = self.money_errors()
        lines += ["", f"wrong amounts / currencies: {len(money)}"]
        for r in money:
            lines.append(f"  line {r.line} {r.label.provider} ({r.observed.mapping_id}): "
                         f"amount {r.observed.amount} {r.observed.currency} vs label {r.label.amount} "
                         f"{r.label.currency}  [{r.source}]")
        if details:
            errs = self.status_errors()
            lines += ["", f"wrong statuses: {len(errs)}"]
            for r in errs:
                lines.append(f"  line {r.line} {r.label.provider} ({r.observed.mapping_id}): "
                             f"{r.observed.event_type}/{r.observed.status} -> {r.predicted_status}, "
                             f"label {r.label.status}  [{r.source}]")
            other = [r for r in self.rows if r.observed.outcome != "event"]
            lines += ["", f"not normalized: {len(other)}"]
            for r in other:
                lines.append(f"  line {r.line} {r.label.provider} {r.format}: {r.observed.outcome}"
                             f"{' ' + r.observed.reason if r.observed.reason else ''}  [{r.source}]")
        return "\n".join(lines)


# -- the scratch run -------------------------------------------------------------------------------


def _observe(warehouse_dsn: str, schema: str) -> dict[str, Observed]:
    import psycopg
    from psycopg import sql

    marts = sql.Identifier(f"{schema}_marts")
    out: dict[str, Observed] = {}
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        q = sql.SQL("select lake_key, mapping_id, provider, event_type, status, amount, currency, issuer_country,"
                    " response_code_raw from {}.normalized_payment_events").format(marts)
        for k, mid, prov, et, st, amt, cur, ic, rc in conn.execute(q):
            out[k] = Observed("event", None, mid, prov, et, st, amt, cur, ic, rc)
        q = sql.SQL("select lake_key, reason, mapping_id, provider from {}.normalization_quarantine").format(marts)
        for k, reason, mid, prov in conn.execute(q):
            if k in out:
                raise EvalError(f"lake row {k} is both an event and quarantined")
            out[k] = Observed("quarantine", reason, mid, prov)
        for (k,) in conn.execute(sql.SQL("select lake_key from {}.normalization_pending").format(marts)):
            if k in out:
                raise EvalError(f"lake row {k} is pending and also {out[k].outcome}")
            out[k] = Observed("pending")
    return out


def evaluate(path: str | os.PathLike[str], *, with_llm: bool = False, mappings_dir: str | os.PathLike[str] | None = None,
             work_dir: str | os.PathLike[str] | None = None, keep: bool = False, settings: Any = None) -> Report:
    """Score the built-in (or ``mappings_dir``) rules on a labelled corpus file, on scratch databases.

    ``with_llm``: also run the LLM step (OPENAI_API_KEY / OPENAI_BASE_URL of ``settings``). ``keep``:
    leave the scratch cluster's files (``work_dir``) for inspection; the cluster is stopped either way.
    """
    from .scratch import ScratchError, scratch

    records = read_corpus(path)
    try:
        with scratch(work_dir, keep=keep) as sc:
            sc.insert(r.record for r in records)
            result = sc.run(settings, mappings_dir=mappings_dir, with_llm=with_llm)
            report = score(records, _observe(sc.warehouse_dsn, "paynorm"))
    except ScratchError as e:
        raise EvalError(str(e)) from e
    report.meta = {"corpus": str(path), "records": len(records), "with_llm": with_llm,
                   "mappings_dir": str(mappings_dir) if mappings_dir else "built-in",
                   "stages": [f"{st.name} {st.outcome} {st.seconds:.1f}s" for st in result.stages]}
    return report
