"""The LLM step's input: the shapes whose rows the build could not place (normalization_pending,
and shapes quarantined after an earlier try), a few redacted samples of each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..jsonutil import dumps_exact, loads_exact
from . import redact

__all__ = ["Context", "Shape", "Sample", "LANDING", "unmatched_shapes", "waiting_shapes", "shape_rows",
           "pick_samples", "redacted_samples", "MAX_SAMPLES_CHARS"]

LANDING = "raw.lake_transactions"
#: The lake row's full image of a landing row ``l`` (the landing keeps the payload column apart).
ROW_IMAGE = "raw.row_image(l.row_data, l.payload_key, l.payload)"
PAYLOAD_KEYS = ("data", "transaction_data", "payload")  # lake row columns that hold the payload
_STATUS_KEY_RE = re.compile(
    r"(^|[_@-])(status|state|result|outcome|decision|result_?code|response_?code|reason_?code|"
    r"return_?code|resp_?code|code|approved|success|successful|event_?code|event_?type|type|kind)$", re.I)


def _relation(ctx: "Context", model: str) -> sql.Composable:
    """A model's relation, named by the dbt manifest (never hard-coded here)."""
    from .. import transform

    return sql.Identifier(*transform.relation_name(ctx.dsn, model, home=ctx.home, project_dir=ctx.project_dir))


@dataclass
class Context:
    """Where the warehouse's dbt project lives, for relation names and the rule compiler."""

    dsn: str
    home: Path
    project_dir: Path | None = None

    def compile(self, rule: dict[str, Any], shape_key: str) -> str:
        """The SQL the build's own macros make of ``rule`` (paynorm_rule_preview) for ``shape_key``."""
        from consumer.rules import authoring

        return authoring.preview_sql(self.dsn, rule, shape_key=shape_key, home=self.home,
                                     project_dir=self.project_dir)


LIVE = sql.SQL("not l.deleted and l.decode_error is null and l.payload is not null "
               "and l.payload_format <> 'empty' and l.shape_key is not null")


# -- finding the shapes that wait --------------------------------------------------------------------


@dataclass
class Shape:
    shape_key: str
    payload_format: str
    rows: int
    llm_status: str | None = None  # paynorm.llm_shapes status when tried before (retry)


def unmatched_shapes(conn: psycopg.Connection, ctx: Context, *, tried: bool = False) -> list[Shape]:
    """Shapes whose rows no active rule matches, from the build's own outcome: the rows of
    `normalization_pending` (and, with ``tried``, those quarantined after the LLM step tried their
    shape), biggest first."""
    parts = [sql.SQL("select shape_key, source_format from {} ").format(_relation(ctx, "normalization_pending"))]
    if tried:
        parts.append(sql.SQL("select shape_key, source_format from {} where reason in ('no_rule', 'llm_unmappable')"
                             ).format(_relation(ctx, "normalization_quarantine")))
    q = sql.SQL("select shape_key, min(source_format), count(*) from ({}) as u where shape_key is not null "
                "group by shape_key order by count(*) desc, shape_key").format(sql.SQL(" union all ").join(parts))
    return [Shape(k, f, n) for k, f, n in conn.execute(q).fetchall()]


def shape_rows(conn: psycopg.Connection, ctx: Context, shape_key: str) -> list[str]:
    """Lake keys of the rows of a shape that no active rule matches (the LLM step's input)."""
    q = sql.SQL("select lake_key from {} where shape_key = {} union "
                "select lake_key from {} where shape_key = {} and reason in ('no_rule', 'llm_unmappable')").format(
        _relation(ctx, "normalization_pending"), sql.Literal(shape_key),
        _relation(ctx, "normalization_quarantine"), sql.Literal(shape_key))
    return [r[0] for r in conn.execute(q).fetchall()]


