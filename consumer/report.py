"""The short summary `paynorm summary` (and `make demo`) prints: what the marts say, in a few tables.

It reads the analyst marts only (payment_kpis_daily, normalization_coverage), never the events or
the landing, so its numbers are the marts' numbers: a KPI is defined once, in dbt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

MARTS = "paynorm_marts"
#: The marts the summary reads (its dbt exposure, models/marts/_exposures.yml, names the same).
SUMMARY_MARTS = ("payment_kpis_daily", "normalization_coverage")


@dataclass(frozen=True)
class ProviderApproval:
    provider: str
    attempts: int
    approved: int
    declined: int
    approval_rate: Decimal | None  # sum(approved) / (sum(approved) + sum(declined)), unrounded


@dataclass(frozen=True)
class CurrencyVolume:
    provider: str
    currency: str | None  # None: the bucket of events without a currency (amounts withheld)
    approved: int
    approved_amount: Decimal | None
    approved_without_amount: int


@dataclass(frozen=True)
class Summary:
    outcomes: dict[str, int]  # event | quarantine | pending -> rows
    quarantine: list[tuple[str, int]]
    approval: list[ProviderApproval]
    volume: list[CurrencyVolume]


def _mart(name: str, schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def read_summary(conn: psycopg.Connection, schema: str = MARTS) -> Summary | None:
    """The summary's figures from the marts; None when they have not been built yet."""
    present = conn.execute(
        "select count(*) from pg_class as c join pg_namespace as n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relname = any(%s)",
        (schema, list(SUMMARY_MARTS))).fetchone()
    if present is None or present[0] < len(SUMMARY_MARTS):
        return None
    coverage = conn.execute(sql.SQL("select outcome, reason, rows from {} order by outcome, rows desc, reason")
                            .format(_mart("normalization_coverage", schema))).fetchall()
    outcomes = {"event": 0, "quarantine": 0, "pending": 0}
    for outcome, _reason, n in coverage:
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    kpis = _mart("payment_kpis_daily", schema)
    approval = [ProviderApproval(*r) for r in conn.execute(sql.SQL(
        "select provider, sum(attempts)::bigint, sum(approved)::bigint, sum(declined)::bigint,"
        " sum(approved)::numeric / nullif(sum(approved) + sum(declined), 0)"
        " from {} group by provider order by provider").format(kpis)).fetchall()]
    volume = [CurrencyVolume(*r) for r in conn.execute(sql.SQL(
        "select provider, currency, sum(approved)::bigint, sum(approved_amount),"
        " sum(approved_without_amount)::bigint"
        " from {} group by provider, currency having sum(approved) > 0"
        " order by provider, currency nulls last").format(kpis)).fetchall()]
    return Summary(outcomes=outcomes, quarantine=[(r[1], r[2]) for r in coverage if r[0] == "quarantine"],
                   approval=approval, volume=volume)


def percent(rate: Decimal | None) -> str:
    """A rate as a percentage with one decimal (half up, as SQL round does); '-' when undefined."""
    if rate is None:
        return "-"
    return f"{(rate * 100).quantize(Decimal('0.1'), rounding='ROUND_HALF_UP')}%"


def _table(headers: list[str], rows: list[tuple[object, ...]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if c.replace(".", "").replace("%", "").replace(",", "").isdigit() else c.ljust(w)
                      for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def render_summary(dsn: str, schema: str = MARTS) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        s = read_summary(conn, schema)
    if s is None:
        return "no marts yet: run `paynorm transform`"
    o = s.outcomes
    parts = [
        f"landed rows: {sum(o.values()):,}   events: {o['event']:,}   quarantined: {o['quarantine']:,}"
        f"   pending LLM: {o['pending']:,}",
        "",
        "Approval rate = sum(approved) / (sum(approved) + sum(declined)) over payment attempts,"
        " test events excluded (payment_kpis_daily)",
        _table(["provider", "attempts", "approved", "declined", "approval %"],
               [(a.provider, a.attempts, a.approved, a.declined, percent(a.approval_rate)) for a in s.approval]),
        "",
        "Approved volume per currency (never summed across currencies; '-' = no currency, amount withheld)",
        _table(["provider", "currency", "approved", "approved amount", "without amount"],
               [(v.provider, v.currency, v.approved, v.approved_amount, v.approved_without_amount)
                for v in s.volume]) if s.volume else "(none)",
        "",
        "Quarantine reasons (normalization_coverage)",
        _table(["reason", "rows"], s.quarantine) if s.quarantine else "(none)",
    ]
    return "\n".join(parts)
