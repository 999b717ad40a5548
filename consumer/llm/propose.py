"""The LLM step: one validated mapping rule per payload shape no rule knows.

``run_llm_step`` reads the rows the build could not place (``normalization_pending``, and the
shapes quarantined after an earlier try when retrying), groups them by ``shape_key`` and, for
each shape not tried yet, makes ONE request to an OpenAI-compatible chat endpoint (the official
``openai`` client) for a mapping rule — never for the values of a row:

- the request: the versioned prompt ``prompts/mapping_rule_v1.md`` (system message without any
  payload; a user message with a few redacted samples, delimited and declared to be data) and a
  strict JSON-schema response format derived from ``mappings/schema.json`` (canonical field names,
  canonical enums as enums);
- the answer becomes a rule (origin ``llm``) that is validated before use: the rule schema and its
  paths compiled in PostgreSQL (``rules.validate_rule``), the LLM policy (no constant amount,
  status or identifier; a constant provider, currency, payment method or card network must appear
  in the samples; the status map must not contradict the status vocabulary seed in any supported
  language; a map only produces canonical values; flags need evidence in the data), and the rule
  compiled by the build's own macros (``paynorm_rule_preview``: what validation sees is what the
  build will do) and applied to EVERY row it would capture (its ``match`` covers the shape and
  captures no row of another active rule or another shape; canonical status for the large
  majority; valid, non-negative amounts; ISO currencies and countries; parseable timestamps;
  every path finds something);
- a refused rule gets ONE repair round with the errors, then the shape is marked ``unmappable``
  in ``paynorm.llm_shapes`` (its rows go to quarantine ``llm_unmappable``) until the model or the
  prompt changes, or ``retry_unmappable``;
- accepted rules go to ``paynorm.mappings`` (active, or ``proposed`` when
  ``PAYNORM_LLM_AUTO_ACTIVATE=false``) with the model, the prompt hash and the validation figures;
- every HTTP request is recorded in ``paynorm.llm_calls``. 429 / 5xx / timeouts / connection
  errors are retried with exponential back-off; when the retries are spent the shape keeps waiting
  (no ``llm_shapes`` row: its rows stay pending) and the run goes on. ``max_calls`` and
  ``max_tokens`` bound a run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .. import rules
from ..jsonutil import dumps_exact, loads_exact
from ..settings import Settings
from ..transform import TransformError
from . import redact
from .client import RETRYABLE, Budget, CallResult, make_client, one_request, parse_answer
from .prompt import (CONST_MUST_APPEAR, LLM_CONST_FIELDS, LlmError, build_messages, build_request, prompt_hash,
                     repair_messages)
from .samples import (LANDING, LIVE, ROW_IMAGE, Context, Sample, Shape, _relation, pick_samples, redacted_samples, shape_rows,
                      waiting_shapes)

log = logging.getLogger(__name__)

LLM_RULE_PRIORITY = 50  # below the built-in rules' default (100): a built-in rule wins any overlap
LOCK_KEY = 0x70A1_11A0  # advisory lock: one LLM step at a time per warehouse
_NEGATIVE_TOKEN_RE = re.compile(
    r"declin|refus|reject|denied|deny|fail|error|cancel|void|expir|fraud|insufficient|not_?auth|unauthori|"
    r"blocked|invalid|revers|chargeback"
    # es / pt / fr / de / it
    r"|rechaz|deneg|recus|negad|negat|fallid|falh|erro|anulad|cancelad|vencid|invalid|no_?autoriz|nao_?autoriz|"
    r"n[ãa]o autoriz|échou|echou|annul|refusé|abgelehnt|fehlgeschlagen|storn|abgelaufen|rifiut|annullat|scadut|"
    r"^\s*(ko|nok|no|non|nein)\s*$", re.I)
_BOOLEAN_TOKENS = ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n")
_COMMA_DECIMAL_RE = r"^-?[0-9]{1,3}([. '][0-9]{3})*(,[0-9]+)?$|^-?[0-9]+(,[0-9]+)?$"


def vocabulary_status(token: str | None, provider: str | None) -> str | None:
    return None if token is None else rules.vocabulary_status(token, provider)


# -- from the answer to a rule ------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


def rule_id_for(shape_key: str, provider: Any) -> str:
    prov = provider.get("const") if isinstance(provider, dict) else None
    base = _slug(str(prov))[:30] if prov else "shape"
    return f"llm_{base or 'shape'}_{_slug(shape_key)[:16]}"


def _clean_spec(spec: Any) -> Any:
    """Drop null keys; a map given as [{raw, value}] becomes {raw: value}."""
    if not isinstance(spec, dict):
        return spec
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if v is None:
            continue
        if k == "map" and isinstance(v, list):
            m: dict[str, Any] = {}
            for item in v:
                if isinstance(item, dict) and "raw" in item:
                    m[str(item["raw"])] = item.get("value")
            if m:
                out["map"] = m
            continue
        out[k] = v
    return out


def answer_to_rule(answer: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The model's answer as a paynorm rule document (unknown keys kept: the validator names them)."""
    r = answer.get("rule")
    if not isinstance(r, dict):
        raise ValueError("the answer has no rule object")
    provider = _clean_spec(r.get("provider"))
    if isinstance(provider, dict) and isinstance(provider.get("const"), str):
        provider["const"] = _slug(provider["const"]) or provider["const"]
    fields_in = r.get("fields")
    fields: dict[str, Any] = {}
    if isinstance(fields_in, dict):
        for name, spec in fields_in.items():
            spec = _clean_spec(spec)
            if spec is None or spec == {}:
                continue
            if name == "currency" and isinstance(spec, dict) and isinstance(spec.get("const"), str):
                spec["const"] = spec["const"].strip().upper()
            fields[name] = spec
    rule: dict[str, Any] = {
        "id": rule_id_for(shape.shape_key, provider),
        "description": str(r.get("description") or f"payload shape {shape.shape_key}").strip()[:500],
        "docs": f"proposed by the paynorm LLM step for shape {shape.shape_key}",
        "provider": provider,
        "formats": [shape.payload_format],
        "match": r.get("match"),
        "priority": LLM_RULE_PRIORITY,
        "fields": fields,
    }
    for k, v in r.items():  # anything else the model invented: the schema validator refuses it by name
        if k not in ("description", "provider", "match", "fields", "id", "formats", "priority", "status", "docs"):
            rule[k] = v
    return rule