def waiting_shapes(conn: psycopg.Connection, ctx: Context, *, model: str, phash: str,
                   retry_unmappable: bool = False) -> tuple[list[Shape], list[Shape]]:
    """(shapes to ask about, shapes already tried and left as they are)."""
    tried = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "select shape_key, status, model, prompt_hash from paynorm.llm_shapes").fetchall()}
    todo, done = [], []
    for s in unmatched_shapes(conn, ctx, tried=True):
        t = tried.get(s.shape_key)
        if t is None:
            todo.append(s)
            continue
        s.llm_status = t[0]
        changed = (t[1] is not None and t[1] != model) or (t[2] is not None and t[2] != phash)
        if t[0] in ("unmappable", "failed") and (retry_unmappable or changed):
            todo.append(s)
        else:
            done.append(s)
    return todo, done


# -- samples -----------------------------------------------------------------------------------------


def _status_like_paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                out += _status_like_paths(v, (*prefix, str(k)))
            elif not isinstance(v, list) and _STATUS_KEY_RE.search(re.sub(r"(?<=[a-z])(?=[A-Z])", "_", str(k))):
                out.append((*prefix, str(k)))
    return out[:8]


@dataclass
class Sample:
    lake_key: str
    payload: Any
    row: dict[str, Any]


def pick_samples(conn: psycopg.Connection, shape_key: str, n: int, keys: list[str] | None = None) -> list[Sample]:
    """Up to ``n`` rows of the shape (of ``keys``, the rows no rule matches, when given): one per
    distinct combination of status-like values first (most frequent first), then the most recent."""
    only = sql.SQL("l.lake_key = any({}::text[])").format(sql.Literal(keys)) if keys is not None else sql.SQL("true")
    base = sql.SQL("from {} as l where l.shape_key = {} and {} and {}").format(
        sql.SQL(LANDING), sql.Literal(shape_key), LIVE, only)
    first = conn.execute(sql.SQL("select l.payload::text ") + base + sql.SQL(" limit 1")).fetchone()
    if first is None:
        return []
    paths = _status_like_paths(loads_exact(first[0]))
    sig = (sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(
        sql.SQL("l.payload #> {}::text[]").format(sql.Literal(list(p))) for p in paths)) if paths
           else sql.SQL("'[]'::jsonb"))
    keys = [r[0] for r in conn.execute(
        sql.SQL("select (array_agg(l.lake_key order by l.load_seq desc))[1] ") + base
        + sql.SQL(" group by {} order by count(*) desc, 1 limit {}").format(sig, sql.Literal(n))).fetchall()]
    if len(keys) < n:
        keys += [r[0] for r in conn.execute(
            sql.SQL("select l.lake_key ") + base + sql.SQL(" and not (l.lake_key = any({}::text[])) "
                                                           "order by l.load_seq desc limit {}").format(
                sql.Literal(keys), sql.Literal(n - len(keys)))).fetchall()]
    rows = conn.execute(sql.SQL("select l.lake_key, l.payload::text, {}::text from {} as l "
                                "where l.lake_key = any({}::text[]) order by l.load_seq desc").format(
        sql.SQL(ROW_IMAGE), sql.SQL(LANDING), sql.Literal(keys))).fetchall()
    out = []
    for key, payload, row_data in rows:
        row = loads_exact(row_data) if row_data else {}
        row = {k: v for k, v in (row or {}).items() if k not in PAYLOAD_KEYS} if isinstance(row, dict) else {}
        out.append(Sample(key, loads_exact(payload), row))
    return out


def _trim_arrays(value: Any, keep: int = 3) -> Any:
    """Arrays cut to their first items: the shape is the same, the prompt much shorter."""
    if isinstance(value, dict):
        return {k: _trim_arrays(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_trim_arrays(v, keep) for v in value[:keep]]
    return value


MAX_SAMPLES_CHARS = 24000  # samples beyond this size are dropped (at least one is always sent)


def redacted_samples(samples: list[Sample]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    size = 0
    for s in samples:
        red = redact.redact_record(_trim_arrays({"payload": s.payload, "row": s.row}))
        size += len(dumps_exact(red))
        if out and size > MAX_SAMPLES_CHARS:
            break
        out.append(red)
    return out
