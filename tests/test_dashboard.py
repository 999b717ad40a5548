"""The Grafana dashboard (deploy/grafana/paynorm-dashboard.json) holds together with the code.

Every Prometheus query names only metrics paynorm exports, where "exports" is read from the running
code (prometheus_client's registry after importing consumer.ops.metrics, plus the refresher's
gauges), and parses (promtool); every SQL panel reads a real mart and its real columns. The same
helpers check the alert rules (tests/test_alerts.py), whose live test also runs every dashboard
query against a real Prometheus scraping `paynorm run` and a real warehouse.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from .conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "paynorm-dashboard.json"
MARTS = REPO / "models" / "marts"
MONITORING_DOC = REPO / "docs" / "monitoring.md"
MARTS_SCHEMA = "paynorm_marts"
#: Series Prometheus itself writes for every scrape target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# -- what paynorm exports ----------------------------------------------------------------------------


def refreshed_metric_names() -> set[str]:
    """Names the background refresher serves, read from the code that builds them (an empty cache
    plus an empty status with a lake): the families' names, whatever values a refresh finds."""
    from consumer.ops import metrics
    from consumer.settings import Settings

    names = {f.name for f in metrics.Refresher(Settings()).collect()}
    names |= {f.name for f in metrics.families_from_status({"lake_up": True})}
    return names


def exported_metrics() -> set[str]:
    """Every series name paynorm's /metrics can carry, as PromQL spells it: counters with ``_total``,
    histograms as ``_bucket``/``_sum``/``_count``, gauges as they are (build_info included)."""
    from prometheus_client import REGISTRY

    from consumer import pipeline  # noqa: F401 - everything that registers process metrics
    from consumer.ops import metrics

    names = set(metrics.REFRESHED_METRICS)
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "summary":
            names |= {family.name, family.name + "_sum", family.name + "_count"}
        elif family.type == "info":
            names.add(family.name + "_info")
        else:
            names.add(family.name)
    return names


# -- PromQL ----------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: without label matchers, range/subquery brackets,
    label lists of by/without/on/ignoring/group_*, function calls, keywords and numbers."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _LABEL_LIST.sub(" ", e)
    names = set()
    for m in _IDENT.finditer(e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


# -- the dashboard -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # panels of a collapsed row


def targets(dash: dict[str, Any], kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of a datasource type ('prometheus' or 'postgres')."""
    for p in panels(dash):
        for t in p.get("targets", []):
            ds = (t.get("datasource") or p.get("datasource") or {}).get("type", "")
            if (kind == "prometheus") == (ds == "prometheus"):
                yield p["title"], t


def prometheus_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and Prometheus template variable."""
    out = [(f"{title} {t['refId']}", t["expr"]) for title, t in targets(dash, "prometheus")]
    for var in dash.get("templating", {}).get("list", []):
        if (var.get("datasource") or {}).get("type") == "prometheus":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            out.append((f"variable {var['name']}", m.group(1) if m else q))  # the series it reads labels of
    return out


def sql_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(title, t["rawSql"]) for title, t in targets(dash, "postgres")]


def grafana_promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel expression as Grafana sends it with every instance selected."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*")


def grafana_sql(query: str) -> str:
    """A panel query as Grafana runs it, $__timeFilter(col) bound to %(from)s / %(to)s parameters."""
    return re.sub(r"\$__timeFilter\(([^)]+)\)", r"\1 between %(from)s and %(to)s", query)


# -- the marts ---------------------------------------------------------------------------------------


def mart_columns() -> dict[str, set[str]]:
    """Mart model -> its documented columns (models/marts/*.yml), for models with a .sql file."""
    out: dict[str, set[str]] = {}
    for path in MARTS.glob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            if (MARTS / f"{model['name']}.sql").exists():
                out[model["name"]] = {c["name"] for c in model.get("columns", [])}
    return out