def _appears(value: str, text: str) -> bool:
    """``value`` (a constant) appears in ``text`` as a token, case-insensitively (``_`` ~ any separator)."""
    parts = [re.escape(p) for p in re.split(r"[_\s\-]+", str(value).strip()) if p]
    if not parts:
        return False
    return re.search(r"(?<![A-Za-z0-9])" + r"[\s_\-.]*".join(parts) + r"(?![A-Za-z0-9])", text, re.I) is not None


def policy_errors(rule: dict[str, Any], samples_text: str) -> list[str]:
    """What an LLM rule may not do, whatever the schema allows."""
    errors: list[str] = []
    fields = rule.get("fields") if isinstance(rule.get("fields"), dict) else {}
    prov = rule.get("provider")
    if isinstance(prov, dict) and prov.get("const") is not None and not _appears(str(prov["const"]), samples_text):
        errors.append(f"provider: the constant {str(prov['const'])!r} does not appear in the samples; "
                      "point provider.path at the field that names the provider, or use a name the samples show")
    if isinstance(prov, dict) and (prov.get("map") or prov.get("default")):
        errors.append("provider: no map or default in an LLM rule: the provider is the payload's own name for it "
                      "(a map could relabel one provider as another)")
    for name, spec in fields.items():
        if not isinstance(spec, dict):
            continue
        if "const" in spec:
            if name == "amount":
                errors.append("fields.amount: an LLM rule never holds a constant amount; point amount.path at "
                              "the amount in the payload")
            elif name not in LLM_CONST_FIELDS:
                errors.append(f"fields.{name}: a constant is not allowed here; the value must come from the "
                              f"payload (path)")
            elif name in CONST_MUST_APPEAR and not _appears(str(spec["const"]), samples_text):
                errors.append(f"fields.{name}: the constant {str(spec['const'])!r} does not appear in the samples")
        if spec.get("regex") and name in ("status", "amount", "currency"):
            errors.append(f"fields.{name}: no regex in an LLM rule: point the path at the value itself (a regex "
                          f"could pull a word out of free text)")
        if spec.get("cases"):
            errors.append(f"fields.{name}: cases are not allowed in an LLM rule; use path + map")
        if "default" in spec:
            errors.append(f"fields.{name}: a default is not allowed in an LLM rule")
    status = fields.get("status")
    if isinstance(status, dict):
        if not (isinstance(status.get("path"), str) or isinstance(status.get("row_path"), str)):
            errors.append("fields.status: needs a path to the provider's status value (a constant or cases-only "
                          "status would not come from the payload)")
        m = status.get("map")
        if isinstance(m, dict):
            provider = prov.get("const") if isinstance(prov, dict) else None
            for raw, value in m.items():
                if len(str(raw)) > 40 or len(str(raw).split()) > 3:
                    errors.append(f"fields.status.map: {redact.redact_text(str(raw), max_len=60)!r} is not a status "
                                  f"token (free text cannot be a status)")
                    continue
                seed = vocabulary_status(str(raw), provider)
                if seed is not None and value in rules.STATUSES and seed != value:
                    errors.append(f"fields.status.map: {str(raw)!r} -> {value!r} contradicts the status vocabulary "
                                  f"({str(raw)!r} is {seed})")
                elif value == "approved" and _NEGATIVE_TOKEN_RE.search(str(raw)):
                    errors.append(f"fields.status.map: {str(raw)!r} reads as a refusal or failure and cannot be "
                                  f"approved")
    return errors


# -- applying the rule to the rows in SQL ---------------------------------------------------------------


