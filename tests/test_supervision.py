"""The real CLI under supervision: `paynorm run` keeps its CDC consumer alive or ends non-zero; a fenced
standby takes over when the first consumer stops; an interrupted `--once` poll never reports success."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from .conftest import Env, insert_rows


class Output:
    """Everything a child process printed so far (stdout and stderr are merged), read without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.text = ""
        os.set_blocking(proc.stdout.fileno(), False)

    def read(self) -> str:
        assert self.proc.stdout is not None
        chunk = self.proc.stdout.read()
        if chunk:
            self.text += chunk.decode(errors="replace")
        return self.text

    def wait_for(self, text: str, timeout: float = 30, count: int = 1) -> None:
        """Until ``text`` has appeared ``count`` times; fails (with the output) at the timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.read().count(text) >= count:
                return
            if self.proc.poll() is not None:
                if self.read().count(text) >= count:
                    return
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} (x{count}) never appeared (exit {self.proc.poll()}):\n{self.text[-4000:]}")

    def finish(self, timeout: float = 60) -> int:
        """Wait for the process to end on its own; its exit code."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:.0f}s:\n{self.read()[-4000:]}") from None
        self.read()
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.finish(timeout)


def _eventually(check: Callable[[], bool], timeout: float, what: str, out: Output | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:.0f}s" + (f":\n{out.read()[-4000:]}" if out else ""))


def _landed_count(env: Env) -> tuple[int, int]:
    """Rows in the landing table and distinct lake keys among them (equal: nothing doubled)."""
    with env.wh_conn() as wh:
        if wh.execute("select to_regclass('raw.lake_transactions')").fetchone()[0] is None:
            return 0, 0
        return wh.execute("select count(*), count(distinct lake_key) from raw.lake_transactions").fetchone()


def _lake_count(env: Env) -> int:
    with env.lake_conn() as lake:
        return lake.execute("select count(*) from public.raw_transactions").fetchone()[0]


def _runs(env: Env) -> list[tuple]:
    with env.wh_conn() as wh:
        return wh.execute("select run_id, outcome, stages, error from paynorm.runs order by run_id").fetchall()


def _fast_cycles(tmp_path: Path) -> dict[str, str]:
    """Environment for `paynorm run` cycles of a second or two: the CDC consumer is supervised in the
    land stage, which every cycle runs first; the dbt stages after it are pointed at a project that
    does not exist, so they fail at once (one attempt, see --attempts 1) instead of building for 15 s."""
    return {"PAYNORM_HOME": str(tmp_path / "home"), "PAYNORM_DBT_PROJECT_DIR": str(tmp_path / "no-dbt-project")}


@contextlib.contextmanager
def _lake_refusing_connections(env: Env) -> Iterator[None]:
    """The lake database accepts no connection (a failover, a maintenance window): every consumer
    session on it is cut, and new ones are refused, until the block ends."""
    with env.lake.connect() as admin:
        admin.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(env.lake_db)))
        try:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity"
                          " where datname = %s and usename = 'lake_reader'", (env.lake_db,))
            yield
        finally:
            admin.execute(sql.SQL("alter database {} allow_connections true").format(sql.Identifier(env.lake_db)))


def _drop_slot(env: Env) -> None:
    """Drop the consumer's slot on the lake, cutting its walsender first (an active slot cannot be dropped)."""
    deadline = time.monotonic() + 20
    with env.lake.connect() as admin:
        while True:
            admin.execute("select pg_terminate_backend(active_pid) from pg_replication_slots"
                          " where slot_name = %s and database = %s and active_pid is not null",
                          (env.slot, env.lake_db))
            try:
                admin.execute("select pg_drop_replication_slot(%s)", (env.slot,))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# -- a) `paynorm run` supervises its CDC consumer ----------------------------------------------------


def test_run_restarts_a_cdc_consumer_that_stopped_and_lands_again(env: Env, tmp_path: Path) -> None:
    """The lake refuses connections for longer than PAYNORM_RETRY_FOR: the consumer thread gives up and
    ends. The process must restart it once the lake is back (and say so), and rows inserted afterwards
    must land, exactly once; the process is still up all along."""
    with env.lake_conn() as lake:
        insert_rows(lake, 20)
    proc = env.spawn("run", "--interval", "1", "--attempts", "1", PAYNORM_RETRY_FOR="1", **_fast_cycles(tmp_path))
    out = Output(proc)
    out.wait_for("streaming slot paynorm")
    _eventually(lambda: _landed_count(env) == (20, 20), 20, "the snapshot landing", out)
    with _lake_refusing_connections(env):
        out.wait_for("CDC consumer stopped:", timeout=20)  # the consumer gave up: its thread ended
    out.wait_for("restarting it in", timeout=20)
    out.wait_for("streaming slot paynorm", count=2, timeout=20)  # the restarted consumer streams again
    with env.lake_conn() as lake:
        insert_rows(lake, 15, start=100)
    _eventually(lambda: _landed_count(env) == (35, 35), 20, "rows inserted after the restart landing", out)
    assert proc.poll() is None, out.read()
    assert out.stop() == 0, out.text
    assert "Traceback" not in out.text, out.text
    env.assert_converged()
    details = [s["detail"] for run in _runs(env) for s in run[2] if s["name"] == "land"]
    assert any(d.startswith("CDC consumer restarted") for d in details), details  # paynorm.runs says so too


