"""`paynorm report --html`: one self-contained HTML file of the marts, for people to look at.

Everything is inline (CSS, SVG charts drawn here, no script, no font or image fetched), so the file
opens offline and can be mailed or attached to a ticket. The numbers come from the marts only, where
each KPI is defined once; this module groups and draws them. Every text read from the database
(provider names, reasons, currencies) is untrusted: it is escaped once, at the point it enters the
markup, in HTML and SVG alike. Amounts stay Decimal and are printed exactly; floats are used for
pixel coordinates only.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Sequence

import psycopg
from psycopg import sql

from .errors import ConfigError, classify

log = logging.getLogger(__name__)

__all__ = ["render_html", "write_html", "load_report_data", "render_report", "ReportData",
           "line_chart", "bar_chart", "grouped_bar_chart", "PALETTE", "REQUIRED_MARTS"]

MARTS = "paynorm_marts"
REQUIRED_MARTS = ("payment_kpis_daily", "payment_declines_daily", "payment_latency_daily", "normalization_coverage")

#: Ten colours that stay apart for colour-blind readers (Okabe-Ito plus four); series beyond ten
#: repeat a colour with a dash pattern, so every line stays distinguishable.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#f0e442", "#000000",
           "#8c564b", "#7f7f7f")
DASHES = ("", "6 3", "2 2", "8 3 2 3")
OUTCOME_COLOURS = {"event": "#009e73", "quarantine": "#d55e00", "pending": "#7f7f7f"}
PERCENTILE_COLOURS = ("#56b4e9", "#0072b2", "#d55e00")
ALL_PROVIDERS = "all providers"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value: object) -> str:
    """Text (or an attribute value) safe in HTML and inline SVG: markup characters and quotes
    escaped, control characters (not allowed in markup) replaced."""
    return html.escape(_CONTROL.sub("\ufffd", "" if value is None else str(value)), quote=True)


def _short(text: str, limit: int) -> str:
    """Cut before escaping, so an entity is never cut in half."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _label(value: object, missing: str = "(none)") -> str:
    return missing if value is None else str(value)


def _ratio(part: int, whole: int) -> Decimal | None:
    return Decimal(part) / Decimal(whole) if whole else None


def money(amount: Decimal | None) -> str:
    """An amount exactly as stored (no rounding, no exponent), with thousands separators."""
    return "withheld" if amount is None else format(amount, ",f")


def count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def percent(rate: Decimal | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _style(index: int) -> tuple[str, str]:
    return PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)]


def _svg_open(chart_id: str, width: float, height: float, title: str, desc: str) -> str:
    return (f'<svg class="chart" role="img" width="{_num(width)}" height="{_num(height)}" '
            f'viewBox="0 0 {_num(width)} {_num(height)}" aria-labelledby="{esc(chart_id)}-title {esc(chart_id)}-desc">'
            f'<title id="{esc(chart_id)}-title">{esc(title)}</title><desc id="{esc(chart_id)}-desc">{esc(desc)}</desc>')


def _no_data(chart_id: str, title: str, width: float = 640) -> str:
    return (_svg_open(chart_id, width, 60, title, "no data") +
            f'<text x="{_num(width / 2)}" y="34" text-anchor="middle" class="muted">no data yet</text></svg>')


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (axis end)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** int(f"{value:e}".split("e")[1])
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


# -- chart primitives (pure: data in, SVG markup out) ---------------------------------------------


