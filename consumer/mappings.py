"""Mapping rules: load ``mappings/*.yml``, validate them, sync them into ``paynorm.mappings``.

A rule (format in ``mappings/README.md``, JSON Schema in ``mappings/schema.json``) says how one
payload shape becomes one canonical payment event. dbt macros compile the ACTIVE rules of
``paynorm.mappings`` into SQL; this module is the only writer of that table besides the LLM step,
which should call :func:`validate_rule` and :func:`upsert_rule`.

Every function that needs the database takes an open psycopg connection; nothing here opens one.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import psycopg
import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "mappings"
SCHEMA_PATH = DEFAULT_DIR / "schema.json"
CONVENTIONS_PATH = REPO_ROOT / "seeds" / "provider_amount_conventions.csv"
FIXTURES_SUBDIR = "fixtures"

CANONICAL_RULE_FIELDS = (
    "transaction_id", "merchant_id", "merchant_name", "merchant_country", "event_type", "status",
    "provider_status_raw", "decline_category", "response_code_raw", "error_message", "amount",
    "currency", "payment_method", "card_network", "issuer_country", "latency_ms", "event_at", "is_test",
)
STATUSES = ("approved", "declined", "error", "pending", "cancelled", "expired")
EVENT_TYPES = ("authorization", "capture", "sale", "refund", "void", "chargeback", "verification", "unknown")
DECLINE_CATEGORIES = (
    "insufficient_funds", "do_not_honor", "fraud_suspected", "lost_stolen_card", "expired_card",
    "invalid_card_data", "authentication_failed", "not_permitted", "limit_exceeded", "issuer_unavailable",
    "processor_error", "merchant_config_error", "other",
)
ORIGINS = ("builtin", "llm", "user")
RULE_STATUSES = ("active", "proposed", "rejected")


class MappingError(ValueError):
    """A rule file cannot be read or a rule is invalid; the message says why."""


@dataclass
class RuleFile:
    path: Path | None
    rule: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.rule.get("id", ""))


@dataclass
class SyncResult:
    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary(self) -> str:
        parts = [f"{len(self.inserted)} inserted", f"{len(self.updated)} updated",
                 f"{len(self.unchanged)} unchanged"]
        if self.deactivated:
            parts.append(f"{len(self.deactivated)} deactivated")
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        return ", ".join(parts)


# -- reading ------------------------------------------------------------------------------------------


def _normalize(rule: Any, where: str = "") -> Any:
    """YAML quirks: map keys that YAML typed as numbers become text; boolean keys are refused."""
    if isinstance(rule, dict):
        out: dict[str, Any] = {}
        for k, v in rule.items():
            if isinstance(k, bool):
                raise MappingError(f"{where}: key {k!r} was read by YAML as a boolean (yes/no/on/off/true/false); "
                                   f"quote it")
            if isinstance(k, (int, float)):
                k = str(k)
            if k is None:
                raise MappingError(f"{where}: a null key (~ or empty); quote it")
            out[str(k)] = _normalize(v, f"{where}.{k}" if where else str(k))
        return out
    if isinstance(rule, list):
        return [_normalize(v, f"{where}[{i}]") for i, v in enumerate(rule)]
    return rule


def parse_rule(text: str, *, name: str = "<rule>") -> dict[str, Any]:
    """Parse one YAML (or JSON) rule document into a dict with text map keys."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MappingError(f"{name}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise MappingError(f"{name}: a rule must be a mapping (YAML object)")
    return _normalize(doc, "")


def load_rule_files(directory: str | Path = DEFAULT_DIR) -> list[RuleFile]:
    """Every ``*.yml``/``*.yaml`` rule of ``directory`` (sorted by file name)."""
    d = Path(directory)
    if not d.is_dir():
        raise MappingError(f"mappings directory not found: {d}")
    files = sorted([*d.glob("*.yml"), *d.glob("*.yaml")])
    return [RuleFile(p, parse_rule(p.read_text(), name=str(p))) for p in files]


def rule_hash(rule: dict[str, Any]) -> str:
    """Stable hash of a rule's content (canonical JSON: sorted keys, no whitespace)."""
    canon = json.dumps(rule, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.md5(canon.encode()).hexdigest()


def rule_to_yaml(rule: dict[str, Any]) -> str:
    """A rule as YAML (for export of LLM rules into mappings/)."""
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, width=120)