SQL_KEYWORDS = {"select", "from", "where", "group", "by", "order", "as", "and", "or", "not", "null", "cross",
                "join", "lateral", "desc", "asc", "at", "time", "zone", "limit", "case", "when", "then", "else",
                "end", "filter", "distinct", "on", "left", "inner", "is", "in", "between", "interval", "true",
                "false", "having", "with", "union", "all"}


def sql_problems(query: str, marts: dict[str, set[str]]) -> list[str]:
    """Names in a panel's SQL that are no mart, no column of the marts it reads, or no alias it defines."""
    q = re.sub(r"'(?:[^']|'')*'", "''", query)
    q = re.sub(r'"[^"]*"', " ", q)  # quoted output aliases ("time")
    q = re.sub(r"\$__\w+", " ", q)  # Grafana macros (their argument stays and is checked)
    q = re.sub(r"::\s*\w+", " ", q)  # casts
    problems = []
    relations = {}  # alias -> mart
    for m in re.finditer(rf"\b{MARTS_SCHEMA}\.(\w+)(?:\s+as\s+(\w+))?", q, re.IGNORECASE):
        if m.group(1) not in marts:
            problems.append(f"{MARTS_SCHEMA}.{m.group(1)} is no mart in models/marts")
        relations[m.group(2) or m.group(1)] = m.group(1)
    if not relations:
        problems.append(f"reads no {MARTS_SCHEMA} relation")
    aliases = {a.lower() for a in re.findall(r"\bas\s+(\w+)", q, re.IGNORECASE)}
    columns = set().union(*(marts.get(r, set()) for r in relations.values()))
    for m in re.finditer(r"\b(\w+)\.(\w+)\b", q):
        qualifier, name = m.groups()
        if qualifier == MARTS_SCHEMA:
            continue
        if qualifier in relations:
            if name not in marts.get(relations[qualifier], set()):
                problems.append(f"{qualifier}.{name}: no column {name} in {relations[qualifier]}")
        elif qualifier.lower() not in aliases:
            problems.append(f"{qualifier}.{name}: {qualifier} is not defined")
    bare = re.sub(rf"\b{MARTS_SCHEMA}\.\w+|\b\w+\.\w+\b", " ", q)
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_]\w*)\b(\s*\()?", bare):
        name, call = m.groups()
        if call or name.lower() in SQL_KEYWORDS or name.lower() in aliases or name in relations:
            continue
        if name not in columns:
            problems.append(f"{name}: no column of {sorted(set(relations.values()))}")
    return problems


# -- tests -------------------------------------------------------------------------------------------


def test_the_dashboard_is_importable_json() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36 and dash["uid"] and dash["title"]
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert inputs["DS_POSTGRES"]["pluginId"] == "grafana-postgresql-datasource"
    assert all(i["type"] == "datasource" for i in inputs.values())
    uids = {"prometheus": "${DS_PROMETHEUS}", "grafana-postgresql-datasource": "${DS_POSTGRES}"}
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} leaves the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"{p['title']} has no query"
        for t in p["targets"]:
            ds = t.get("datasource") or p["datasource"]
            assert ds["uid"] == uids[ds["type"]], f"{p['title']}: datasource {ds} is not an input"
            assert ("expr" in t) == (ds["type"] == "prometheus") and ("rawSql" in t) == (ds["type"] != "prometheus")


def test_promql_metric_names() -> None:
    assert promql_metric_names('histogram_quantile(0.95, sum by (stage, le)'
                               ' (rate(a_bucket{instance=~"$instance", x="b c"}[$__rate_interval])))') == {"a_bucket"}
    assert promql_metric_names("time() - a > on (job, instance) 2 * b + 9e2 and c offset 5m") == {"a", "b", "c"}
    expr = "sum(x) without (slot) / ignoring (op) group_left (y) z unless bool w"
    assert promql_metric_names(expr) == {"x", "z", "w"}
    assert promql_metric_names('absent(up{job="paynorm"})') == {"up"}


