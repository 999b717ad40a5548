"""The short summary `make demo` ends with: what the marts say, in a few tables."""

from __future__ import annotations

import psycopg

MARTS = "paynorm_marts"


def _table(headers: list[str], rows: list[tuple[object, ...]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if c.replace(".", "").replace("%", "").isdigit() else c.ljust(w)
                      for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def render_summary(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("select to_regclass(%s)", (f"{MARTS}.normalized_payment_events",)).fetchone()[0] is None:  # type: ignore[index]
            return "no marts yet: run `paynorm transform`"
        by_status = conn.execute(
            "select provider, status, count(*), sum(amount) filter (where currency = 'USD')"
            f" from {MARTS}.normalized_payment_events group by 1, 2 order by 1, 2").fetchall()
        approval = conn.execute(
            "select provider, count(*) filter (where status = 'approved'), count(*) filter (where status = 'declined'),"
            " round(100.0 * count(*) filter (where status = 'approved')"
            "   / nullif(count(*) filter (where status in ('approved', 'declined')), 0), 1)"
            f" from {MARTS}.normalized_payment_events where not is_test group by 1 order by 1").fetchall()
        quarantine = conn.execute(
            f"select reason, count(*) from {MARTS}.normalization_quarantine group by 1 order by 2 desc").fetchall()
        pending = conn.execute(
            f"select count(*), count(distinct shape_key) from {MARTS}.normalization_pending").fetchone()
        landed = conn.execute("select count(*) from raw.lake_transactions where not deleted").fetchone()
    assert pending is not None and landed is not None
    events = sum(r[2] for r in by_status)
    parts = [
        f"landed rows: {landed[0]:,}   events: {events:,}   quarantined: {sum(r[1] for r in quarantine):,}"
        f"   pending LLM: {pending[0]:,} rows in {pending[1]:,} shapes",
        "",
        "Events per provider and status",
        _table(["provider", "status", "events", "USD volume"], by_status),
        "",
        "Approval rate = approved / (approved + declined), test events excluded",
        _table(["provider", "approved", "declined", "approval %"], approval),
        "",
        "Quarantine reasons",
        _table(["reason", "rows"], quarantine) if quarantine else "(none)",
    ]
    return "\n".join(parts)