def test_run_waits_for_a_warehouse_that_is_away_when_a_cycle_starts(env: Env, tmp_path: Path) -> None:
    """A continuous run whose warehouse refuses connections when a cycle begins (a failover) waits
    and goes on once it is back: it does not exit 1 for an outage the next cycle survives."""
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    proc = env.spawn("run", "--interval", "1", "--attempts", "1", **_fast_cycles(tmp_path))
    out = Output(proc)
    out.wait_for("cycle 1:")
    with env.wh.connect() as admin:
        admin.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(env.wh_db)))
        try:
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s"
                          " and pid <> pg_backend_pid()", (env.wh_db,))
            out.wait_for("cycle not started", timeout=20)
        finally:
            admin.execute(sql.SQL("alter database {} allow_connections true").format(sql.Identifier(env.wh_db)))
    cycles = out.read().count("cycle ")
    _eventually(lambda: out.read().count("cycle ") > cycles + 1, 30, "a cycle after the warehouse came back", out)
    with env.lake_conn() as lake:
        insert_rows(lake, 5, start=100)
    _eventually(lambda: _landed_count(env) == (10, 10), 30, "rows inserted after the outage landing", out)
    assert proc.poll() is None, out.read()
    assert out.stop() == 0, out.text


def test_run_ends_with_exit_2_in_one_line_when_the_slot_is_dropped(env: Env, tmp_path: Path) -> None:
    """A dropped slot cannot be recovered by restarting the consumer (changes may be lost: a re-snapshot
    is needed), so the process ends, exit 2, with a last line saying why and what to do; soon, even
    with a long --interval between cycles: never a live process landing nothing."""
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    proc = env.spawn("run", "--interval", "300", "--attempts", "1", **_fast_cycles(tmp_path))
    out = Output(proc)
    out.wait_for("streaming slot paynorm")
    out.wait_for("cycle 1:")  # now waiting for the next cycle, in 300 s
    _drop_slot(env)
    code = out.finish(timeout=30)  # the bound: well under the interval
    assert code == 2, out.text
    assert "Traceback" not in out.text, out.text
    last = out.text.strip().splitlines()[-1]
    assert "paynorm run stops (exit 2)" in last and "no longer exists" in last and "--resnapshot" in last, out.text


def test_run_ends_non_zero_when_its_cdc_consumer_keeps_stopping(env: Env, tmp_path: Path) -> None:
    """The lake stays unreachable: each restarted consumer gives up after PAYNORM_RETRY_FOR. After
    MAX_STREAM_RESTARTS restarts in a row the process must end (exit 5) with one line that says so,
    within a bounded time, so systemd/Kubernetes see it, instead of living on landing nothing."""
    from consumer.errors import EXIT_CONSUMER_DOWN
    from consumer.pipeline import Pipeline

    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    proc = env.spawn("run", "--interval", "1", "--attempts", "1", PAYNORM_RETRY_FOR="1", **_fast_cycles(tmp_path))
    out = Output(proc)
    out.wait_for("streaming slot paynorm")
    with _lake_refusing_connections(env):
        code = out.finish(timeout=60)  # the bound: six short-lived consumers and their back-off
    assert code == EXIT_CONSUMER_DOWN, out.text
    assert out.text.count("restarting it in") == Pipeline.MAX_STREAM_RESTARTS, out.text
    last = out.text.strip().splitlines()[-1]
    assert f"paynorm run stops (exit 5): the CDC consumer stopped {Pipeline.MAX_STREAM_RESTARTS + 1} times in a row" \
        in last, out.text
    assert "Traceback" not in out.text, out.text