def test_the_refreshed_metrics_tuple_is_what_the_refresher_serves() -> None:
    from consumer.ops import metrics

    assert set(metrics.REFRESHED_METRICS) == refreshed_metric_names()


def test_every_prometheus_query_names_an_exported_metric() -> None:
    exported = exported_metrics()
    assert "paynorm_build_info" in exported and "paynorm_cycles_total" in exported  # the registry was read
    unknown = {(where, name) for where, expr in prometheus_exprs(dashboard())
               for name in promql_metric_names(expr) if name not in exported | PROMETHEUS_SERIES}
    assert not unknown, f"dashboard queries name metrics paynorm does not export: {sorted(unknown)}"


def test_every_prometheus_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), the way Grafana sends it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: make prometheus (scripts/ensure-prometheus.sh) installs it")
    exprs = prometheus_exprs(dashboard())
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_promql(expr)} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(exprs)} rules found" in res.stdout


def test_the_dashboard_shows_the_operational_metrics() -> None:
    shown = set().union(*(promql_metric_names(e) for _, e in prometheus_exprs(dashboard())))
    wanted = {"paynorm_cdc_lag_seconds", "paynorm_slot_lag_bytes", "paynorm_slot_retained_wal_bytes",
              "paynorm_slot_wal_status", "paynorm_cycles_total", "paynorm_stage_duration_seconds_bucket",
              "paynorm_rows_landed_total", "paynorm_files", "paynorm_normalized_events", "paynorm_quarantined_rows",
              "paynorm_pending_llm_rows", "paynorm_llm_tokens_total", "paynorm_warehouse_up", "paynorm_lake_up",
              "paynorm_cdc_consumer_up", "paynorm_metrics_refresh_age_seconds", "up"}
    assert not wanted - shown, f"no panel shows {sorted(wanted - shown)}"


def test_every_sql_panel_reads_real_marts_and_columns() -> None:
    marts = mart_columns()
    assert "payment_kpis_daily" in marts and "approval_rate" in marts["payment_kpis_daily"]
    queries = sql_queries(dashboard())
    assert queries, "the dashboard has no SQL panel"
    problems = {title: sql_problems(q, marts) for title, q in queries}
    assert not any(problems.values()), problems


def test_sql_problems_finds_wrong_names() -> None:
    marts = {"kpis": {"provider", "approved"}}
    assert sql_problems(f"select provider, sum(approved) from {MARTS_SCHEMA}.kpis group by provider", marts) == []
    assert sql_problems(f"select providr from {MARTS_SCHEMA}.kpis", marts) == ["providr: no column of ['kpis']"]
    assert sql_problems(f"select k.aproved from {MARTS_SCHEMA}.kpis as k", marts) == [
        "k.aproved: no column aproved in kpis"]
    assert sql_problems(f"select 1 from {MARTS_SCHEMA}.nope", marts)[0].startswith(f"{MARTS_SCHEMA}.nope is no mart")


def test_the_monitoring_doc_lists_every_exported_paynorm_metric() -> None:
    """docs/monitoring.md's reference names each paynorm metric as PromQL spells it, and no other."""
    text = MONITORING_DOC.read_text()
    exported = exported_metrics()
    # as the reference names them: counters with _total, a histogram by its base name
    documented_forms = {n for n in exported if n.startswith("paynorm_")
                        and not n.endswith(("_bucket", "_sum", "_count"))}
    documented_forms |= {n[:-len("_bucket")] for n in exported if n.startswith("paynorm_") and n.endswith("_bucket")}
    in_doc = set(re.findall(r"`(paynorm_[a-z0-9_]+)(?![\w.])", text))
    missing = documented_forms - in_doc
    assert not missing, f"docs/monitoring.md does not describe {sorted(missing)}"
    stray = {n for n in in_doc - documented_forms
             if not (n.endswith(("_bucket", "_sum", "_count")) and n.rsplit("_", 1)[0] in documented_forms)}
    assert not stray, f"docs/monitoring.md names metrics paynorm does not export: {sorted(stray)}"