def _paths_of(rule: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, spec) of every field (and provider) whose value comes from a path."""
    out = []
    prov = rule.get("provider")
    if isinstance(prov, dict) and (isinstance(prov.get("path"), str) or isinstance(prov.get("row_path"), str)):
        out.append(("provider", prov))
    for name, spec in (rule.get("fields") or {}).items():
        if isinstance(spec, dict) and (isinstance(spec.get("path"), str) or isinstance(spec.get("row_path"), str)):
            out.append((f"fields.{name}", spec))
    return out


@dataclass
class Evaluation:
    errors: list[str]
    figures: dict[str, Any]


def _pct(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


_PREVIEW_COLUMNS = ("lake_key", "shape_key", "current_mapping_id", "provider", "transaction_id", "event_type",
                    "status", "provider_status_raw", "invalid_reason", "amount_raw", "amount", "currency",
                    "amount_withheld_reason", "issuer_country", "merchant_country", "event_at_parsed")


def evaluate_rule(conn: psycopg.Connection, rule: dict[str, Any], shape_key: str, ctx: Context, *,
                  min_coverage: float = 0.95) -> Evaluation:
    """Apply ``rule`` with the build's own compiler (``paynorm_rule_preview``) to every live row it
    would capture plus every row of its shape no rule matches, and say what is wrong with it
    (empty errors = usable): what validation sees is what the build will do."""
    code = ctx.compile(rule, shape_key)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _PREVIEW_COLUMNS)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql.SQL("select {} from ({}) as preview").format(cols, sql.SQL(code))).fetchall()
    keys = shape_rows(conn, ctx, shape_key)
    return _judge(conn, rule, rows, keys, shape_key, min_coverage)


def _found(conn: psycopg.Connection, rule: dict[str, Any], keys: list[str]) -> dict[str, int]:
    """Per path of the rule (``where``), on how many of ``keys`` it finds a value (existence only:
    the values themselves come from the compiled rule)."""
    paths = _paths_of(rule)
    if not paths or not keys:
        return {}
    exprs = []
    for where, spec in paths:
        root, path = (ROW_IMAGE, spec["row_path"]) if isinstance(spec.get("row_path"), str) \
            else ("l.payload", spec["path"])
        exprs.append(sql.SQL("count(*) filter (where jsonb_path_query_first({}, {}::jsonpath, '{{}}'::jsonb, true) "
                             "is not null)").format(sql.SQL(root), sql.Literal(path)))
    q = sql.SQL("select {} from {} as l where l.lake_key = any({}::text[])").format(
        sql.SQL(", ").join(exprs), sql.SQL(LANDING), sql.Literal(keys))
    counts = conn.execute(q).fetchone() or ()
    return {where: int(n) for (where, _), n in zip(paths, counts)}


def _judge(conn: psycopg.Connection, rule: dict[str, Any], rows: list[dict[str, Any]], keys: list[str],
           shape_key: str, thr: float) -> Evaluation:
    f = rule.get("fields") or {}
    errors: list[str] = []
    shape_keys = set(keys)
    captured_keys = {r["lake_key"] for r in rows}
    greedy = [r for r in rows if r["current_mapping_id"]]
    others = Counter(r["shape_key"] for r in rows if not r["current_mapping_id"] and r["lake_key"] not in shape_keys)
    pop = [r for r in rows if not r["current_mapping_id"] and r["lake_key"] in shape_keys]
    missed = len(shape_keys - captured_keys)
    total = len(pop)
    fig: dict[str, Any] = {"shape_key": shape_key, "rows": total, "shape_rows": len(shape_keys),
                           "match_missed": missed, "captured_from_other_rules": len(greedy),
                           "captured_other_shapes": dict(others), "min_coverage": thr}
    if not shape_keys:
        errors.append("no row of the shape is left to map (another active rule matches them all)")
    if missed:
        errors.append(f"match: {rule.get('match')!r} is false for {missed} of {len(shape_keys)} rows of the shape; "
                      "it must be true for every row of this shape (test keys, not varying values)")
    if others:
        errors.append(f"match: {rule.get('match')!r} also captures rows of {len(others)} other unknown shape(s) "
                      f"({sum(others.values())} row(s)); a rule must match this shape only (test the keys that "
                      f"make it this payload type)")
    if greedy:
        hit = sorted({r["current_mapping_id"] for r in greedy})
        errors.append(f"match: {rule.get('match')!r} also captures {len(greedy)} row(s) that active rule(s) "
                      f"{', '.join(hit[:5])} already match; exclude them (make the filter more specific)")
    # status: the compiled rule's own answer (map, vocabulary, default)
    ok_status = sum(1 for r in pop if r["status"] is not None)
    fig["status_ok"], fig["status_coverage"] = ok_status, _pct(ok_status, total)
    if total and ok_status / total < thr:
        unmapped = Counter("(nothing at the status path)" if r["provider_status_raw"] is None
                           else r["provider_status_raw"] for r in pop if r["status"] is None)
        errors.append(f"fields.status: only {ok_status} of {total} rows get a canonical status (need {thr:.0%}); "
                      "values with no canonical status: "
                      + ", ".join(f"{k!r} ({n})" for k, n in unmapped.most_common(10))
                      + " — add them to status.map or point status.path at the provider's status")
    # amount and currency
    with_amount = [r for r in pop if r["amount_raw"] is not None]
    bad_amounts = [r for r in with_amount if r["invalid_reason"] == "bad_amount"]
    fig.update({"amount_rows": len(with_amount), "amount_ok": len(with_amount) - len(bad_amounts),
                "amount_withheld": dict(Counter(r["amount_withheld_reason"] for r in pop
                                                if r["amount_withheld_reason"]))})
    if isinstance(f.get("amount"), dict) and total and not with_amount:
        errors.append(f"fields.amount: the path finds no amount in any of the {total} rows")
    elif with_amount and len(bad_amounts) / len(with_amount) > 1 - thr:
        shown = ", ".join(repr(r["amount_raw"]) for r in bad_amounts[:5])
        errors.append(f"fields.amount: {len(bad_amounts)} of {len(with_amount)} amounts are not valid for their "
                      f"currency and unit (not a plain number, negative, or more decimals than allowed): {shown}")
    unknown_cur = [r for r in pop if r["invalid_reason"] == "unknown_currency"]
    fig["currency_rows"] = sum(1 for r in pop if r["currency"] is not None) + len(unknown_cur)
    fig["currency_ok"] = fig["currency_rows"] - len(unknown_cur)
    if unknown_cur and len(unknown_cur) / max(fig["currency_rows"], 1) > 1 - thr:
        errors.append(f"fields.currency: {len(unknown_cur)} of {fig['currency_rows']} values are not ISO 4217 codes")
    # paths: each finds something; countries and timestamps read where found
    found = _found(conn, rule, [r["lake_key"] for r in pop])
    for where, n in found.items():
        if total and n == 0:
            spec = dict(_paths_of(rule))[where]
            errors.append(f"{where}: path {spec.get('path') or spec.get('row_path')!r} finds nothing in any of the "
                          f"{total} rows")
    for name in ("issuer_country", "merchant_country"):
        n = found.get(f"fields.{name}", 0)
        ok = sum(1 for r in pop if r[name] is not None)
        fig[f"{name}_ok"] = ok
        if n and ok / n < thr:
            errors.append(f"fields.{name}: {n - ok} of {n} values are not ISO 3166 country codes")
    n = found.get("fields.event_at", 0)
    lo, hi = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    ok = sum(1 for r in pop if r["event_at_parsed"] is not None and lo <= r["event_at_parsed"] <= hi)
    fig["event_at_ok"] = ok
    if n and ok / n < thr:
        fmt = (f.get("event_at") or {}).get("format", "iso") if isinstance(f.get("event_at"), dict) else "iso"
        errors.append(f"fields.event_at: {n - ok} of {n} values do not parse as {fmt} dates between 2000 and 2100 "
                      "(check format: iso, epoch_s or epoch_ms)")
    return Evaluation(errors, fig)


def flag_evidence_errors(conn: psycopg.Connection, rule: dict[str, Any], shape_key: str) -> list[str]:
    """Flags need evidence in the data: `decimal_comma` only where the shape's amounts are written
    with a decimal comma, an is_test flag only on values that read as booleans."""
    errors: list[str] = []
    f = rule.get("fields") if isinstance(rule.get("fields"), dict) else {}

    def values(spec: dict[str, Any]) -> list[str]:
        root, path = (ROW_IMAGE, spec["row_path"]) if spec.get("row_path") else ("l.payload", spec.get("path"))
        if not isinstance(path, str):
            return []
        q = sql.SQL("select distinct jsonb_path_query_first({root}, {path}::jsonpath, '{{}}'::jsonb, true) #>> '{{}}' "
                    "from {landing} as l where {live} and l.shape_key = {shape} limit 1000").format(
            root=sql.SQL(root), path=sql.Literal(path), landing=sql.SQL(LANDING), live=LIVE,
            shape=sql.Literal(shape_key))
        return [r[0] for r in conn.execute(q).fetchall() if r[0] is not None]

    amount = f.get("amount")
    if isinstance(amount, dict) and amount.get("decimal_comma"):
        vals = [v.strip() for v in values(amount)]
        if not any("," in v for v in vals) or not all(re.match(_COMMA_DECIMAL_RE, v) for v in vals):
            shown = ", ".join(repr(v) for v in vals[:5])
            errors.append(f"fields.amount: decimal_comma needs amounts written with a decimal comma (1.234,56); "
                          f"this shape's amounts are {shown or 'absent'}")
    is_test = f.get("is_test")
    if isinstance(is_test, dict) and (is_test.get("path") or is_test.get("row_path")):
        vals = values(is_test)
        odd = [v for v in vals if v.strip().lower() not in _BOOLEAN_TOKENS]
        if odd:
            errors.append(f"fields.is_test: {', '.join(repr(v) for v in odd[:5])} do not read as booleans")
    return errors


def validate_llm_rule(conn: psycopg.Connection, rule: dict[str, Any], shape_key: str, samples_text: str,
                      ctx: Context, *, min_coverage: float = 0.95) -> Evaluation:
    """Every check an LLM rule must pass before it is stored (empty errors = accepted)."""
    errors = rules.validate_rule(rule, conn)
    if errors:  # schema errors: validate_rule skipped the PostgreSQL checks; report them too
        try:
            errors += [e for e in rules.check_sql(rule, conn) if e not in errors]
        except Exception as e:  # noqa: BLE001 - a malformed rule must not crash the step
            errors.append(f"the rule's paths could not be checked: {e}")
    errors += [e for e in policy_errors(rule, samples_text) if e not in errors]
    if any(e.split(":")[0].startswith(("match", "(rule)")) or "jsonpath" in e for e in errors) \
            or not isinstance(rule.get("match"), str):
        return Evaluation(errors, {"shape_key": shape_key})
    try:
        with conn.transaction():
            ev = evaluate_rule(conn, rule, shape_key, ctx, min_coverage=min_coverage)
            errors += flag_evidence_errors(conn, rule, shape_key)
    except psycopg.Error as e:
        errors.append(f"the rule cannot be applied in PostgreSQL: {(e.diag.message_primary or str(e)).strip()}")
        return Evaluation(errors, {"shape_key": shape_key})
    except TransformError as e:
        errors.append(f"the rule does not compile: {str(e).strip()[:500]}")
        return Evaluation(errors, {"shape_key": shape_key})
    return Evaluation(errors + ev.errors, ev.figures)


# -- bookkeeping --------------------------------------------------------------------------------------


def _record_call(conn: psycopg.Connection, run_id: str, shape: Shape, kind: str, attempt: int, model: str,
                 phash: str, res: CallResult, outcome: str, error: str | None = None,
                 mapping_id: str | None = None) -> None:
    with conn.transaction():
        conn.execute(
            "insert into paynorm.llm_calls (run_id, shape_key, kind, attempt, model, prompt_hash, tokens_in, "
            "tokens_out, latency_ms, outcome, error, mapping_id) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, shape.shape_key, kind, attempt, model, phash, res.tokens_in, res.tokens_out, res.latency_ms,
             outcome, (error or res.error or None) and str(error or res.error)[:4000], mapping_id))


def _mark_shape(conn: psycopg.Connection, shape: Shape, status: str, *, model: str, phash: str,
                mapping_id: str | None = None, error: str | None = None) -> None:
    with conn.transaction():
        conn.execute(
            """
            insert into paynorm.llm_shapes (shape_key, status, mapping_id, attempts, last_error, tried_at, model,
                                            prompt_hash, row_count)
            values (%s, %s, %s, 1, %s, now(), %s, %s, %s)
            on conflict (shape_key) do update set status = excluded.status, mapping_id = excluded.mapping_id,
                attempts = paynorm.llm_shapes.attempts + 1, last_error = excluded.last_error, tried_at = now(),
                model = excluded.model, prompt_hash = excluded.prompt_hash, row_count = excluded.row_count
            """,
            (shape.shape_key, status, mapping_id, error and error[:4000], model, phash, shape.rows))


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class ShapeResult:
    shape_key: str
    payload_format: str
    rows: int
    outcome: str  # active | proposed | unmappable | waiting | covered | skipped | dry_run
    mapping_id: str | None = None
    errors: list[str] = field(default_factory=list)
    calls: int = 0


@dataclass
class LlmRunResult:
    """What one run of the LLM step did (``summary()`` is the line to show)."""

    run_id: str
    model: str
    prompt_hash: str
    rows_waiting: int = 0  # rows of the shapes this run had to ask about
    shapes_waiting: int = 0
    shapes_tried_before: int = 0  # unmatched shapes already tried (unmappable / mapped): no call
    shapes: list[ShapeResult] = field(default_factory=list)
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    no_key: bool = False
    dry_run: bool = False
    budget_stop: str | None = None  # why the run stopped early ('max_calls' | 'max_tokens')
    requests: list[dict[str, Any]] = field(default_factory=list)  # dry run: {shape_key, rows, request}

    def _with(self, outcome: str) -> list[ShapeResult]:
        return [s for s in self.shapes if s.outcome == outcome]

    @property
    def activated(self) -> list[str]:
        return [s.mapping_id for s in self._with("active") if s.mapping_id]

    @property
    def proposed(self) -> list[str]:
        return [s.mapping_id for s in self._with("proposed") if s.mapping_id]

    @property
    def unmappable(self) -> list[str]:
        return [s.shape_key for s in self._with("unmappable")]

    @property
    def still_waiting(self) -> list[str]:
        return [s.shape_key for s in self.shapes if s.outcome in ("waiting", "skipped")]

    def summary(self) -> str:
        if self.no_key:
            return (f"LLM step: {self.rows_waiting} row(s) in {self.shapes_waiting} unknown shape(s) wait for a "
                    f"mapping rule; set OPENAI_API_KEY (and OPENAI_BASE_URL for a local OpenAI-compatible server) "
                    f"to map them, or run `paynorm llm --dry-run` to see the requests")
        if self.dry_run:
            return (f"LLM step (dry run): {len(self.requests)} request(s) would be sent for {self.rows_waiting} "
                    f"row(s) in {self.shapes_waiting} shape(s); model {self.model}, prompt {self.prompt_hash}")
        if not self.shapes_waiting:
            return f"LLM step: no unknown shape waits ({self.shapes_tried_before} tried before); 0 calls"
        parts = [f"{len(self.activated)} rule(s) activated", f"{len(self.proposed)} proposed",
                 f"{len(self.unmappable)} shape(s) unmappable", f"{len(self.still_waiting)} still waiting"]
        covered = self._with("covered")
        if covered:
            parts.append(f"{len(covered)} covered by another new rule")
        line = (f"LLM step: {self.shapes_waiting} shape(s), {self.rows_waiting} row(s): " + ", ".join(parts)
                + f"; {self.calls} call(s), {self.tokens_in}+{self.tokens_out} tokens ({self.model})")
        if self.budget_stop:
            line += f"; stopped by --{self.budget_stop.replace('_', '-')}"
        return line





def _connect(conn_or_dsn: psycopg.Connection | str) -> tuple[psycopg.Connection, bool]:
    if isinstance(conn_or_dsn, str):
        return psycopg.connect(conn_or_dsn, autocommit=True), True
    return conn_or_dsn, False


def run_llm_step(conn_or_dsn: psycopg.Connection | str, settings: Settings, *, dry_run: bool = False,
                 max_calls: int | None = None, max_tokens: int | None = None, retry_unmappable: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> LlmRunResult:
    """Ask for a mapping rule for every unmatched shape not tried yet; see the module docstring.

    ``conn_or_dsn``: the warehouse, a DSN or an open connection. With a DSN or an autocommit
    connection every write (rule, shape status, call record) is committed as soon as it is made, so
    an interrupted run keeps what it paid for; with autocommit off the writes stay in the caller's
    transaction until the caller commits. ``max_calls`` / ``max_tokens`` default to the settings.
    ``sleep`` is the back-off sleeper (tests pass a fast one; the base delay is settings.llm_backoff).
    Never raises for an LLM problem (they are recorded and the shape waits); raises LlmError when
    another LLM step holds the lock.
    """
    conn, own = _connect(conn_or_dsn)
    dsn = conn_or_dsn if isinstance(conn_or_dsn, str) else settings.warehouse_dsn
    ctx = Context(dsn, Path(settings.home), Path(settings.dbt_project_dir) if settings.dbt_project_dir else None)
    try:
        rules.ensure_schema(conn)
        phash = prompt_hash()
        result = LlmRunResult(run_id=uuid.uuid4().hex[:12], model=settings.llm_model, prompt_hash=phash,
                              dry_run=dry_run)
        if not conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            raise LlmError("another `paynorm llm` run holds the lock on this warehouse; try again later")
        try:
            _run(conn, settings, ctx, result, dry_run=dry_run, retry_unmappable=retry_unmappable,
                 budget=Budget(settings.llm_max_calls if max_calls is None else max_calls,
                                settings.llm_max_tokens if max_tokens is None else max_tokens),
                 sleep=sleep)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
        return result
    finally:
        if own:
            conn.close()


def _run(conn: psycopg.Connection, settings: Settings, ctx: Context, result: LlmRunResult, *, dry_run: bool,
         retry_unmappable: bool, budget: Budget, sleep: Callable[[float], None]) -> None:
    if conn.execute("select to_regclass(%s)", (LANDING,)).fetchone()[0] is None:
        return  # nothing landed yet (`paynorm init` / replicate create the landing)
    pending = _relation(ctx, "normalization_pending").as_string(conn)
    if conn.execute("select to_regclass(%s)", (pending,)).fetchone()[0] is None:
        raise LlmError(f"{pending} does not exist yet: build the models first (`paynorm transform`), the LLM "
                       f"step asks about the rows the build could not place")
    todo, done = waiting_shapes(conn, ctx, model=settings.llm_model, phash=result.prompt_hash,
                                retry_unmappable=retry_unmappable)
    result.shapes_waiting = len(todo)
    result.rows_waiting = sum(s.rows for s in todo)
    result.shapes_tried_before = len(done)
    if not todo:
        return
    if not settings.openai_api_key and not dry_run:
        result.no_key = True
        return
    client = None if dry_run else make_client(settings)
    for shape in todo:
        # a rule accepted for one shape never captures another one's rows (validation refuses it),
        # so every waiting shape is asked about, once
        samples = pick_samples(conn, shape.shape_key, settings.llm_samples, shape_rows(conn, ctx, shape.shape_key))
        if not samples:
            continue
        messages = build_messages(shape, samples)
        request = build_request(settings, messages)
        if dry_run:
            result.requests.append({"shape_key": shape.shape_key, "payload_format": shape.payload_format,
                                    "rows": shape.rows, "request": request})
            result.shapes.append(ShapeResult(shape.shape_key, shape.payload_format, shape.rows, "dry_run"))
            continue
        if budget.stop or not budget.allows(request):
            result.shapes.append(ShapeResult(shape.shape_key, shape.payload_format, shape.rows, "skipped"))
            continue
        sr = _ask(conn, client, settings, ctx, result, shape, samples, messages, budget, sleep)
        result.shapes.append(sr)
    result.calls, result.tokens_in, result.tokens_out = budget.calls, budget.tokens_in, budget.tokens_out
    result.budget_stop = budget.stop


def _call_with_retries(conn: psycopg.Connection, client: Any, settings: Settings, result: LlmRunResult,
                       shape: Shape, kind: str, request: dict[str, Any], budget: Budget,
                       sleep: Callable[[float], None]) -> CallResult | None:
    """One logical request: retried on 429/5xx/timeouts; None when the budget forbids it."""
    res: CallResult | None = None
    for attempt in range(1, settings.llm_max_retries + 2):
        if not budget.allows(request):
            return res if res is not None else None
        res = one_request(client, request, settings.openai_api_key)
        res.attempt = attempt
        budget.spend(res, request)
        if res.outcome in ("ok", "malformed"):
            return res  # a malformed answer is judged (and recorded) like any answer, not retried
        _record_call(conn, result.run_id, shape, kind, attempt, settings.llm_model, result.prompt_hash, res,
                     res.outcome)
        log.warning("LLM request for shape %s failed (attempt %d): %s", shape.shape_key, attempt, res.error)
        if res.outcome not in RETRYABLE or attempt > settings.llm_max_retries:
            return res
        delay = settings.llm_backoff * (2 ** (attempt - 1))
        if res.retry_after is not None:
            delay = max(delay, min(res.retry_after, 60.0))
        sleep(delay)
    return res





def _ask(conn: psycopg.Connection, client: Any, settings: Settings, ctx: Context, result: LlmRunResult, shape: Shape,
         samples: list[Sample], messages: list[dict[str, str]], budget: Budget,
         sleep: Callable[[float], None]) -> ShapeResult:
    sr = ShapeResult(shape.shape_key, shape.payload_format, shape.rows, "waiting")
    samples_text = "\n".join(dumps_exact(s) for s in redacted_samples(samples))
    model, phash = settings.llm_model, result.prompt_hash
    for kind in ("propose", "repair"):
        request = build_request(settings, messages)
        calls_before = budget.calls
        res = _call_with_retries(conn, client, settings, result, shape, kind, request, budget, sleep)
        sr.calls += budget.calls - calls_before
        if res is None or res.outcome not in ("ok", "malformed"):
            sr.errors.append(res.error if res is not None and res.error else "budget exhausted")
            return sr  # transport failure or budget: the shape keeps waiting (retried next run)
        outcome, answer, error = parse_answer(res)
        if outcome == "refusal":
            _record_call(conn, result.run_id, shape, kind, res.attempt, model, phash, res, "refusal", error)
            sr.errors.append(error or "refusal")
            break
        if outcome == "malformed":
            _record_call(conn, result.run_id, shape, kind, res.attempt, model, phash, res, "malformed", error)
            sr.errors = [error or "malformed"]
            if kind == "propose":
                messages = repair_messages(messages, res.content or "", sr.errors)
                continue
            break
        assert answer is not None
        if answer.get("mappable") is False or answer.get("rule") is None:
            reason = f"the model says the shape is not a payment event: {str(answer.get('reason') or '')[:500]}"
            _record_call(conn, result.run_id, shape, kind, res.attempt, model, phash, res, "not_payment", reason)
            sr.errors.append(reason)
            break
        rule = {}
        try:
            rule = answer_to_rule(answer, shape)
            ev = validate_llm_rule(conn, rule, shape.shape_key, samples_text, ctx,
                                   min_coverage=settings.llm_min_coverage)
        except ValueError as e:
            ev = Evaluation([str(e)], {})
        except Exception as e:  # noqa: BLE001 - an answer that breaks the checks is an invalid answer
            log.debug("checking the answer for shape %s failed", shape.shape_key, exc_info=True)
            ev = Evaluation([f"the rule could not be checked: {type(e).__name__}: {str(e)[:300]}"], {})
        if not ev.errors:
            status = "active" if settings.llm_auto_activate else "proposed"
            figures = {**ev.figures, "samples": [s.lake_key for s in samples], "run_id": result.run_id,
                       "repaired": kind == "repair"}
            try:
                rules.upsert_rule(conn, rule, origin="llm", status=status, model=model, prompt_hash=phash,
                                     validation=figures)
            except (rules.MappingError, psycopg.Error) as e:
                ev = Evaluation([f"the rule could not be stored: {e}"], ev.figures)
            else:
                _record_call(conn, result.run_id, shape, kind, res.attempt, model, phash, res, "accepted",
                             mapping_id=rule["id"])
                _mark_shape(conn, shape, "mapped", model=model, phash=phash, mapping_id=rule["id"])
                sr.outcome, sr.mapping_id, sr.errors = status, rule["id"], []
                log.info("LLM rule %s %s for shape %s (%d rows)", rule["id"],
                         "activated" if status == "active" else "proposed", shape.shape_key, shape.rows)
                return sr
        _record_call(conn, result.run_id, shape, kind, res.attempt, model, phash, res, "invalid", "; ".join(ev.errors),
                     mapping_id=rule.get("id"))
        sr.errors = ev.errors
        if kind == "propose":
            messages = repair_messages(messages, res.content or "", ev.errors)
    sr.outcome = "unmappable"
    _mark_shape(conn, shape, "unmappable", model=model, phash=phash, error="; ".join(sr.errors))
    log.warning("shape %s is unmappable: %s", shape.shape_key, "; ".join(sr.errors)[:1000])
    return sr


# -- review -------------------------------------------------------------------------------------------


def preview_rule(conn: psycopg.Connection, rule: dict[str, Any], ctx: Context, *, shape_key: str | None = None,
                 limit: int = 3) -> list[dict[str, Any]]:
    """Sample rows the rule captures: {lake_key, before (redacted payload), after (canonical values
    as the build's own compiler makes them)}, rows of ``shape_key`` first."""
    code = ctx.compile(rule, shape_key or "")
    q = sql.SQL("select p.*, l.payload::text as payload_text from ({}) as p join {} as l on l.lake_key = p.lake_key "
                "order by (p.shape_key = {}) desc, l.load_seq desc limit {}").format(
        sql.SQL(code), sql.SQL(LANDING), sql.Literal(shape_key), sql.Literal(limit))
    out = []
    with conn.cursor(row_factory=dict_row) as cur:
        for r in cur.execute(q).fetchall():
            out.append({
                "lake_key": r["lake_key"],
                "before": redact.redact(loads_exact(r["payload_text"])),
                "after": {"provider": r["provider"], "transaction_id": r["transaction_id"], "status": r["status"],
                          "provider_status_raw": r["provider_status_raw"], "event_type": r["event_type"],
                          "amount": None if r["amount"] is None else str(r["amount"]), "amount_raw": r["amount_raw"],
                          "amount_withheld_reason": r["amount_withheld_reason"], "currency": r["currency"],
                          "event_at": None if r["event_at_parsed"] is None else r["event_at_parsed"].isoformat(),
                          "invalid_reason": r["invalid_reason"]},
            })
    return out


def review(conn: psycopg.Connection, settings: Settings, *, limit: int = 3) -> list[dict[str, Any]]:
    """Proposed rules (newest first) with their validation figures and sample before/after rows."""
    rules.ensure_schema(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("select id, origin, model, prompt_hash, rule, validation, updated_at from paynorm.mappings "
                           "where status = 'proposed' order by updated_at desc, id").fetchall()
    ctx = Context(settings.warehouse_dsn, Path(settings.home),
               Path(settings.dbt_project_dir) if settings.dbt_project_dir else None)
    out = []
    for r in rows:
        shape = (r["validation"] or {}).get("shape_key")
        try:
            with conn.transaction():
                samples = preview_rule(conn, r["rule"], ctx, shape_key=shape, limit=limit)
        except (psycopg.Error, TransformError) as e:
            samples = [{"error": str(e)}]
        out.append({**r, "shape_key": shape, "samples": samples})
    return out


def render_review(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no proposed rule waits for review"
    lines = []
    for it in items:
        v = it.get("validation") or {}
        lines.append(f"== {it['id']} (origin {it['origin']}, model {it['model'] or '-'}, "
                     f"prompt {it['prompt_hash'] or '-'})")
        lines.append(f"   {it['rule'].get('description', '')}")
        lines.append(f"   shape {it.get('shape_key') or '-'}: {v.get('rows', '?')} row(s), status coverage "
                     f"{v.get('status_coverage', '?')}, "
                     f"amounts ok {v.get('amount_ok', '?')}/{v.get('amount_rows', '?')}, "
                     f"currencies ok {v.get('currency_ok', '?')}/{v.get('currency_rows', '?')}")
        lines.append("   rule: " + json.dumps({k: it["rule"][k] for k in ("match", "provider", "fields")
                                               if k in it["rule"]}, ensure_ascii=False))
        for s in it["samples"]:
            if "error" in s:
                lines.append(f"   preview failed: {s['error']}")
                continue
            lines.append(f"   - {s['lake_key']}")
            lines.append("     before: " + redact.redact_text(dumps_exact(s["before"]), max_len=400))
            lines.append("     after:  " + json.dumps(s["after"], ensure_ascii=False))
        lines.append(f"   paynorm mappings approve {it['id']}  |  paynorm mappings reject {it['id']}  |  "
                     f"paynorm mappings export {it['id']}")
    return "\n".join(lines)


def approve(conn: psycopg.Connection, rule_id: str) -> None:
    """Activate a proposed rule (the next dbt build normalizes its rows)."""
    row = rules.get_rule(conn, rule_id)
    if row is None:
        raise rules.MappingError(f"no rule {rule_id!r}")
    rules.set_status(conn, rule_id, "active")


def reject(conn: psycopg.Connection, rule_id: str) -> None:
    """Reject a rule; an LLM shape it was proposed for is marked failed (quarantine no_rule) and is
    asked about again only with ``paynorm llm --retry-unmappable`` or a new model / prompt."""
    rules.set_status(conn, rule_id, "rejected")
    with conn.transaction():
        conn.execute("update paynorm.llm_shapes set status = 'failed', last_error = %s, tried_at = now() "
                     "where mapping_id = %s", (f"rule {rule_id} rejected in review", rule_id))


def export_yaml(conn: psycopg.Connection, rule_id: str) -> str:
    """The rule as YAML ready to commit as mappings/<id>.yml (with a provenance comment)."""
    row = rules.get_rule(conn, rule_id)
    if row is None:
        raise rules.MappingError(f"no rule {rule_id!r}")
    rule = {k: v for k, v in row["rule"].items() if k != "status"}
    v = row.get("validation") or {}
    head = [f"# mappings/{rule_id}.yml — exported by `paynorm mappings export {rule_id}`"]
    if row["origin"] == "llm":
        head.append(f"# proposed by {row['model']} (prompt {row['prompt_hash']}) for shape {v.get('shape_key')}; "
                    f"validated on {v.get('rows')} row(s)")
    head.append("# add a fixture mappings/fixtures/<id>__<case>.json before committing (see mappings/README.md)")
    return "\n".join(head) + "\n" + rules.rule_to_yaml(rule)