def test_a_crashed_cdc_consumer_is_restarted_and_its_error_redacted(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception in the consumer thread (a bug, a change it cannot handle) ends the thread
    with its traceback logged, and nothing of a password its text may quote; the supervisor restarts
    it. The consumer is replaced by one that crashes once: no user action makes the real one crash."""
    import consumer.sources.postgres.replicate as rep
    from consumer.pipeline import Pipeline

    secret = "s3cr3t-Pa55"
    settings = env.settings(lake_dsn=env.lake_dsn.replace("lake_reader@", f"lake_reader:{secret}@"), max_backoff=0.1)
    calls: list[int] = []

    def crashes_once(s: object, **kw: object) -> rep.ReplicateResult:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError(f"cannot read a change of {settings.lake_dsn}")
        kw["stop"].wait(30)  # type: ignore[attr-defined]
        return rep.ReplicateResult(0)

    monkeypatch.setattr(rep, "replicate", crashes_once)
    caplog.set_level(logging.INFO)
    pipeline = Pipeline(settings, backoff=0.1)
    pipeline._start_streamer()
    assert pipeline.streamer is not None
    pipeline.streamer.join(10)
    crashed = pipeline.stream_result
    assert crashed.exit_code == 1 and "ValueError" in crashed.message and secret not in crashed.message
    assert pipeline._supervise() == "CDC consumer restarted (1)"
    assert pipeline.streamer.is_alive() and len(calls) == 2
    pipeline.stream_stop.set()
    pipeline.streamer.join(10)
    assert "the CDC consumer crashed: ValueError" in caplog.text and "Traceback" in caplog.text
    assert secret not in caplog.text, caplog.text


# -- b) a fenced standby takes over -------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_standby_consumer_takes_over_when_the_first_stops(env: Env, sig: int) -> None:
    """Two continuous consumers on one slot: the second stands by (the fence) instead of exiting, and
    when the first stops, cleanly or killed, it takes over: every row inserted afterwards lands once."""
    with env.lake_conn() as lake:
        insert_rows(lake, 30)
    first = Output(env.spawn("replicate"))
    first.wait_for("streaming slot paynorm")
    _eventually(lambda: _landed_count(env) == (30, 30), 20, "the first consumer's snapshot", first)
    second = Output(env.spawn("replicate"))
    second.wait_for("standing by", timeout=20)
    time.sleep(1.5)  # a few stand-by rounds: it must still be waiting, not exited
    assert second.proc.poll() is None, second.read()
    with env.lake_conn() as lake:
        insert_rows(lake, 10, start=1000)  # landed by the first, still running
    _eventually(lambda: _landed_count(env) == (40, 40), 20, "rows landed by the first consumer", first)
    code = first.stop(sig, timeout=30)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), first.text
    with env.lake_conn() as lake:
        insert_rows(lake, 25, start=2000)  # between the first's end and the takeover
    second.wait_for("taking over slot paynorm", timeout=20)
    with env.lake_conn() as lake:
        insert_rows(lake, 25, start=3000)
    _eventually(lambda: _landed_count(env) == (90, 90), 30, "rows landed by the standby", second)
    second.wait_for("batch:", timeout=10)  # logged just after the commit the count already sees
    assert "batch:" in second.read().split("taking over slot paynorm", 1)[1], second.text  # the second landed them
    assert _lake_count(env) == 90
    assert second.stop() == 0, second.text
    env.assert_converged()


# -- c) an interrupted --once poll is not a success ---------------------------------------------------


def test_run_once_poll_interrupted_does_not_record_land_ok(env: Env, tmp_path: Path) -> None:
    """SIGTERM in the middle of the poll pass: the cycle must not say the land stage succeeded (rows
    after the last page were not read), and --once exits 1 so cron sees the pass did not end."""
    with env.lake_conn() as lake:
        insert_rows(lake, 3000)
    proc = env.spawn("run", "--once", "--source", "poll", PAYNORM_BATCH_SIZE="3", PAYNORM_HOME=str(tmp_path / "h"))
    out = Output(proc)
    out.wait_for("poll batch:")
    code = out.stop()
    assert code == 1, out.text
    run = _runs(env)[-1]
    stages = {s["name"]: s for s in run[2]}
    assert stages["land"]["outcome"] == "failed", run
    assert "interrupted" in stages["land"]["error"], run
    assert run[1] == "failed", run
    assert 0 < _landed_count(env)[0] < 3000  # it really was cut short


def test_poll_once_interrupted_exits_1(env: Env) -> None:
    """`paynorm poll --once` cut short by SIGTERM commits the page in flight but exits 1 (the pass did
    not end), saying so; the next pass lands the rest."""
    with env.lake_conn() as lake:
        insert_rows(lake, 3000)
    out = Output(env.spawn("poll", "--once", "--batch-size", "3"))
    out.wait_for("poll batch:")
    code = out.stop()
    assert code == 1, out.text
    assert "interrupted before the pass ended" in out.text, out.text
    assert "Traceback" not in out.text, out.text
    assert 0 < _landed_count(env)[0] < 3000
    again = Output(env.spawn("poll", "--once"))
    assert again.finish(timeout=60) == 0, again.text
    env.assert_converged()