def line_chart(chart_id: str, title: str, x_labels: Sequence[str],
               series: Sequence[tuple[str, Sequence[float | None]]], *, y_min: float = 0.0, y_max: float = 1.0,
               y_format: Any = lambda v: f"{v * 100:.0f}%", value_format: Any = lambda v: f"{v * 100:.1f}%",
               width: float = 900, plot_height: float = 280, lead: bool = False) -> str:
    """Lines over ``x_labels`` (one value per label, None = no point), with a legend on the right.
    A gap in a series breaks its line; every point carries a tooltip. ``lead``: the first series is
    the reference (drawn thicker, on top)."""
    if not x_labels or not series:
        return _no_data(chart_id, title, width)
    left, right, top, legend_w = 52.0, 16.0, 16.0, 210.0
    plot_w = width - left - right - legend_w
    height = max(top + plot_height + 48, top + 18 * len(series) + 16)
    n = len(x_labels)

    def x(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else i * plot_w / (n - 1))

    def y(v: float) -> float:
        return top + plot_height * (1 - min(max((v - y_min) / (y_max - y_min), 0.0), 1.0))

    out = [_svg_open(chart_id, width, height, title,
                     f"{len(series)} series over {n} points, from {x_labels[0]} to {x_labels[-1]}")]
    for k in range(5):  # grid and y axis
        v = y_min + (y_max - y_min) * k / 4
        yv = _num(y(v))
        out.append(f'<line class="grid" x1="{_num(left)}" x2="{_num(left + plot_w)}" y1="{yv}" y2="{yv}"/>'
                   f'<text class="tick" x="{_num(left - 6)}" y="{_num(y(v) + 4)}" text-anchor="end">'
                   f'{esc(y_format(v))}</text>')
    every = max(1, math.ceil(n * 84 / plot_w))  # a date label is about 70 px wide
    for i, lab in enumerate(x_labels):
        if i % every == 0 or i == n - 1:
            out.append(f'<text class="tick" x="{_num(x(i))}" y="{_num(top + plot_height + 18)}" '
                       f'text-anchor="middle">{esc(_short(lab, 12))}</text>')
    order = [*range(1, len(series)), 0] if lead else range(len(series))
    for s in order:
        name, values = series[s]
        colour, dash = _style(s)
        stroke = 3.5 if lead and s == 0 else 2
        parts, pen_down = [], False
        for i, v in enumerate(values):
            if v is None:
                pen_down = False
                continue
            parts.append(f"{'L' if pen_down else 'M'}{_num(x(i))} {_num(y(v))}")
            pen_down = True
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="series"><title>{esc(name)}</title>')
        if parts:
            out.append(f'<path d="{" ".join(parts)}" fill="none" stroke="{colour}" '
                       f'stroke-width="{stroke}"{dash_attr}/>')
        for i, v in enumerate(values):
            if v is not None:
                out.append(f'<circle cx="{_num(x(i))}" cy="{_num(y(v))}" r="3" fill="{colour}">'
                           f'<title>{esc(name)} {esc(x_labels[i])}: {esc(value_format(v))}</title></circle>')
        out.append("</g>")
        ly = top + 6 + 18 * s
        lx = width - legend_w + 8
        out.append(f'<line x1="{_num(lx)}" x2="{_num(lx + 22)}" y1="{_num(ly)}" y2="{_num(ly)}" stroke="{colour}" '
                   f'stroke-width="3"{dash_attr}/><text class="legend" x="{_num(lx + 28)}" y="{_num(ly + 4)}">'
                   f'<title>{esc(name)}</title>{esc(_short(name, 26))}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(chart_id: str, title: str, bars: Sequence[tuple[str, float, str]], *,
              colours: Sequence[str] | None = None, width: float = 760, label_width: float = 220,
              value_width: float = 150) -> str:
    """Horizontal bars: (label, length value, printed value) each; one shared scale from zero."""
    if not bars:
        return _no_data(chart_id, title, width)
    row, top = 24.0, 8.0
    plot_w = width - label_width - value_width
    height = top * 2 + row * len(bars)
    top_value = _nice_max(max(b[1] for b in bars))
    out = [_svg_open(chart_id, width, height, title, f"{len(bars)} bars; largest {max(bars, key=lambda b: b[1])[2]}")]
    for i, (label, value, printed) in enumerate(bars):
        colour = (colours[i] if colours else PALETTE[0])
        y0 = top + i * row
        w = max(plot_w * max(value, 0.0) / top_value, 1.0 if value > 0 else 0.0)
        out.append(f'<g class="bar"><title>{esc(label)}: {esc(printed)}</title>'
                   f'<text class="label" x="{_num(label_width - 8)}" y="{_num(y0 + 16)}" text-anchor="end">'
                   f'{esc(_short(label, 30))}</text>'
                   f'<rect x="{_num(label_width)}" y="{_num(y0 + 3)}" width="{_num(w)}" height="{_num(row - 6)}" '
                   f'fill="{colour}"/>'
                   f'<text class="value" x="{_num(label_width + w + 6)}" y="{_num(y0 + 16)}">{esc(printed)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def grouped_bar_chart(chart_id: str, title: str, groups: Sequence[tuple[str, Sequence[float | None]]],
                      legend: Sequence[str], *, unit: str = "ms", colours: Sequence[str] = PERCENTILE_COLOURS,
                      width: float = 760, label_width: float = 220) -> str:
    """Horizontal bar groups (one per label, one bar per ``legend`` entry), one shared scale."""
    values = [v for _, vs in groups for v in vs if v is not None]
    if not groups or not values:
        return _no_data(chart_id, title, width)
    bar, gap, top = 9.0, 10.0, 28.0
    plot_w = width - label_width - 110
    group_h = bar * len(legend) + gap
    height = top + group_h * len(groups) + 8
    top_value = _nice_max(max(values))
    out = [_svg_open(chart_id, width, height, title,
                     f"{len(groups)} groups of {', '.join(legend)}; largest {_num(max(values))} {unit}")]
    for j, name in enumerate(legend):
        lx = label_width + j * 90
        out.append(f'<rect x="{_num(lx)}" y="6" width="12" height="12" fill="{colours[j % len(colours)]}"/>'
                   f'<text class="legend" x="{_num(lx + 16)}" y="16">{esc(name)}</text>')
    for i, (label, vs) in enumerate(groups):
        y0 = top + i * group_h
        out.append(f'<g class="group"><title>{esc(label)}</title><text class="label" x="{_num(label_width - 8)}" '
                   f'y="{_num(y0 + bar * len(legend) / 2 + 4)}" text-anchor="end">{esc(_short(label, 30))}</text>')
        for j, v in enumerate(vs):
            if v is None:
                continue
            w = max(plot_w * v / top_value, 1.0 if v > 0 else 0.0)
            yy = y0 + j * bar
            out.append(f'<rect x="{_num(label_width)}" y="{_num(yy)}" width="{_num(w)}" height="{_num(bar - 1)}" '
                       f'fill="{colours[j % len(colours)]}"><title>{esc(label)} {esc(legend[j])}: '
                       f'{esc(_num(v))} {esc(unit)}</title></rect>'
                       f'<text class="value small" x="{_num(label_width + w + 4)}" y="{_num(yy + bar - 1)}">'
                       f'{esc(_num(v))}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Iterable[int] = (),
          caption: str | None = None) -> str:
    """An HTML table; every cell escaped; ``numeric`` columns right-aligned."""
    right = set(numeric)
    head = "".join(f'<th scope="col"{" class=num" if i in right else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=num" if i in right else ""}>{esc(v)}</td>' for i, v in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body) or f"<tr><td colspan={len(headers)}>no rows</td></tr>"}</tbody></table></div>')


