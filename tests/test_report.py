"""`paynorm report --html`: the chart functions escape hostile labels (pure), and the report of a real
warehouse (generated lake records through a whole `run --once`) is one self-contained file whose
figures hold the marts' numbers and that Debian's headless Chromium renders into a non-blank page
with every chart in its DOM."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from psycopg import sql

from consumer.demo import generate_records, insert_records
from consumer.errors import EXIT_CONFIG
from consumer.pipeline import Pipeline
from consumer.report_html import (OUTCOME_COLOURS, PALETTE, ReportData, bar_chart, grouped_bar_chart, line_chart,
                                  render_html, render_report)

from .conftest import REPO, Env

CHARTS = ("chart-approval", "chart-declines", "chart-volume", "chart-latency", "chart-coverage")
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>alert("x")</script>\'&"<img src=x onerror=alert(1)>'


class _Dom(HTMLParser):
    """Tags, per figure id: how many SVG shapes and which texts; every tag name seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.figure: str | None = None
        self.shapes: dict[str, int] = {}
        self.svgs: dict[str, int] = {}
        self.texts: dict[str, list[str]] = {}
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "figure":
            self.figure = dict(attrs).get("id")
            self.shapes.setdefault(self.figure or "", 0)
            self.svgs.setdefault(self.figure or "", 0)
        elif self.figure and tag == "svg":
            self.svgs[self.figure] += 1
        elif self.figure and tag in ("rect", "path", "circle", "line"):
            self.shapes[self.figure] += 1
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.figure = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self.figure:
            self.texts.setdefault(self.figure, []).append(data)
        if self._in_title:
            self.titles.append(data)


def _dom(markup: str) -> _Dom:
    d = _Dom()
    d.feed(markup)
    d.close()
    return d


def assert_figures_accessible(doc: str) -> None:
    """Every chart figure: a caption, and SVGs that are well-formed, titled and labelled by that title."""
    figures = dict(re.findall(r'<figure id="(chart-[a-z]+)">(.*?)</figure>', doc, re.DOTALL))
    assert sorted(figures) == sorted(CHARTS), sorted(figures)
    for chart, inner in figures.items():
        caption = re.search(r"<figcaption>(.+?)</figcaption>", inner, re.DOTALL)
        assert caption and caption.group(1).strip(), f"{chart}: no caption"
        svgs = re.findall(r"<svg\b.*?</svg>", inner, re.DOTALL)
        assert svgs, f"{chart}: no svg"
        for svg in svgs:
            root = ET.fromstring(svg)
            assert root[0].tag == "title" and (root[0].text or "").strip(), f"{chart}: svg without a title"
            assert root.get("role") == "img" and root[0].get("id") in (root.get("aria-labelledby") or "").split()


# -- pure: the chart functions -------------------------------------------------------------------


def test_chart_functions_escape_hostile_labels() -> None:
    svgs = [
        line_chart("c1", HOSTILE, ["2026-01-01", HOSTILE], [(HOSTILE, [0.5, 0.9]), ("ok", [None, 0.7])]),
        bar_chart("c2", HOSTILE, [(HOSTILE, 3.0, HOSTILE), ("b", 1.0, "1")]),
        grouped_bar_chart("c3", HOSTILE, [(HOSTILE, [1.0, 2.0, None])], ["p50", HOSTILE, "p99"]),
    ]
    for svg in svgs:
        assert "<script" not in svg and "<img" not in svg
        root = ET.fromstring(svg)  # still well-formed XML: no label closed an element or an attribute
        assert root.tag == "svg" and not list(root.iter("script")) and not list(root.iter("img"))
        texts = ["".join(el.itertext()) for el in root.iter() if el.tag in ("title", "text", "desc")]
        # the markup round-trips: a parser gives back the label itself, character for character
        assert any(HOSTILE in t for t in texts), texts
        assert all(not any(k.startswith("on") for k in el.attrib) for el in root.iter())
        # long labels are cut before escaping: never half an entity
        assert not re.search(r"&[a-z#0-9]*\u2026", svg)


def test_report_document_escapes_database_text_and_keeps_amounts_exact() -> None:
    day = dt.date(2026, 3, 1)
    big = Decimal("12345678901234567.89")  # a float would print 12345678901234568
    data = ReportData(
        approval=[(day, HOSTILE, 9, 1, Decimal("0.9")), (day, "plain", 0, 0, None)],
        declines=[(HOSTILE, 4), (None, 1)],
        volume=[("EUR", HOSTILE, 2, big, 0), ("JPY", "plain", 1, Decimal("1500"), 0), (None, "plain", 3, None, 3)],
        latency=[(day, HOSTILE, 5, 100, 200, 300)],
        coverage=[("event", None, 10), ("quarantine", HOSTILE, 2), ("pending", None, 1)],
    )
    doc = render_report(data)
    assert_figures_accessible(doc)
    dom = _dom(doc)
    assert "script" not in dom.tags and "img" not in dom.tags
    assert set(CHARTS) <= set(dom.svgs) and all(dom.svgs[c] >= 1 for c in CHARTS)
    for chart in CHARTS:
        assert any(HOSTILE in t for t in dom.texts[chart]), chart  # shown, as text
    assert "12,345,678,901,234,567.89" in doc and f"{float(big):,.2f}" not in doc
    assert "withheld" in doc and "3 approved attempts have no currency" in doc
    assert "90.0%" in doc  # 9 / (9 + 1)
    # EUR and JPY each get a chart of their own; nothing adds them up
    assert "Approved volume in EUR by provider" in doc and "Approved volume in JPY by provider" in doc


