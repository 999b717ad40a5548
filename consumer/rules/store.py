"""The rules table, paynorm.mappings: schema, upserts, the built-in rules' sync, review states, the
ruleset hash. Every function takes an open psycopg connection; nothing here opens one."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg

from .files import DEFAULT_DIR, rule_paths
from .model import ORIGINS, RULE_STATUSES, MappingError, Rule, document, parse_rule, rule_hash
from .validate import validate_files, validate_rule

__all__ = ["SyncResult", "ensure_schema", "upsert_rule", "sync", "list_rules", "get_rule", "set_status",
           "active_ruleset_hash"]

log = logging.getLogger(__name__)


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


def ddl() -> str:
    return files("consumer.sql").joinpath("mappings.sql").read_text()


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create paynorm.mappings, paynorm.llm_shapes and the helper functions (idempotent)."""
    with conn.transaction():
        conn.execute(ddl())


def _provider_const(rule: dict[str, Any]) -> str | None:
    prov = rule.get("provider")
    return prov.get("const") if isinstance(prov, dict) else None


def upsert_rule(conn: psycopg.Connection, rule: "Rule | dict[str, Any]", *, origin: str = "builtin",
                status: str | None = None, source_file: str | None = None, model: str | None = None,
                prompt_hash: str | None = None, validation: dict[str, Any] | None = None,
                check: bool = True) -> str:
    """Insert or update one rule; returns 'inserted' | 'updated' | 'unchanged'.

    Raises MappingError (with every reason) when the rule is invalid and ``check`` is true.
    ``status`` defaults to the rule's own ``status`` key, else 'active'.
    """
    rule = document(rule)
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
    stored = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "select id, rule_hash, status, origin from paynorm.mappings").fetchall()}
    parsed = _parse_files(directory)
    stored_as_filed = all(rule is not None and rule.get("id") == p.stem
                          and stored.get(rule["id"]) == _stored_form(rule) for p, rule in parsed.items())
    # Nothing to write when every file is stored exactly as it is: those rules were validated when
    # they were written, so the validation (most of a sync's time, at every transform) is skipped.
    problems = {} if stored_as_filed else validate_files(directory, conn, require_fixtures=False)
    ids: set[str] = set()
    for p, rule in parsed.items():
        if p.name in problems:
            result.refused[p.stem] = problems[p.name]
            continue
        assert rule is not None  # a file that does not parse is among the problems
        ids.add(rule["id"])
        if stored.get(rule["id"]) == _stored_form(rule):
            result.unchanged.append(rule["id"])  # nothing to write (one read for all, not one per rule)
            continue
        try:
            base = Path(DEFAULT_DIR).parent
            rel = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
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


def _parse_files(directory: str | Path) -> dict[Path, dict[str, Any] | None]:
    """Every rule file of ``directory`` parsed (None: not parseable; validate_files says why)."""
    out: dict[Path, dict[str, Any] | None] = {}
    for p in rule_paths(directory):
        try:
            out[p] = parse_rule(p.read_text(), name=p.name)
        except MappingError:
            out[p] = None
    return out


def _stored_form(rule: dict[str, Any]) -> tuple[str, str, str]:
    """(rule_hash, status, origin) as paynorm.mappings holds a built-in rule synced from its file."""
    return rule_hash(rule), rule.get("status") or "active", "builtin"


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

