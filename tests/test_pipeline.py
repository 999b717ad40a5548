"""`paynorm run` end to end on generated data: stages, failures, signals, metrics, status, logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.demo import generate_records, insert_records
from consumer.pipeline import Pipeline

from .conftest import REPO, Env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _generate(env: Env, n: int, seed: int = 3) -> int:
    with env.lake_conn() as lake:
        return insert_records(lake, generate_records(n, seed=seed))


def _runs(env: Env) -> list[tuple]:
    with env.wh_conn() as wh:
        return wh.execute("select run_id, outcome, stages, error from paynorm.runs order by run_id").fetchall()


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the child's output until ``text`` appears; what was read."""
    seen = ""
    deadline = time.time() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.time() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            seen += chunk.decode(errors="replace")
            if text in seen:
                return seen
        elif proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared:\n{seen[-3000:]}")


def test_run_once_end_to_end(env: Env, home: Path) -> None:
    n = _generate(env, 800)
    settings = env.settings(home=home)
    assert Pipeline(settings).run(once=True, interval=0) == 0
    runs = _runs(env)
    assert [r[1] for r in runs] == ["ok"]
    stages = {s["name"]: s for s in runs[0][2]}
    assert list(stages) == ["land", "transform", "llm", "marts"]
    assert stages["land"]["rows"] == n and all(s["outcome"] == "ok" for s in stages.values())
    with env.wh_conn() as wh:
        events = wh.execute("select count(*) from paynorm_marts.normalized_payment_events").fetchone()[0]
        quarantine = wh.execute("select count(*) from paynorm_marts.normalization_quarantine").fetchone()[0]
        pending = wh.execute("select count(*), count(distinct shape_key) from paynorm_marts.normalization_pending"
                             ).fetchone()
        providers = wh.execute("select count(distinct provider) from paynorm_marts.normalized_payment_events"
                               ).fetchone()[0]
    assert events + quarantine + pending[0] == n  # nothing lost, nothing doubled
    assert providers >= 15 and pending[1] >= 3 and quarantine > 0
    # a second cycle with nothing new changes no event
    assert Pipeline(settings).run(once=True, interval=0) == 0
    with env.wh_conn() as wh:
        again = wh.execute("select count(*) from paynorm_marts.normalized_payment_events").fetchone()[0]
    assert again == events
    status = subprocess.run([sys.executable, "-m", "consumer", "status"], cwd=REPO, env=env.cli_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"events          {events:,}" in status.stdout
    assert f"pending LLM     {pending[0]:,} rows in {pending[1]:,} shapes" in status.stdout
    assert "run 2" in status.stdout and " ok " in status.stdout


def test_dbt_failure_exits_non_zero_and_keeps_landed_data(env: Env, home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    skip = shutil.ignore_patterns(".venv", ".git", ".paynorm", "target", "bench", "__pycache__", "logs")
    shutil.copytree(REPO, project, ignore=lambda d, names: skip(d, names) | ({"tests"} if Path(d) == REPO else set()))
    (project / "models" / "intermediate" / "int_broken.sql").write_text(
        "select lake_key, no_such_column from {{ ref('stg_lake__transactions') }}\n")
    n = _generate(env, 50)
    proc = env.spawn("run", "--once", "--attempts", "2", PAYNORM_HOME=str(home), PAYNORM_DBT_PROJECT_DIR=str(project))
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 1, out
    assert "stage transform failed (attempt 2/2)" in out and "no_such_column" in out
    run = _runs(env)[-1]
    assert run[1] == "failed" and "no_such_column" in run[3]
    assert len(env.landed()) == n  # the land stage committed; the dbt failure touched nothing of it
    env.assert_converged()


def test_a_failing_llm_stage_never_stops_the_marts(env: Env, home: Path) -> None:
    """Another LLM step holds the warehouse's LLM lock: the stage fails, the marts still build with
    the rules that exist, the cycle is recorded as failed (exit 1 in --once)."""
    import psycopg

    from consumer import llm

    n = _generate(env, 120)
    Pipeline(env.settings(home=home)).cycle()  # creates the paynorm tables the lock lives next to
    settings = env.settings(home=home, openai_api_key="sk-test", openai_base_url="http://127.0.0.1:9/v1")
    with psycopg.connect(env.wh_dsn, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (llm.LOCK_KEY,))
        _generate(env, 30, seed=9)
        assert Pipeline(settings, attempts=1).run(once=True, interval=0) == 1
    run = _runs(env)[-1]
    stages = {s["name"]: s["outcome"] for s in run[2]}
    assert run[1] == "failed" and stages == {"land": "ok", "transform": "ok", "llm": "failed", "marts": "ok"}
    assert "holds the lock" in run[3]
    with env.wh_conn() as wh:
        placed = sum(wh.execute(f"select count(*) from paynorm_marts.{t}").fetchone()[0] for t in
                     ("normalized_payment_events", "normalization_quarantine", "normalization_pending"))
    assert placed == n + 30  # the new rows reached the marts although the LLM stage failed


@pytest.mark.parametrize("stage", ["land", "transform", "marts"])
def test_sigterm_ends_after_the_stage_in_flight(env: Env, home: Path, stage: str) -> None:
    n = _generate(env, 300)
    proc = env.spawn("run", "--once", PAYNORM_HOME=str(home))
    seen = _wait_for(proc, f"stage {stage}: starting")
    proc.send_signal(signal.SIGTERM)
    out = seen + proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    run = _runs(env)[-1]
    assert run[1] == ("ok" if stage == "marts" else "stopped"), out  # the last stage leaves nothing to skip
    names = [(s["name"], s["outcome"]) for s in run[2]]
    done = [name for name, outcome in names if outcome == "ok"]
    assert done[-1] == stage  # the stage in flight finished; the ones after it were skipped
    assert all(outcome == "skipped" for name, outcome in names[len(done):])
    if stage != "land":
        assert len(env.landed()) == n
    # whatever the moment, the next run picks up where this one stopped
    assert Pipeline(env.settings(home=home)).run(once=True, interval=0) == 0
    env.assert_converged()


def test_metrics_endpoint_and_json_logs(env: Env, home: Path) -> None:
    _generate(env, 120)
    with env.wh_conn() as wh:
        wh.execute("alter role warehouse password 'hunter2-secret'")
    secret_env = {"DATABASE_URL": env.wh_dsn.replace("warehouse@", "warehouse:hunter2-secret@"),
                  "PAYNORM_HOME": str(home)}
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = env.spawn("--log-format", "json", "run", "--interval", "3600", "--metrics-port", str(port),
                     "--metrics-addr", "127.0.0.1", PAYNORM_METRICS_REFRESH_SECONDS="0.5", **secret_env)
    seen = _wait_for(proc, '"cycle 1: ok', timeout=300)
    time.sleep(1.5)  # one background refresh after the cycle (PAYNORM_METRICS_REFRESH_SECONDS=0.5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30)
    ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30)
    assert (health.status, health.read()) == (200, b"ok\n") and (ready.status, ready.read()) == (200, b"ok\n")
    proc.send_signal(signal.SIGTERM)
    out = seen + proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    families = {f.name: f for f in text_string_to_metric_families(body)}
    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in families[name].samples
                   if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("paynorm_rows_landed", op="S") + value("paynorm_rows_landed", op="I") == 120
    assert value("paynorm_cycles", outcome="ok") == 1
    assert value("paynorm_cycles", outcome="failed") == 0  # present at zero, so rate() has a series
    assert value("paynorm_last_successful_cycle_timestamp_seconds") > time.time() - 600
    assert value("paynorm_warehouse_up") == 1 and value("paynorm_lake_up") == 1
    assert value("paynorm_cdc_consumer_up") == 1 and value("paynorm_cycle_interval_seconds") == 3600
    assert value("paynorm_slot_active", slot=env.slot) == 1
    assert value("paynorm_slot_wal_status", slot=env.slot, wal_status="reserved") == 1
    assert value("paynorm_cdc_lag_seconds", slot=env.slot) < 60
    assert "paynorm_slot_lag_bytes" in families and "paynorm_slot_retained_wal_bytes" in families
    assert value("paynorm_snapshot_done", slot=env.slot) == 1
    assert sum(s.value for s in families["paynorm_normalized_events"].samples) > 0
    assert "paynorm_quarantined_rows" in families and "paynorm_pending_llm_rows" in families
    assert "paynorm_cdc_batch_duration_seconds" in families and "paynorm_build_info" in families
    log_lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(log_lines) > 5
    records = [json.loads(line) for line in log_lines]
    for record in records:
        assert {"ts", "level", "logger", "message"} <= record.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), record["ts"]
    assert "hunter2-secret" not in out
    assert any("warehouse:***@" in record["message"] for record in records)
    cycle = next(r for r in records if r["message"].startswith("cycle 1: ok"))
    assert (cycle["outcome"], cycle["source"]) == ("ok", "cdc") and isinstance(cycle["run_id"], int)
    assert set(cycle["stage_seconds"]) == {"land", "transform", "llm", "marts"}


