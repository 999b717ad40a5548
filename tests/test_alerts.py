"""The Prometheus alert rules (deploy/prometheus/) with the real tools: promtool checks and unit-tests
them, every rule selects metrics paynorm exports, and a real Prometheus scrapes a real `paynorm run`
against the suite's PostgreSQL clusters, loads the rules and evaluates them without error (and runs
every dashboard query, Prometheus and SQL, against what that run produced)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from consumer.demo import generate_records, insert_records

from .conftest import REPO, Env
from .test_dashboard import (
    MONITORING_DOC, PROMETHEUS_SERIES, dashboard, exported_metrics, grafana_promql, grafana_sql,
    prometheus_exprs, promql_metric_names, sql_queries,
)

PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "paynorm.rules.yml"
RULES_TEST = PROM_DIR / "paynorm.rules.test.yml"
CONFIG = PROM_DIR / "prometheus.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: `make prometheus` (scripts/ensure-prometheus.sh) installs Debian's prometheus")
    return path


def promtool(*args: str) -> str:
    res = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"promtool {' '.join(args)} exited {res.returncode}:\n{out}"
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# -- static ----------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_config() -> None:
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out, out
    out = promtool("check", "config", str(CONFIG))
    assert "is valid prometheus config file syntax" in out, out


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out, out


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no test where it stays silent"


def test_every_alert_has_for_severity_annotations_and_a_runbook() -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.+)$", MONITORING_DOC.read_text(), re.MULTILINE)}
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        text = ann["summary"] + ann["description"]
        assert "$labels." in text or "$value" in text, f"{name}: annotations say nothing about the series"
        doc, _, anchor = ann["runbook"].partition("#")
        assert doc == "docs/monitoring.md" and anchor == name.lower() and anchor in anchors, \
            f"{name}: runbook {ann['runbook']} has no section in docs/monitoring.md"


def test_every_rule_names_a_metric_paynorm_exports() -> None:
    exported = exported_metrics()
    unknown = {(r["alert"], name) for r in alert_rules() for name in promql_metric_names(r["expr"])
               if name not in exported | PROMETHEUS_SERIES}
    assert not unknown, f"alert rules select metrics paynorm does not export: {sorted(unknown)}"
    used = set().union(*(promql_metric_names(r["expr"]) for r in alert_rules()))
    for name in ("paynorm_cdc_lag_seconds", "paynorm_last_successful_cycle_timestamp_seconds",
                 "paynorm_cycle_interval_seconds", "paynorm_stage_runs_total", "paynorm_last_cycle_failed",
                 "paynorm_files", "paynorm_slot_wal_status", "paynorm_cdc_consumer_up", "paynorm_warehouse_up",
                 "paynorm_lake_up", "paynorm_metrics_refresh_age_seconds", "up"):
        assert name in used, f"no alert on {name}"


# -- a real Prometheus scraping a real paynorm run ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def wait_until(what: str, check: Any, timeout: float, procs: dict[str, tuple[subprocess.Popen, Path]]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited {proc.returncode} while waiting for {what}:\n{log.read_text()[-4000:]}")
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as e:  # Prometheus still starting
            last = e
        time.sleep(0.5)
    logs = "\n".join(f"--- {n}\n{log.read_text()[-3000:]}" for n, (_, log) in procs.items())
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\n{logs}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_paynorm_and_evaluates_the_rules(env: Env, tmp_path: Path) -> None:
    with env.lake_conn() as lake:
        n = insert_records(lake, generate_records(150, seed=5))
    metrics_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "paynorm", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    prom_log, run_log = tmp_path / "prometheus.log", tmp_path / "paynorm.log"
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        with open(prom_log, "wb") as out:
            prom = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs["prometheus"] = (prom, prom_log)
        with open(run_log, "wb") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--interval", "3600", "--metrics-port", str(metrics_port),
                 "--metrics-addr", "127.0.0.1"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env=env.cli_env(PAYNORM_HOME=str(tmp_path / "home"), PAYNORM_METRICS_REFRESH_SECONDS="1"))
        env.procs.append(run)  # killed by the fixture if this test dies before the finally
        procs["paynorm run"] = (run, run_log)
        api = PromAPI(prom_port)

        # scraped: the process metrics, then the refreshed gauges, then a finished cycle
        wait_until("paynorm_build_info == 1", lambda: api.value('paynorm_build_info{job="paynorm"}') == 1, 120, procs)
        info = api.query('paynorm_build_info{job="paynorm"}')[0]["metric"]
        assert info["instance"] == f"127.0.0.1:{metrics_port}" and info["version"]
        wait_until("paynorm_warehouse_up == 1", lambda: api.value("paynorm_warehouse_up") == 1, 120, procs)
        wait_until("an ok cycle", lambda: (api.value('paynorm_cycles_total{outcome="ok"}') or 0) >= 1, 600, procs)
        wait_until("a refresh after the cycle",
                   lambda: api.value("paynorm_last_successful_cycle_timestamp_seconds") is not None, 60, procs)
        assert api.value('up{job="paynorm"}') == 1
        assert api.value("paynorm_lake_up") == 1
        assert api.value("paynorm_cdc_consumer_up") == 1
        assert api.value('sum(paynorm_rows_landed_total{op=~"S|I"})') == n
        assert api.value("paynorm_cdc_lag_seconds") is not None

        # the rules: loaded from our file, every rule evaluated without error
        def evaluated() -> list[dict[str, Any]]:
            groups = api.get("/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return groups if rules and all(r["lastEvaluation"] > "2000" for r in rules) else []

        groups = wait_until("every rule evaluated", evaluated, 60, procs)
        assert {g["name"] for g in groups} == {"paynorm"} and {g["file"] for g in groups} == {str(RULES)}
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(rules) == {r["alert"] for r in alert_rules()}
        broken = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
        assert not broken, f"rules that do not evaluate: {broken}"
        # a healthy run: no alert pending or firing on the conditions that are all fine here
        active = {a["labels"]["alertname"] for a in api.get("/api/v1/alerts")["alerts"]}
        assert not active & {"PaynormTargetDown", "PaynormTargetMissing", "PaynormWarehouseDown", "PaynormLakeDown",
                             "PaynormCdcConsumerDown", "PaynormSlotWalAtRisk", "PaynormLastCycleFailed"}, active

        # every dashboard query, as Grafana sends it, through this Prometheus
        empty = {where for where, expr in prometheus_exprs(dashboard()) if not api.query(grafana_promql(expr))}
        # what a CDC run without a poll source, LLM calls or quarantined rows legitimately lacks
        allowed_empty = {"Consumer restarts and poll watermark age B", "Quarantine by reason A",
                         "LLM requests and recorded calls B"}
        assert not empty - allowed_empty, f"dashboard queries without data: {sorted(empty - allowed_empty)}"
    finally:
        for proc, _ in procs.values():
            stop(proc)

    assert run.returncode == 0, run_log.read_text()[-4000:]
    # the SQL panels on the warehouse that run built
    now = datetime.now(timezone.utc)
    with psycopg.connect(env.wh_dsn, autocommit=True) as wh:
        for title, query in sql_queries(dashboard()):
            rows = wh.execute(grafana_sql(query), {"from": now - timedelta(days=30), "to": now}).fetchall()
            assert rows, f"SQL panel {title!r} returned no rows"