# -- validation ---------------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    """mappings/schema.json (the rule format's JSON Schema)."""
    if not SCHEMA_PATH.exists():
        raise MappingError(f"rule schema not found: {SCHEMA_PATH} (run from a paynorm source checkout)")
    return json.loads(SCHEMA_PATH.read_text())


_VALIDATOR: jsonschema.Draft202012Validator | None = None


def _validator() -> jsonschema.Draft202012Validator:
    global _VALIDATOR
    if _VALIDATOR is None:
        _VALIDATOR = jsonschema.Draft202012Validator(load_schema())
    return _VALIDATOR


def _path_of(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(rule)"


def _best_messages(errors: Iterable[jsonschema.ValidationError]) -> list[str]:
    out = []
    for err in errors:
        # oneOf/anyOf errors are unreadable: report the most specific sub-error instead.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        if best.context:
            best = jsonschema.exceptions.best_match(best.context)
        msg = best.message
        if best.validator == "pattern" and str(_path_of(best)).split("/")[-1] in ("match", "when"):
            msg = (f"{best.instance!r} is not a SQL/JSON path filter expression; write '$ ? (<condition>)' "
                   "(a bare boolean expression always 'exists')")
        if best.validator == "oneOf" or err.validator == "oneOf":
            msg = (f"{msg if len(msg) < 200 else msg[:200] + '...'} "
                   "(a field takes exactly one of path, row_path, const — or cases with a default)")
        out.append(f"{_path_of(best)}: {msg}")
    return out


def collect_jsonpaths(rule: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(where, jsonpath, is_predicate) for every SQL/JSON path of a rule."""
    found: list[tuple[str, str, bool]] = []
    if isinstance(rule.get("match"), str):
        found.append(("match", rule["match"], True))
    if isinstance(rule.get("row_match"), str):
        found.append(("row_match", rule["row_match"], True))
    prov = rule.get("provider")
    if isinstance(prov, dict):
        for key in ("path", "row_path"):
            if isinstance(prov.get(key), str):
                found.append((f"provider.{key}", prov[key], False))
    for name, spec in (rule.get("fields") or {}).items():
        if not isinstance(spec, dict):
            continue
        for key in ("path", "row_path", "exponent_path"):
            if isinstance(spec.get(key), str):
                found.append((f"fields.{name}.{key}", spec[key], False))
        for i, case in enumerate(spec.get("cases") or []):
            if isinstance(case, dict) and isinstance(case.get("when"), str):
                found.append((f"fields.{name}.cases[{i}].when", case["when"], True))
    return found


def collect_regexes(rule: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"fields.{n}.regex", s["regex"]) for n, s in (rule.get("fields") or {}).items()
            if isinstance(s, dict) and isinstance(s.get("regex"), str)]


@dataclass(frozen=True)
class Convention:
    """How a provider (API family) writes amounts: seeds/provider_amount_conventions.csv."""

    unit: str
    source: str


@functools.lru_cache(maxsize=4)
def _read_conventions(path: str) -> dict[tuple[str, str], Convention]:
    out: dict[tuple[str, str], Convention] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["currency"] == "*":
                out[(row["provider"], row["api"])] = Convention(row["unit"], row["source"])
    return out


def amount_conventions(path: str | Path = CONVENTIONS_PATH) -> dict[tuple[str, str], Convention]:
    """(provider, api) -> default amount convention; api ``*`` covers every API family."""
    return _read_conventions(str(path))


def convention_for(provider: str, api: str | None = None) -> Convention | None:
    """The convention a rule for ``provider`` (and ``api``) must follow, or None if none is known."""
    conv = amount_conventions()
    return conv.get((provider, api or "*")) or conv.get((provider, "*"))


def check_money(rule: dict[str, Any]) -> list[str]:
    """The money-safety policy (mappings/README.md, "Money"): an amount is read under its
    provider's documented convention, currencies are read from the payload, never produced.

    A rule for a provider the seed does not know yet (an LLM proposal for a new PSP) may state its
    unit: the build withholds such amounts (``unit_unverified``) until the convention is added with
    its source, except major amounts written with a decimal point."""
    errors: list[str] = []
    fields = rule.get("fields") or {}
    prov = rule.get("provider") if isinstance(rule.get("provider"), dict) else {}
    const = prov.get("const")
    api = rule.get("api")
    if api is not None and const and (const, api) not in amount_conventions():
        errors.append(f"api: no convention for provider {const!r} API {api!r} in seeds/provider_amount_conventions.csv")
    amount = fields.get("amount")
    if isinstance(amount, dict) and amount.get("unit") in ("minor", "major"):
        unit = amount["unit"]
        if not const:
            if unit != "major":
                errors.append("fields.amount: a rule that does not fix its provider (provider.path/row_path) cannot "
                              "read minor units: whose exponent would it be? (only major amounts written with a "
                              "decimal point are read for such rules)")
        else:
            conv = convention_for(const, api)
            if conv is not None and conv.unit != unit:
                errors.append(f"fields.amount: unit {unit} contradicts {const}'s amount convention ({conv.unit}, "
                              f"seeds/provider_amount_conventions.csv: {conv.source})")
    currency = fields.get("currency")
    if isinstance(currency, dict) and any(k in currency for k in ("const", "map", "cases")):
        errors.append("fields.currency: a currency is read from the payload (path or row_path), never produced "
                      "by const, map or cases")
    return errors


# The only fields a rule may `map`, and only to their canonical values: a map can never rename a
# provider, change a currency or amount, or set an identifier (an LLM back door otherwise).
MAP_FIELDS = ("status", "event_type", "decline_category", "payment_method", "card_network")
# An is_test flag is read from a key that says it is a live/test flag; negate only on "live" flags.
_TEST_FLAG_KEY_RE = re.compile(
    r"(^|_)(live|livemode|live_mode|is_live|test|testmode|test_mode|is_test|test_request|testrequest|test_ipn|"
    r"sandbox|is_sandbox|environment|env|mode|production|prod)$")
_LIVE_FLAG_KEY_RE = re.compile(r"(^|_)(live|livemode|live_mode|is_live|production|prod)$")
SEEDS_DIR = REPO_ROOT / "seeds"


@functools.lru_cache(maxsize=4)
def _read_seed(name: str) -> tuple[dict[str, str], ...]:
    with open(SEEDS_DIR / f"{name}.csv", newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def vocabulary_status(token: str, provider: str | None = None) -> str | None:
    """The canonical status the status vocabulary seed gives ``token`` (provider rows first)."""
    t = str(token).strip().lower()
    found = {(r["provider"], r["token"].strip().lower()): r["status"] for r in _read_seed("status_vocabulary")}
    return found.get((provider or "", t)) or found.get(("*", t))


def canonical_values(field_name: str) -> set[str]:
    """The values a `map` of ``field_name`` may produce."""
    if field_name == "payment_method":
        return {r["payment_method"] for r in _read_seed("payment_methods")}
    if field_name == "card_network":
        return {r["card_network"] for r in _read_seed("card_networks")}
    return set({"status": STATUSES, "event_type": EVENT_TYPES, "decline_category": DECLINE_CATEGORIES}[field_name])


def _last_key(path: str) -> str:
    words = re.findall(r"[A-Za-z0-9_\-]+", path)
    if not words:
        return ""
    k = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", words[-1])
    return re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_")


def check_semantics(rule: dict[str, Any]) -> list[str]:
    """What no rule may do, built-in or proposed: a map that produces anything but canonical values
    of an enum field; a status map that reads a refusal or failure of the vocabulary (any supported
    language) as approved, or an approval as declined/error; an is_test flag read from a key that is
    not a live/test flag."""
    errors: list[str] = []
    fields = rule.get("fields") if isinstance(rule.get("fields"), dict) else {}
    prov = rule.get("provider") if isinstance(rule.get("provider"), dict) else {}
    for name, spec in fields.items():
        if not isinstance(spec, dict):
            continue
        m = spec.get("map")
        if m and name not in MAP_FIELDS:
            errors.append(f"fields.{name}: a map may only produce canonical values of {', '.join(MAP_FIELDS)}; it "
                          f"can never rename a provider, change a currency or amount, or set an identifier: "
                          f"point the path at the value itself")
        elif isinstance(m, dict) and name in ("payment_method", "card_network"):
            bad = sorted({str(v) for v in m.values() if str(v) not in canonical_values(name)})
            if bad:
                errors.append(f"fields.{name}.map: {', '.join(map(repr, bad))} are not canonical {name} values")
        if name == "is_test" and (spec.get("path") or spec.get("row_path")):
            path = str(spec.get("path") or spec.get("row_path"))
            key = _last_key(path)
            if not _TEST_FLAG_KEY_RE.search(key):
                errors.append(f"fields.is_test: {path!r} is not a live/test flag (livemode, live, test, sandbox, "
                              f"environment...); events may only be marked as tests from such a flag")
            elif spec.get("negate") and not _LIVE_FLAG_KEY_RE.search(key):
                errors.append(f"fields.is_test: negate is only for flags that say 'live' (livemode, live, "
                              f"production); {path!r} is not one")
    status = fields.get("status")
    if isinstance(status, dict) and isinstance(status.get("map"), dict):
        for raw, value in status["map"].items():
            seed = vocabulary_status(str(raw), prov.get("const"))
            if seed is not None and ((seed in ("declined", "error") and value == "approved")
                                     or (seed == "approved" and value in ("declined", "error"))):
                errors.append(f"fields.status.map: {str(raw)!r} -> {value!r} contradicts the status vocabulary "
                              f"({str(raw)!r} is {seed})")
    return errors


def validate_rule(rule: dict[str, Any], conn: psycopg.Connection | None = None) -> list[str]:
    """Problems of one rule (empty list = valid).

    Without a connection: JSON Schema, canonical field names, enum values, the money policy
    (:func:`check_money`), what no rule may do (:func:`check_semantics`). With one, also: every jsonpath compiles in PostgreSQL, `match`/`when`
    are filter expressions, regexes compile.
    """
    errors: list[str] = []
    fields = rule.get("fields")
    if isinstance(fields, dict):
        for name in fields:
            if name not in CANONICAL_RULE_FIELDS:
                errors.append(f"fields/{name}: not a canonical field a rule can set "
                              f"(allowed: {', '.join(CANONICAL_RULE_FIELDS)})")
    schema_errors = sorted(_validator().iter_errors(rule), key=lambda e: list(map(str, e.absolute_path)))
    for msg in _best_messages(schema_errors):
        if msg.startswith("fields: Additional properties") and any(e.startswith("fields/") for e in errors):
            continue  # already reported above, with the list of canonical fields
        errors.append(msg)
    if not errors:
        errors.extend(check_money(rule))
        errors.extend(check_semantics(rule))
    if conn is not None and not errors:
        errors.extend(check_sql(rule, conn))
    return errors


def check_sql(rule: dict[str, Any], conn: psycopg.Connection) -> list[str]:
    """Compile the rule's jsonpaths and regexes in PostgreSQL (inside savepoints: harmless)."""
    errors: list[str] = []
    for where, path, is_predicate in collect_jsonpaths(rule):
        try:
            with conn.transaction():
                row = conn.execute("select jsonb_typeof(jsonb_path_query_first('{}'::jsonb, %s::jsonpath))",
                                   (path,)).fetchone()
        except psycopg.Error as e:
            errors.append(f"{where}: jsonpath {path!r} does not compile in PostgreSQL: "
                          f"{(e.diag.message_primary or str(e)).strip()}")
            continue
        if is_predicate and row and row[0] == "boolean":
            errors.append(f"{where}: {path!r} is a boolean expression, which always exists; "
                          f"write a filter such as '$ ? (<condition>)'")
    for where, rx in collect_regexes(rule):
        try:
            with conn.transaction():
                conn.execute("select '' ~ %s", (rx,))
        except psycopg.Error as e:
            errors.append(f"{where}: regex {rx!r} does not compile in PostgreSQL: "
                          f"{(e.diag.message_primary or str(e)).strip()}")
    return errors


def load_fixtures(directory: str | Path = DEFAULT_DIR) -> dict[str, dict[str, Any]]:
    """The rules' fixtures, ``<directory>/fixtures/<rule id>__<case>.json``, by file stem."""
    d = Path(directory) / FIXTURES_SUBDIR
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out[p.stem] = json.loads(p.read_text())
        except ValueError as e:
            raise MappingError(f"{p}: not JSON: {e}") from e
    return out


def fixture_row_image(name: str, fixture: dict[str, Any]) -> dict[str, Any]:
    """The lake row image (``row_data``) a fixture lands as: its row, with the payload under its key."""
    return {"id": name, fixture.get("payload_key", "data"): fixture.get("raw"), **(fixture.get("row") or {})}


def _fixture_payload(fixture: dict[str, Any]) -> tuple[str | None, str]:
    from .decode import decode_payload

    dec = decode_payload(json.dumps(fixture.get("raw")), is_json=True)
    return (dec.payload if dec.decode_error is None else None), dec.payload_format


def fixture_overlaps(rules: list[dict[str, Any]], fixtures: dict[str, dict[str, Any]],
                     conn: psycopg.Connection) -> dict[str, list[str]]:
    """Problems per rule id: a rule whose ``match`` captures a fixture of another rule (or one that
    expects no rule) without a lower priority saying it yields. Evaluated in PostgreSQL with the
    same ``jsonb_path_exists`` the models use, on the decoded fixtures."""
    by_id = {str(r["id"]): r for r in rules}
    names, payloads, fmts, row_images = [], [], [], []
    for name, fx in fixtures.items():
        payload, fmt = _fixture_payload(fx)
        if payload is not None:
            names.append(name)
            payloads.append(payload)
            fmts.append(fmt)
            row_images.append(json.dumps(fixture_row_image(name, fx)))
    if not names or not by_id:
        return {}
    ids = list(by_id)
    rows = conn.execute(
        """
        select f.name, r.id
        from unnest(%s::text[], %s::jsonb[], %s::text[], %s::jsonb[]) as f(name, payload, fmt, row_data)
        cross join unnest(%s::text[], %s::text[], %s::text[], %s::text[]) as r(id, match, formats, row_match)
        where f.fmt = any(string_to_array(r.formats, ','))
          and jsonb_path_exists(f.payload, r.match::jsonpath, '{}'::jsonb, true)
          and (r.row_match is null or jsonb_path_exists(f.row_data, r.row_match::jsonpath, '{}'::jsonb, true))
        """,
        (names, payloads, fmts, row_images, ids, [str(by_id[i]["match"]) for i in ids],
         [",".join(by_id[i].get("formats") or []) for i in ids], [by_id[i].get("row_match") for i in ids]),
    ).fetchall()
    found: dict[tuple[str, str | None], list[str]] = {}
    for name, rid in sorted(rows):
        own = (fixtures[name].get("expected") or {}).get("mapping_id")
        if own == rid or (own is not None and own not in by_id):
            continue  # its own fixture, or a fixture of a rule outside this set (checked with its own)
        if own is not None and int(by_id[rid].get("priority", 100)) < int(by_id[own].get("priority", 100)):
            continue  # explicit intent: this rule yields to the fixture's own rule
        found.setdefault((rid, own), []).append(name)
    problems: dict[str, list[str]] = {}
    for (rid, own), names_hit in found.items():
        shown = ", ".join(names_hit[:3]) + (f" and {len(names_hit) - 3} more" if len(names_hit) > 3 else "")
        if own is None:
            msg = f"captures fixture(s) that expect no rule to match them: {shown}"
        else:
            prio, own_prio = int(by_id[rid].get("priority", 100)), int(by_id[own].get("priority", 100))
            msg = (f"captures {len(names_hit)} fixture(s) of rule {own} ({shown}) at priority {prio} vs {own_prio}: "
                   f"exclude that shape in `match`, or give this rule a lower priority than {own} if it is meant "
                   f"to yield")
        problems.setdefault(rid, []).append(msg)
    return problems


def validate_files(directory: str | Path = DEFAULT_DIR, conn: psycopg.Connection | None = None, *,
                   require_fixtures: bool = True) -> dict[str, list[str]]:
    """Problems per rule file of ``directory`` (key: file name); only files with problems appear.

    Besides :func:`validate_rule` per file: ids unique and equal to the file name, every rule has a
    fixture in ``<directory>/fixtures/`` (``require_fixtures``: `mappings validate` reports it,
    `sync` does not refuse a rule for it), and (with a connection) no rule captures another rule's
    fixtures (:func:`fixture_overlaps`).
    """
    problems: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    valid: dict[str, tuple[str, dict[str, Any]]] = {}
    d = Path(directory)
    fixtures = load_fixtures(d)
    with_fixture = {str((fx.get("expected") or {}).get("mapping_id")) for fx in fixtures.values()}
    with_fixture |= {name.partition("__")[0] for name in fixtures}
    for p in sorted([*d.glob("*.yml"), *d.glob("*.yaml")]):
        try:
            rule = parse_rule(p.read_text(), name=p.name)
        except MappingError as e:
            problems[p.name] = [str(e)]
            continue
        errs = validate_rule(rule, conn)
        rid = str(rule.get("id", ""))
        if rid and rid != p.stem:
            errs.append(f"id {rid!r} differs from the file name {p.stem!r}")
        if rid in seen:
            errs.append(f"duplicate id {rid!r} (also in {seen[rid]})")
        if require_fixtures and rid and rid not in with_fixture:
            errs.append(f"no fixture: add {FIXTURES_SUBDIR}/{rid}__<case>.json (mappings/README.md, Fixtures)")
        seen.setdefault(rid, p.name)
        if errs:
            problems[p.name] = errs
        else:
            valid[rid] = (p.name, rule)
    if conn is not None and valid:
        overlaps = fixture_overlaps([rule for _, rule in valid.values()], fixtures, conn)
        for rid, errs in overlaps.items():
            problems.setdefault(valid[rid][0], []).extend(errs)
    return problems


# -- database -----------------------------------------------------------------------------------------


def ddl() -> str:
    return (REPO_ROOT / "consumer" / "sql" / "mappings.sql").read_text()


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create paynorm.mappings, paynorm.llm_shapes and the helper functions (idempotent)."""
    with conn.transaction():
        conn.execute(ddl())


def _provider_const(rule: dict[str, Any]) -> str | None:
    prov = rule.get("provider")
    return prov.get("const") if isinstance(prov, dict) else None


def upsert_rule(conn: psycopg.Connection, rule: dict[str, Any], *, origin: str = "builtin",
                status: str | None = None, source_file: str | None = None, model: str | None = None,
                prompt_hash: str | None = None, validation: dict[str, Any] | None = None,
                check: bool = True) -> str:
    """Insert or update one rule; returns 'inserted' | 'updated' | 'unchanged'.

    Raises MappingError (with every reason) when the rule is invalid and ``check`` is true.
    ``status`` defaults to the rule's own ``status`` key, else 'active'.
    """
    if origin not in ORIGINS:
        raise MappingError(f"origin must be one of {ORIGINS}")
    if check:
        errs = validate_rule(rule, conn)
        if errs:
            raise MappingError(f"rule {rule.get('id')!r} refused: " + "; ".join(errs))
    status = status or rule.get("status") or "active"
    if status not in RULE_STATUSES:
        raise MappingError(f"status must be one of {RULE_STATUSES}")
    h = rule_hash(rule)
    with conn.transaction():
        cur = conn.execute("select rule_hash, status, origin from paynorm.mappings where id = %s for update",
                           (rule["id"],)).fetchone()
        if cur and cur[0] == h and cur[1] == status and cur[2] == origin:
            return "unchanged"
        conn.execute(
            """
            insert into paynorm.mappings (id, description, provider, formats, match, priority, status, origin,
                                          rule, rule_hash, source_file, model, prompt_hash, validation)
            values (%(id)s, %(description)s, %(provider)s, %(formats)s, %(match)s, %(priority)s, %(status)s,
                    %(origin)s, %(rule)s::jsonb, %(hash)s, %(source_file)s, %(model)s, %(prompt_hash)s,
                    %(validation)s::jsonb)
            on conflict (id) do update set
                description = excluded.description, provider = excluded.provider, formats = excluded.formats,
                match = excluded.match, priority = excluded.priority, status = excluded.status,
                origin = excluded.origin, rule = excluded.rule, rule_hash = excluded.rule_hash,
                source_file = coalesce(excluded.source_file, paynorm.mappings.source_file),
                model = excluded.model, prompt_hash = excluded.prompt_hash,
                validation = excluded.validation, updated_at = now()
            """,
            {
                "id": rule["id"], "description": str(rule.get("description", "")).strip(),
                "provider": _provider_const(rule), "formats": list(rule.get("formats") or []),
                "match": rule["match"], "priority": int(rule.get("priority", 100)), "status": status,
                "origin": origin, "rule": json.dumps(rule), "hash": h, "source_file": source_file,
                "model": model, "prompt_hash": prompt_hash,
                "validation": json.dumps(validation) if validation is not None else None,
            },
        )
    return "updated" if cur else "inserted"


def sync(conn: psycopg.Connection, directory: str | Path = DEFAULT_DIR, *, prune: bool = False) -> SyncResult:
    """Load every rule file of ``directory`` into paynorm.mappings (origin 'builtin').

    Invalid rules are refused (listed in ``result.refused`` with their reasons) and do not stop the
    others. ``prune``: builtin rules whose file disappeared are set to 'rejected'.
    """
    ensure_schema(conn)
    result = SyncResult()
    problems = validate_files(directory, conn, require_fixtures=False)
    ids: set[str] = set()
    for p in sorted([*Path(directory).glob("*.yml"), *Path(directory).glob("*.yaml")]):
        if p.name in problems:
            result.refused[p.stem] = problems[p.name]
            continue
        rule = parse_rule(p.read_text(), name=p.name)
        ids.add(rule["id"])
        try:
            rel = str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)
            outcome = upsert_rule(conn, rule, origin="builtin", source_file=rel, check=False)
        except (MappingError, psycopg.Error) as e:
            result.refused[rule["id"]] = [str(e)]
            continue
        getattr(result, outcome).append(rule["id"])
    if prune:
        with conn.transaction():
            rows = conn.execute(
                "update paynorm.mappings set status = 'rejected', updated_at = now() "
                "where origin = 'builtin' and status <> 'rejected' and not (id = any(%s)) returning id",
                (sorted(ids),),
            ).fetchall()
        result.deactivated = [r[0] for r in rows]
    for rid, errs in result.refused.items():
        log.warning("mapping rule %s refused: %s", rid, "; ".join(errs))
    log.info("mappings sync: %s", result.summary())
    return result


def list_rules(conn: psycopg.Connection, *, status: str | None = None,
               origin: str | None = None) -> list[dict[str, Any]]:
    """Rules of paynorm.mappings in match order (priority desc, id), without the full rule body."""
    q = ("select id, provider, formats, priority, status, origin, rule_hash, description, updated_at "
         "from paynorm.mappings where (%(s)s::text is null or status = %(s)s) "
         "and (%(o)s::text is null or origin = %(o)s) order by priority desc, id")
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return list(cur.execute(q, {"s": status, "o": origin}).fetchall())


def get_rule(conn: psycopg.Connection, rule_id: str) -> dict[str, Any] | None:
    """One rule row (including ``rule``, the full document) or None."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("select * from paynorm.mappings where id = %s", (rule_id,)).fetchone()


def set_status(conn: psycopg.Connection, rule_id: str, status: str) -> None:
    """Activate / propose / reject a rule (e.g. `paynorm mappings review`)."""
    if status not in RULE_STATUSES:
        raise MappingError(f"status must be one of {RULE_STATUSES}")
    with conn.transaction():
        n = conn.execute("update paynorm.mappings set status = %s, updated_at = now() where id = %s",
                         (status, rule_id)).rowcount
    if n == 0:
        raise MappingError(f"no rule {rule_id!r}")


def active_ruleset_hash(conn: psycopg.Connection) -> str:
    """Hash of the active rule set (changes whenever a rule is added, edited, activated or removed):
    paynorm.active_ruleset_hash(), the same function the dbt models call."""
    row = conn.execute("select paynorm.active_ruleset_hash()").fetchone()
    return row[0]