def test_run_with_the_poll_source(env: Env, home: Path) -> None:
    n = _generate(env, 100)
    assert Pipeline(env.settings(home=home), source="poll").run(once=True, interval=0) == 0
    with env.wh_conn() as wh:
        assert wh.execute("select count(*) from raw.lake_transactions where op = 'P'").fetchone()[0] == n
        assert wh.execute("select count(*) from paynorm_marts.normalized_payment_events").fetchone()[0] > 0


def test_run_with_the_files_source(env: Env, home: Path, tmp_path: Path) -> None:
    from consumer.demo import write_jsonl

    folder = tmp_path / "drop"
    folder.mkdir()
    with open(folder / "batch-001.jsonl", "w") as out:
        n = write_jsonl(generate_records(150, seed=11), out)
    assert Pipeline(env.settings(home=home), source="files", files_uri=str(folder)).run(once=True, interval=0) == 0
    with env.wh_conn() as wh:
        landed = wh.execute("select count(*) from raw.lake_transactions where op = 'F'").fetchone()[0]
        placed = wh.execute(
            "select (select count(*) from paynorm_marts.normalized_payment_events)"
            " + (select count(*) from paynorm_marts.normalization_quarantine)"
            " + (select count(*) from paynorm_marts.normalization_pending)").fetchone()[0]
    assert landed == n == placed