# -- data ----------------------------------------------------------------------------------------


@dataclass
class ReportData:
    """What the report shows, as read from the marts (Decimal amounts and rates, int counts)."""

    approval: list[tuple[dt.date, str, int, int, Decimal | None]] = field(default_factory=list)
    declines: list[tuple[str | None, int]] = field(default_factory=list)
    volume: list[tuple[str | None, str, int, Decimal | None, int]] = field(default_factory=list)
    latency: list[tuple[dt.date, str, int, int | None, int | None, int | None]] = field(default_factory=list)
    coverage: list[tuple[str, str | None, int]] = field(default_factory=list)
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).replace(microsecond=0))


def _mart(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(MARTS), sql.Identifier(name))


def load_report_data(conn: psycopg.Connection[Any]) -> ReportData:
    """Read the marts; ConfigError (one line) when one of them has not been built yet."""
    found = conn.execute("select m from unnest(%s::text[]) as m where to_regclass(%s || '.' || m) is not null",
                         (list(REQUIRED_MARTS), MARTS)).fetchall()
    missing = [m for m in REQUIRED_MARTS if (m,) not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConfigError(f"the marts are not built: {MARTS}.{missing[0]}{more} missing; "
                          "run `paynorm run --once` first")
    try:
        with conn.transaction():  # one snapshot: every figure from the same build of the marts
            conn.execute("set transaction isolation level repeatable read, read only")
            return _read_marts(conn)
    except psycopg.errors.UndefinedColumn as e:
        line = str(e).strip().splitlines()[0]
        raise ConfigError(f"the marts predate this paynorm ({line}); run `paynorm run --once` first") from None


def _read_marts(conn: psycopg.Connection[Any]) -> ReportData:
    data = ReportData()
    data.approval = conn.execute(sql.SQL(
        "select event_date, provider, sum(approved)::bigint, sum(declined)::bigint,"
        " sum(approved)::numeric / nullif(sum(approved) + sum(declined), 0)"
        " from {} group by 1, 2 order by 1, 2").format(_mart("payment_kpis_daily"))).fetchall()
    data.declines = conn.execute(sql.SQL(
        "select decline_category, sum(declines)::bigint from {} group by 1 order by 2 desc, 1 nulls last"
    ).format(_mart("payment_declines_daily"))).fetchall()
    data.volume = conn.execute(sql.SQL(
        "select currency, provider, sum(approved)::bigint, sum(approved_amount),"
        " sum(approved_without_amount)::bigint from {}"
        " where approved > 0 group by 1, 2 order by 1 nulls last, 4 desc nulls last, 2"
    ).format(_mart("payment_kpis_daily"))).fetchall()
    data.latency = conn.execute(sql.SQL(
        "select event_date, provider, events_with_latency, latency_p50_ms, latency_p95_ms, latency_p99_ms"
        " from {} order by 2, 1 desc").format(_mart("payment_latency_daily"))).fetchall()
    data.coverage = conn.execute(sql.SQL(
        "select outcome, reason, sum(rows)::bigint from {} group by 1, 2"
        " order by case outcome when 'event' then 0 when 'quarantine' then 1 else 2 end, 3 desc, 2"
    ).format(_mart("normalization_coverage"))).fetchall()
    return data


# -- sections ------------------------------------------------------------------------------------


def _figure(chart_id: str, caption: str, charts: str, tables: str, note: str = "", *, stacked: bool = False) -> str:
    body = "fig-body stacked" if stacked else "fig-body"
    return (f'<figure id="{esc(chart_id)}"><figcaption>{esc(caption)}</figcaption>'
            f'<div class="{body}"><div class="fig-chart">{charts}</div><div class="fig-table">{tables}</div></div>'
            f'{f"<p class=note>{esc(note)}</p>" if note else ""}</figure>')


def _approval_section(data: ReportData, top: int = 8) -> str:
    seen = sorted({r[0] for r in data.approval})
    days = [seen[0] + dt.timedelta(days=i) for i in range((seen[-1] - seen[0]).days + 1)] if seen else []
    totals: dict[str, list[int]] = {}
    per_day: dict[dt.date, list[int]] = {}
    for day, p, a, d, _ in data.approval:
        for key, acc in ((p, totals), (day, per_day)):
            t = acc.setdefault(key, [0, 0])  # type: ignore[call-overload]
            t[0] += a
            t[1] += d
    rate = {(r[0], r[1]): r[4] for r in data.approval}
    all_rate = {day: _ratio(a, a + d) for day, (a, d) in per_day.items()}
    ranked = [p for p in sorted(totals, key=lambda p: (-sum(totals[p]), p)) if sum(totals[p])][:top]
    series = [(ALL_PROVIDERS, [all_rate.get(d) for d in days])]
    series += [(p, [rate.get((d, p)) for d in days]) for p in ranked]
    floats = [(name, [None if v is None else float(v) for v in vs]) for name, vs in series]
    lowest = min((v for _, vs in floats for v in vs if v is not None), default=0.0)
    y_min = max(0.0, math.floor(lowest * 10 - 0.5) / 10)  # the axis starts at a round 10% below the lowest rate
    chart = line_chart("chart-approval-svg", "Approval rate per day, all providers and the busiest providers",
                       [d.isoformat() for d in days], floats if days else [], y_min=y_min, lead=True)
    daily = table(["day", *(name for name, _ in series)],
                  [[d.isoformat(), *(percent(vs[i]) for _, vs in series)] for i, d in enumerate(days)],
                  numeric=range(1, len(series) + 1), caption="Approval rate per day")
    rows = [[p, count(a), count(d), percent(_ratio(a, a + d)), percent(_ratio(d, a + d))]
            for p, (a, d) in sorted(totals.items(), key=lambda kv: (-sum(kv[1]), kv[0]))]
    a_all, d_all = sum(t[0] for t in totals.values()), sum(t[1] for t in totals.values())
    rows.insert(0, [ALL_PROVIDERS, count(a_all), count(d_all), percent(_ratio(a_all, a_all + d_all)),
                    percent(_ratio(d_all, a_all + d_all))])
    period = table(["provider", "approved", "declined", "approval rate", "decline rate"], rows, numeric=(1, 2, 3, 4),
                   caption="Whole period, every provider")
    return _figure("chart-approval",
                   "Approval rate = approved / (approved + declined) payment attempts, test events excluded: per UTC "
                   f"day for all providers together and for the {top} providers with the most approved and declined "
                   "attempts (a gap: no approved or declined attempt that day). The rate axis starts at the round 10% "
                   "below the lowest rate shown; the second table has every provider.",
                   chart, daily + period)


def _declines_section(data: ReportData, top: int = 12) -> str:
    total = sum(n for _, n in data.declines)
    bars = [(_label(c, "(uncategorized)"), float(n), count(n)) for c, n in data.declines[:top]]
    chart = bar_chart("chart-declines-svg", "Declined attempts by decline category", bars,
                      colours=[PALETTE[3]] * len(bars))
    rows = [[_label(c, "(uncategorized)"), count(n), percent(Decimal(n) / total if total else None)]
            for c, n in data.declines]
    more = f" The chart shows the top {top}; the table lists all." if len(data.declines) > top else ""
    return _figure("chart-declines", "Top decline reasons: declined payment attempts per decline category over the "
                   "whole period." + more, chart,
                   table(["decline category", "declines", "share"], rows, numeric=(1, 2)))


def _volume_section(data: ReportData, per_currency: int = 8) -> str:
    currencies: dict[str | None, list[tuple[str, int, Decimal | None, int]]] = {}
    for cur, provider, approved, amount, without in data.volume:
        currencies.setdefault(cur, []).append((provider, approved, amount, without))
    charts, rows = [], []
    for n, (cur, items) in enumerate(c for c in currencies.items() if c[0] is not None):
        with_amount = [(p, m) for p, _, m, _ in items if m is not None]
        bars = [(p, float(m), f"{money(m)} {cur}") for p, m in with_amount[:per_currency]]
        svg = bar_chart(f"chart-volume-svg-{n}", f"Approved volume in {cur} by provider", bars,
                        colours=[PALETTE[0]] * len(bars), width=540, label_width=130, value_width=160)
        hidden = len(with_amount) - per_currency
        more = f'<p class="note">{hidden} more providers in the table</p>' if hidden > 0 else ""
        charts.append(f'<div class="multiple"><h3>{esc(cur)}</h3>{svg}{more}</div>')
        total = sum((m for _, m in with_amount), Decimal(0))
        rows.append([cur, "(all providers)", count(sum(i[1] for i in items)), money(total),
                     count(sum(i[3] for i in items))])
        rows += [[cur, p, count(a), money(m), count(w)] for p, a, m, w in items]
    note = ""
    if None in currencies:
        withheld = sum(i[1] for i in currencies[None])
        rows += [["(none)", p, count(a), money(None), count(a)] for p, a, _, _ in currencies[None]]
        note = (f"{withheld:,} approved attempts have no currency: their amounts are withheld upstream and "
                "appear in no chart.")
    if not charts:
        charts.append(_no_data("chart-volume-svg-0", "Approved volume by currency and provider"))
    tab = table(["currency", "provider", "approved", "approved amount", "approved without amount"], rows,
                numeric=(2, 3, 4))
    return _figure("chart-volume", "Approved volume per currency (sum of approved attempts' amounts), one chart and "
                   "one scale per currency: amounts in different currencies are never added together.",
                   "".join(charts), tab, note, stacked=True)


def _latency_section(data: ReportData, top: int = 15) -> str:
    latest: dict[str, tuple[Any, ...]] = {}
    seen: dict[str, int] = {}
    for r in data.latency:
        seen[r[1]] = seen.get(r[1], 0) + r[2]
        if r[3] is not None and (r[1] not in latest or r[0] > latest[r[1]][0]):
            latest[r[1]] = r
    ranked = sorted(latest, key=lambda p: (-seen[p], p))
    groups = [(f"{p} ({latest[p][0].isoformat()})", [None if v is None else float(v) for v in latest[p][3:6]])
              for p in ranked[:top]]
    chart = grouped_bar_chart("chart-latency-svg", "Latency percentiles of the busiest providers, latest day", groups,
                              ["p50", "p95", "p99"])
    headers = ["provider", "day", "events with latency", "p50 ms", "p95 ms", "p99 ms"]
    last = table(headers, [[p, latest[p][0].isoformat(), *(count(v) for v in latest[p][2:6])] for p in ranked],
                 numeric=(2, 3, 4, 5), caption="Latest day, every provider")
    every_day = table(headers, [[r[1], r[0].isoformat(), *(count(v) for v in r[2:6])] for r in data.latency],
                      numeric=(2, 3, 4, 5))
    more = f"the {top} providers with the most latency samples, " if len(ranked) > top else ""
    return _figure("chart-latency", "Provider latency percentiles p50 / p95 / p99 in milliseconds (observed "
                   f"values over the payment attempts that report a latency): {more}each on its latest day with "
                   "latency data. "
                   "Percentiles of different days are not combined; the tables have every provider and every day.",
                   chart, f"{last}<details><summary>Every day ({len(data.latency):,} rows)</summary>"
                   f"{every_day}</details>")


def _coverage_section(data: ReportData) -> str:
    names = {"event": "normalized events", "pending": "pending LLM"}
    total = sum(n for _, _, n in data.coverage)

    def label(outcome: str, reason: str | None) -> str:
        if outcome == "quarantine":
            return f"quarantine: {_label(reason, '(no reason)')}"
        return names.get(outcome, outcome) + (f": {reason}" if reason else "")

    bars = [(label(o, r), float(n), count(n)) for o, r, n in data.coverage]
    chart = bar_chart("chart-coverage-svg", "Landed rows by normalization outcome", bars,
                      colours=[OUTCOME_COLOURS.get(o, PALETTE[9]) for o, _, _ in data.coverage])
    rows = [[o, _label(r, "-"), count(n), percent(Decimal(n) / total if total else None)] for o, r, n in data.coverage]
    return _figure("chart-coverage", "Normalization coverage: every live landed row is a normalized event, in "
                   "quarantine (with its reason) or pending the LLM step.", chart,
                   table(["outcome", "reason", "rows", "share"], rows, numeric=(2, 3)))


_CSS = """
:root{color-scheme:light;--fg:#1b1f24;--muted:#5b6470;--line:#d8dde3;--bg:#fff;--band:#f5f7f9}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;color:var(--fg);background:var(--bg);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:32px 0 8px}h3{font-size:14px;margin:8px 0 2px}
header p{margin:2px 0;color:var(--muted)}
figure{margin:0 0 28px;padding:16px;border:1px solid var(--line);border-radius:6px}
figcaption{font-weight:600;margin-bottom:10px}
.fig-body{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.fig-chart{flex:0 1 auto;max-width:100%;overflow-x:auto}.fig-table{flex:1 1 360px;min-width:320px;max-width:100%}
.table-wrap{max-height:480px;overflow:auto;border:1px solid var(--line)}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
thead th{position:sticky;top:0;background:var(--band)}
.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:var(--muted);font-size:12.5px;margin:6px 0 0}
svg.chart{display:block;font-size:11.5px}
svg .grid{stroke:var(--line);stroke-width:1}
svg text{fill:var(--fg)}svg .tick,svg .muted{fill:var(--muted)}svg .small{font-size:10px}
.multiple{margin-bottom:12px}
.stacked{display:block}.stacked .fig-chart{display:flex;flex-wrap:wrap;gap:0 32px}.stacked .fig-table{margin-top:12px}
caption{text-align:left;font-weight:600;padding:4px 8px;background:var(--band)}
details{margin-top:10px}summary{cursor:pointer;color:var(--muted)}
.fig-table>.table-wrap+.table-wrap{margin-top:12px}
"""


def render_report(data: ReportData) -> str:
    """The whole HTML document for ``data`` (pure: no database)."""
    days = sorted({r[0] for r in data.approval})
    period = f"{days[0].isoformat()} to {days[-1].isoformat()} (UTC days)" if days else "no payment attempts yet"
    landed = sum(n for _, _, n in data.coverage)
    sections = [
        ("Approval rate", _approval_section(data)),
        ("Decline reasons", _declines_section(data)),
        ("Volume per currency", _volume_section(data)),
        ("Latency", _latency_section(data)),
        ("Normalization coverage", _coverage_section(data)),
    ]
    body = "".join(f"<section><h2>{esc(h)}</h2>{s}</section>" for h, s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>paynorm report {esc(data.generated_at.date().isoformat())}</title><style>{_CSS}</style></head>"
            f"<body><header><h1>paynorm payments report</h1>"
            f"<p>Period: {esc(period)} &middot; landed rows: {esc(count(landed))} &middot; generated "
            f"{esc(data.generated_at.isoformat())}</p>"
            "<p>Every figure is read from the warehouse marts (paynorm_marts), where the KPIs are defined; "
            "test events are excluded.</p></header><main>"
            f"{body}</main></body></html>\n")


def render_html(dsn: str) -> str:
    """The report of the warehouse at ``dsn`` as one self-contained HTML document."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            data = load_report_data(conn)
    except psycopg.Error as e:
        raise classify(e, secrets=(dsn,)) from None
    return render_report(data)


def write_html(dsn: str, path: str | os.PathLike[str]) -> Path:
    """Write the report to ``path`` (atomically: a reader never sees half a file); the path."""
    target = Path(path)
    document = render_html(dsn)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(document)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("report written to %s (%d bytes)", target, len(document.encode()))
    return target