# -- a real warehouse ----------------------------------------------------------------------------


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail("chromium missing: `make chromium` (scripts/ensure-chromium.sh) installs Debian's chromium")
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                         env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, f"chromium exited {res.returncode}:\n{res.stderr[-3000:]}"
    return res


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], cwd=REPO, env=env.cli_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(900)
def test_report_of_a_real_warehouse_renders_in_chromium(env: Env, tmp_path: Path) -> None:
    from PIL import Image

    with env.lake_conn() as lake:
        insert_records(lake, generate_records(1500, seed=11))
    assert Pipeline(env.settings(home=tmp_path / "home")).run(once=True, interval=0) == 0

    out = tmp_path / "out" / "report.html"
    res = _cli(env, "report", "--html", str(out))
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout
    doc = out.read_text(encoding="utf-8")

    # self-contained: nothing to fetch, no script
    assert not re.search(r"https?://", doc, re.IGNORECASE), re.findall(r".{40}https?://.{40}", doc)[:3]
    assert not re.search(r"<(script|link|iframe|object|embed|img)\b", doc, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", doc, re.IGNORECASE)

    assert_figures_accessible(doc)
    dom = _dom(doc)
    for chart in CHARTS:
        assert dom.svgs.get(chart, 0) >= 1, f"{chart}: no svg"
        assert dom.shapes[chart] >= 3, f"{chart}: an empty chart ({dom.shapes[chart]} shapes)"
        assert "no data yet" not in "".join(dom.texts[chart]), chart

    # the numbers shown are the marts' numbers
    with env.wh_conn() as wh:
        per_provider = wh.execute(
            "select provider, sum(approved), sum(declined) from paynorm_marts.payment_kpis_daily group by 1"
        ).fetchall()
        volumes = wh.execute("select currency, sum(approved_amount) from paynorm_marts.payment_kpis_daily"
                             " where currency is not null and approved > 0 group by 1").fetchall()
        top_decline = wh.execute("select decline_category, sum(declines) from paynorm_marts.payment_declines_daily"
                                 " group by 1 order by 2 desc limit 1").fetchone()
        coverage = wh.execute("select sum(rows) from paynorm_marts.normalization_coverage").fetchone()[0]
    assert len(per_provider) >= 10 and len(volumes) >= 2 and top_decline is not None
    approval_text = "".join(dom.texts["chart-approval"])
    for provider, approved, declined in per_provider:
        if approved + declined:
            assert f"{Decimal(approved) / Decimal(approved + declined) * 100:.1f}%" in approval_text, provider
    volume_text = "".join(dom.texts["chart-volume"])
    for currency, amount in volumes:
        assert isinstance(amount, Decimal) and f"{amount:,f}" in volume_text, (currency, amount)
        assert f"Approved volume in {currency} by provider" in dom.titles
    assert f"{top_decline[1]:,}" in "".join(dom.texts["chart-declines"])
    assert f"landed rows: {coverage:,}" in doc

    # what Chromium makes of it: a page with colour, the charts' own colours among them
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri(), tmp=tmp_path)
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 2400)
        colours = dict((c, n) for n, c in rgb.getcolors(maxcolors=1 << 24) or [])
    assert len(colours) > 10, f"a blank page: {len(colours)} colours"

    def pixels(hex_colour: str) -> int:
        return colours.get(tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)), 0)  # type: ignore[arg-type]

    assert pixels(PALETTE[3]) > 500, "no decline bars drawn"  # solid bars: their exact colour
    assert pixels(PALETTE[0]) > 200, "no approval lines / volume bars drawn"

    dumped = _dom(_chromium("--dump-dom", out.as_uri(), tmp=tmp_path).stdout)
    for chart in CHARTS:  # as rendered: every figure and its shapes are in the DOM
        assert dom.svgs[chart] == dumped.svgs.get(chart), chart
        assert dom.shapes[chart] == dumped.shapes.get(chart), chart
    assert "script" not in dumped.tags

    # untrusted text in a mart reaches the page as text, in the HTML and in the SVG
    with env.wh_conn() as wh:
        wh.execute("update paynorm_marts.normalization_coverage set reason = %s where outcome = 'quarantine'",
                   (HOSTILE,))
    hostile_doc = render_html(env.wh_dsn)
    hostile_dom = _dom(hostile_doc)
    assert "script" not in hostile_dom.tags and "img" not in hostile_dom.tags
    assert any(HOSTILE in t for t in hostile_dom.texts["chart-coverage"])
    assert any(HOSTILE in t for t in hostile_dom.titles)
    assert_figures_accessible(hostile_doc)
    assert OUTCOME_COLOURS["quarantine"] in hostile_doc


def test_report_without_marts_says_to_run_the_pipeline(env: Env, tmp_path: Path) -> None:
    assert _cli(env, "init").returncode == 0
    out = tmp_path / "report.html"
    res = _cli(env, "report", "--html", str(out))
    assert res.returncode == EXIT_CONFIG, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "paynorm run --once" in lines[0] and "paynorm_marts." in lines[0], res.stderr
    assert not out.exists()
    # marts of an older build (a column the report reads is missing): the same advice, not a traceback
    with env.wh_conn() as wh:
        wh.execute("create schema paynorm_marts")
        for mart in ("payment_kpis_daily", "payment_declines_daily", "payment_latency_daily",
                     "normalization_coverage"):
            wh.execute(sql.SQL("create table paynorm_marts.{} (event_date date)").format(sql.Identifier(mart)))
    res = _cli(env, "report", "--html", str(out))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == EXIT_CONFIG and len(lines) == 1, (res.returncode, res.stderr)
    assert "predate" in lines[0] and "paynorm run --once" in lines[0], res.stderr
    assert not out.exists()
