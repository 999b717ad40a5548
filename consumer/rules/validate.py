"""One validation for every rule, built-in, hand-written or proposed by the LLM step: the schema,
the money policy, what no rule may do, the SQL/JSON paths compiled in PostgreSQL, and that no rule
captures another rule's fixtures."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import psycopg

from .conventions import amount_conventions, canonical_values, convention_for, vocabulary_status
from .files import DEFAULT_DIR, FIXTURES_SUBDIR, fixture_row_image, load_fixtures, rule_paths
from .model import CANONICAL_RULE_FIELDS, MappingError, Rule, document, parse_rule

__all__ = ["SCHEMA_PATH", "load_schema", "schema_errors", "check_money", "check_semantics", "check_sql",
           "validate_rule", "fixture_overlaps", "validate_files", "collect_jsonpaths", "MAP_FIELDS"]

SCHEMA_PATH = DEFAULT_DIR / "schema.json"


def load_schema() -> dict[str, Any]:
    """mappings/schema.json (the rule format's JSON Schema)."""
    if not SCHEMA_PATH.exists():
        raise MappingError(f"rule schema not found: {SCHEMA_PATH}")
    return json.loads(SCHEMA_PATH.read_text())


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


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


def schema_errors(rule: dict[str, Any]) -> list[str]:
    """Problems against mappings/schema.json and the canonical field names (empty = well-formed)."""
    errors: list[str] = []
    fields = rule.get("fields") if isinstance(rule, dict) else None
    if isinstance(fields, dict):
        for name in fields:
            if name not in CANONICAL_RULE_FIELDS:
                errors.append(f"fields/{name}: not a canonical field a rule can set "
                              f"(allowed: {', '.join(CANONICAL_RULE_FIELDS)})")
    found = sorted(_validator().iter_errors(rule), key=lambda e: list(map(str, e.absolute_path)))
    for msg in _best_messages(found):
        if msg.startswith("fields: Additional properties") and any(e.startswith("fields/") for e in errors):
            continue  # already reported above, with the list of canonical fields
        errors.append(msg)
    return errors


def validate_rule(rule: "Rule | dict[str, Any]", conn: psycopg.Connection | None = None) -> list[str]:
    """Problems of one rule (empty list = valid).

    Without a connection: JSON Schema, canonical field names, enum values, the money policy
    (:func:`check_money`), what no rule may do (:func:`check_semantics`). With one, also: every
    jsonpath compiles in PostgreSQL, `match`/`when` are filter expressions, regexes compile.
    """
    doc = document(rule)
    errors = schema_errors(doc)
    if not errors:
        errors.extend(check_money(doc))
        errors.extend(check_semantics(doc))
    if conn is not None and not errors:
        errors.extend(check_sql(doc, conn))
    return errors


def check_sql(rule: dict[str, Any], conn: psycopg.Connection) -> list[str]:
    """Compile the rule's jsonpaths and regexes in PostgreSQL (inside savepoints: harmless)."""
    return check_sql_many([rule], conn).get(str(rule.get("id")), [])


def _check_one(conn: psycopg.Connection, where: str, text: str, kind: str) -> list[str]:
    try:
        with conn.transaction():
            if kind == "regex":
                conn.execute("select '' ~ %s", (text,))
                return []
            row = conn.execute("select jsonb_typeof(jsonb_path_query_first('{}'::jsonb, %s::jsonpath))",
                               (text,)).fetchone()
    except psycopg.Error as e:
        what = "regex" if kind == "regex" else "jsonpath"
        return [f"{where}: {what} {text!r} does not compile in PostgreSQL: {(e.diag.message_primary or str(e)).strip()}"]
    if kind == "predicate" and row and row[0] == "boolean":
        return [f"{where}: {text!r} is a boolean expression, which always exists; write a filter such as "
                f"'$ ? (<condition>)'"]
    return []


def check_sql_many(rules: list[dict[str, Any]], conn: psycopg.Connection) -> dict[str, list[str]]:
    """check_sql for many rules in one round trip when everything compiles (the usual case); a
    failure is then narrowed down path by path. Problems per rule id (only rules with problems)."""
    items: list[tuple[str, str, str, str]] = []  # (rule id, where, text, kind)
    for rule in rules:
        rid = str(rule.get("id"))
        items += [(rid, w, p, "predicate" if pred else "path") for w, p, pred in collect_jsonpaths(rule)]
        items += [(rid, w, rx, "regex") for w, rx in collect_regexes(rule)]
    if not items:
        return {}
    try:
        with conn.transaction():
            paths = [(i, t) for i, (_, _, t, k) in enumerate(items) if k != "regex"]
            types = dict(conn.execute(
                "select i, jsonb_typeof(jsonb_path_query_first('{}'::jsonb, p::jsonpath)) "
                "from unnest(%s::int[], %s::text[]) as t(i, p)",
                ([i for i, _ in paths], [t for _, t in paths])).fetchall())
            regexes = [t for _, _, t, k in items if k == "regex"]
            if regexes:
                conn.execute("select bool_or('' ~ r) from unnest(%s::text[]) as t(r)", (regexes,))
    except psycopg.Error:
        problems: dict[str, list[str]] = {}
        for rid, where, text, kind in items:
            errs = _check_one(conn, where, text, kind)
            if errs:
                problems.setdefault(rid, []).extend(errs)
        return problems
    problems = {}
    for i, (rid, where, text, kind) in enumerate(items):
        if kind == "predicate" and types.get(i) == "boolean":
            problems.setdefault(rid, []).append(
                f"{where}: {text!r} is a boolean expression, which always exists; write a filter such as "
                f"'$ ? (<condition>)'")
    return problems


def _fixture_payload(fixture: dict[str, Any]) -> tuple[str | None, str]:
    from ..decode import decode_payload

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
    for p in rule_paths(d):
        try:
            rule = parse_rule(p.read_text(), name=p.name)
        except MappingError as e:
            problems[p.name] = [str(e)]
            continue
        errs = validate_rule(rule)
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
        for rid, errs in check_sql_many([rule for _, rule in valid.values()], conn).items():
            problems.setdefault(valid[rid][0], []).extend(errs)
            valid.pop(rid)
    if conn is not None and valid:
        overlaps = fixture_overlaps([rule for _, rule in valid.values()], fixtures, conn)
        for rid, errs in overlaps.items():
            problems.setdefault(valid[rid][0], []).extend(errs)
    return problems
