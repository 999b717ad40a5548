"""`paynorm run`: one cycle = land from the source -> dbt (staging, intermediate) -> LLM step -> dbt marts.

`--once` runs one cycle and exits (non-zero when a stage failed, so cron and Kubernetes see it).
Without it cycles repeat every interval; with the CDC source the consumer streams continuously in
a background thread between transforms. A failing stage is logged with its cause and retried with
back-off; landed data is never touched by a failure downstream. Every cycle is recorded in
``paynorm.runs``. SIGTERM/SIGINT end cleanly after the stage in flight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import psycopg

from .ops import metrics
from .errors import (EXIT_CONFIG, EXIT_CONSUMER_DOWN, EXIT_FAILED, EXIT_FENCED, EXIT_OK, EXIT_SLOT_LOST, ConfigError, FencedError,
                     PaynormError, SlotLostError, TransientError, classify, require_dsn)
from .landing import init_warehouse
from .secrets import redact_error
from .settings import Settings

log = logging.getLogger(__name__)

SOURCES = ("cdc", "poll", "files")
# What the transform stage builds before the LLM step: the intermediate models and the two views
# that say which landed rows no rule could place (the LLM step's input).
LLM_INPUT_MODELS = ("+intermediate", "normalization_pending", "normalization_quarantine")

_RUNS_DDL = """
create table if not exists paynorm.runs (
    run_id       bigserial primary key,
    started_at   timestamptz not null default now(),
    ended_at     timestamptz,
    source       text not null,
    outcome      text not null default 'running' check (outcome in ('running', 'ok', 'failed', 'stopped')),
    stages       jsonb not null default '[]',   -- per stage: name, outcome, rows, seconds, attempts, error
    error        text
)
"""


class StageFailed(RuntimeError):
    """A stage did not succeed; the message is the cause to log and record."""


class FatalStage(PaynormError):
    """The process cannot go on (the CDC consumer keeps dying): exit non-zero rather than live on."""

    exit_code = EXIT_CONSUMER_DOWN


def _error_for(exit_code: int, message: str) -> Exception:
    """The error a source's exit code stands for (a permanent one ends the cycle at once)."""
    kinds = {EXIT_CONFIG: ConfigError, EXIT_FENCED: FencedError, EXIT_SLOT_LOST: SlotLostError}
    return kinds.get(exit_code, StageFailed)(message)


@dataclass
class StageResult:
    name: str
    outcome: str = "ok"  # ok | failed | skipped
    rows: int | None = None
    seconds: float = 0.0
    attempts: int = 0
    detail: str = ""
    error: str | None = None
    exit_code: int = 0  # the error's exit code when the stage failed permanently


@dataclass
class CycleResult:
    run_id: int | None
    outcome: str = "ok"  # ok | failed | stopped
    stages: list[StageResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 ok/stopped; a permanent stage error's own code (4 configuration...); else 1."""
        if self.outcome != "failed":
            return EXIT_OK
        return next((st.exit_code for st in self.stages if st.exit_code), EXIT_FAILED)

    def line(self) -> str:
        parts = [f"{s.name} {s.outcome}{'' if s.rows is None else f' ({s.rows:,} rows)'} {s.seconds:.1f}s"
                 for s in self.stages]
        return f"cycle {self.run_id}: {self.outcome}; " + ", ".join(parts)


class Pipeline:
    def __init__(self, settings: Settings, *, source: str = "cdc", files_uri: str | None = None,
                 stop: threading.Event | None = None, attempts: int = 3, backoff: float = 2.0) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        self.settings = settings
        self.source = source
        self.files_uri = files_uri
        self.stop = stop or threading.Event()
        self.attempts = attempts
        self.backoff = backoff
        self.streamer: threading.Thread | None = None
        self.stream_stop = threading.Event()
        self.stream_result: Any = None
        self._stream_restarts = 0
        self._stream_started = 0.0
        self._secrets = (settings.lake_dsn, settings.warehouse_dsn)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.warehouse_dsn, autocommit=True)

    def _start_run(self) -> int:
        """Record the cycle; a warehouse that refuses us (password, role, database) is a permanent
        error, raised classified (one line, exit 4), not a traceback."""
        require_dsn(self.settings.warehouse_dsn, "DATABASE_URL")
        if self.source != "files":
            require_dsn(self.settings.lake_dsn, "DATALAKE_DATABASE_URL")
        try:
            with self._conn() as conn:
                init_warehouse(conn)
                conn.execute(_RUNS_DDL)
                row = conn.execute("insert into paynorm.runs (source) values (%s) returning run_id",
                                   (self.source,)).fetchone()
        except psycopg.Error as e:
            raise classify(e, secrets=self._secrets) from None
        assert row is not None
        return int(row[0])

    def _finish_run(self, result: CycleResult) -> None:
        errors = [f"{s.name}: {s.error}" for s in result.stages if s.error]
        try:
            with self._conn() as conn:
                conn.execute("update paynorm.runs set ended_at = now(), outcome = %s, stages = %s::jsonb, error = %s"
                             " where run_id = %s",
                             (result.outcome, json.dumps([asdict(s) for s in result.stages]),
                              "; ".join(errors) or None, result.run_id))
        except psycopg.Error as e:
            log.warning("could not record run %s: %s", result.run_id, str(e).strip().splitlines()[0])

    # -- stages -----------------------------------------------------------------------------------

    def _stage(self, name: str, fn: Callable[[], tuple[int | None, str]], attempts: int | None = None) -> StageResult:
        """Run one stage with retries and back-off (``attempts``, default --attempts); never raises. A
        permanent problem (consumer/errors.py: bad DSN, password, privilege, a fenced or lost slot) is not
        retried: ``res.exit_code`` says it."""
        attempts = attempts or self.attempts
        res = StageResult(name)
        started = time.monotonic()
        log.info("stage %s: starting", name)
        delay = self.backoff
        while True:
            res.attempts += 1
            try:
                with metrics.STAGE_SECONDS.labels(name).time():
                    res.rows, res.detail = fn()
                res.outcome, res.error = "ok", None
                break
            except Exception as e:  # noqa: BLE001 - a stage failure is reported and retried, never fatal
                err = classify(e, secrets=self._secrets) if isinstance(e, (psycopg.Error, PaynormError)) else e
                res.outcome, res.error = "failed", (str(err).strip().splitlines() or [type(e).__name__])[0][:500]
                log.warning("stage %s failed (attempt %d/%d): %s", name, res.attempts, attempts, res.error,
                            extra={"stage": name, "attempt": res.attempts, "attempts": attempts, "error": res.error,
                                   "exit_code": err.exit_code if isinstance(err, PaynormError) else None})
                log.debug("%s", traceback.format_exc())
                if isinstance(err, PaynormError) and err.exit_code not in (EXIT_OK, EXIT_FAILED):
                    res.exit_code = err.exit_code  # permanent: retrying cannot help
                    break
                if res.attempts >= attempts or self.stop.is_set():
                    break
                self.stop.wait(delay)
                delay *= 2
        res.seconds = round(time.monotonic() - started, 3)
        metrics.STAGE_RUNS.labels(name, res.outcome).inc()
        return res

    def _land(self) -> tuple[int | None, str]:
        s = self.settings
        if self.source == "cdc":
            if self.streamer is not None:  # continuous mode: the consumer streams on its own
                return None, self._supervise()
            from .sources.postgres.replicate import replicate

            r = replicate(s, once=True, stop=self.stop)
            if r.exit_code:
                raise _error_for(r.exit_code, r.message)
            rows = (r.stats.rows_written + r.stats.snapshot_rows) if r.stats else 0
            return rows, "replicated to the lake's position"
        if self.source == "poll":
            from .sources.postgres.poll import poll

            p = poll(s, once=True, stop=self.stop)
            if p.stopped:
                raise StageFailed(f"poll interrupted after {p.rows_read} rows read; the pass did not end")
            return p.rows_written, f"{p.rows_read} rows read"
        from .sources.files import load

        f = load(s, self.files_uri, once=True, stop=self.stop)
        if f.exit_code == EXIT_FAILED:
            raise StageFailed(f"file load failed (exit {f.exit_code}); see paynorm.processed_files")
        if f.exit_code:
            raise _error_for(f.exit_code, f.message or f"file load failed (exit {f.exit_code})")
        return f.stats.rows_landed, "files loaded"

    def _dbt(self, select: list[str], extra: list[str], sync_rules: bool) -> Callable[[], tuple[int | None, str]]:
        def run() -> tuple[int | None, str]:
            from .rules import DEFAULT_DIR
            from .transform import transform

            r = transform(self.settings.warehouse_dsn, home=self.settings.home, select=select, extra_args=extra,
                          sync_rules=sync_rules, project_dir=self.settings.dbt_project_dir or None, quiet=True,
                          mappings_dir=self.settings.mappings_dir or DEFAULT_DIR)
            if not r.success:
                raise StageFailed(r.summary().replace("\n", " | "))
            rows = sum(n.rows_affected or 0 for n in r.nodes)
            return rows, r.summary().splitlines()[0]
        return run

    def _marts(self) -> tuple[int | None, str]:
        select = ["intermediate+"] if self._llm_changed else ["marts"]
        return self._dbt(select, [], sync_rules=False)()

    def _llm(self) -> tuple[int | None, str]:
        from .llm import run_llm_step

        r = run_llm_step(self.settings.warehouse_dsn, self.settings)
        # the intermediate model only needs building again when the step changed what it reads
        # (a new rule, a shape marked as tried); otherwise the marts stage builds the marts alone
        self._llm_changed = any(s.outcome not in ("waiting", "skipped", "dry_run") for s in r.shapes)
        metrics.LLM_CALLS.inc(r.calls)
        metrics.LLM_TOKENS.labels("in").inc(r.tokens_in)
        metrics.LLM_TOKENS.labels("out").inc(r.tokens_out)
        log.info("%s", r.summary())
        return r.rows_waiting, r.summary()

    # -- cycles -----------------------------------------------------------------------------------

    def cycle(self) -> CycleResult:
        self._llm_changed = True  # unless the LLM step says otherwise (a failed step: build everything)
        result = CycleResult(self._start_run())
        steps: list[tuple[str, Callable[[], tuple[int | None, str]]]] = [
            ("land", self._land),
            # Staging and intermediate with their own tests only ("cautious": the conservation test
            # of the marts waits for the marts), then the LLM step, then intermediate again (rules the
            # LLM added re-normalize their rows) and the marts.
            ("transform", self._dbt(list(LLM_INPUT_MODELS), ["--indirect-selection", "cautious"], sync_rules=True)),
            ("llm", self._llm),
            ("marts", self._marts),
        ]
        for name, fn in steps:
            if self.stop.is_set():
                result.outcome = "stopped"
                result.stages.append(StageResult(name, outcome="skipped"))
                continue
            # the land stage is tried once: its source owns reconnects (run_source, --retry-for)
            stage = self._stage(name, fn, attempts=1 if name == "land" else None)
            result.stages.append(stage)
            if stage.outcome == "failed":
                result.outcome = "failed"
                if name == "llm" and not stage.exit_code:
                    continue  # the marts still build, with the rules that exist; the cycle says it failed
                break  # later stages need this one; landed data stays as it is
        if result.outcome == "ok" and self.stop.is_set() and any(s.outcome == "skipped" for s in result.stages):
            result.outcome = "stopped"
        self._finish_run(result)
        metrics.CYCLES.labels(result.outcome).inc()
        metrics.HEALTH.cycle_ended(result.outcome)
        log.info("%s", result.line(), extra={
            "run_id": result.run_id, "outcome": result.outcome, "source": self.source,
            "seconds": round(sum(s.seconds for s in result.stages), 3),
            "stage_seconds": {s.name: s.seconds for s in result.stages},
            "stage_outcomes": {s.name: s.outcome for s in result.stages},
            "stage_rows": {s.name: s.rows for s in result.stages if s.rows is not None}})
        return result

    def _start_streamer(self) -> None:
        from .sources.postgres.replicate import ReplicateResult, replicate

        def target() -> None:
            try:
                self.stream_result = replicate(self.settings, once=False, stop=self.stream_stop)
            except Exception as e:  # noqa: BLE001 - a crash of the thread is reported, never silent
                # the error text may quote a DSN: the line and the traceback are redacted like every error
                line = redact_error(f"{type(e).__name__}: {e}", self._secrets).strip().splitlines()[0]
                log.error("the CDC consumer crashed: %s\n%s", line,
                          redact_error("".join(traceback.format_exception(e)), self._secrets).rstrip())
                self.stream_result = ReplicateResult(EXIT_FAILED, f"crashed: {line}")
            if self.stream_result.exit_code:
                log.error("CDC consumer stopped: %s", self.stream_result.message)

        self._stream_started = time.monotonic()
        self.streamer = threading.Thread(target=target, name="cdc-consumer", daemon=True)
        self.streamer.start()
        # /healthz and paynorm_cdc_consumer_up follow the thread (503 / 0 while it is down)
        metrics.HEALTH.consumer_alive = self._consumer_alive

    def _consumer_alive(self) -> bool:
        return self.streamer is not None and self.streamer.is_alive()

    #: Restarts of a CDC consumer that ended unexpectedly, before the process gives up (exit code).
    MAX_STREAM_RESTARTS = 5

    def _supervise(self) -> str:
        """Continuous mode: the CDC thread must be alive. One that ended on a permanent problem
        (configuration, fence, lost slot) ends the process with that code; one that ended otherwise
        is restarted with back-off, up to MAX_STREAM_RESTARTS times in a row, then the process ends
        non-zero: never a live process that lands nothing."""
        assert self.streamer is not None
        if self.streamer.is_alive():
            # restarts count "in a row": a consumer alive for longer than it can fail without ending
            # (its retry deadline and one back-off) has worked since its restart
            if time.monotonic() - self._stream_started > (self.settings.retry_for or 0) + self.settings.max_backoff:
                self._stream_restarts = 0
            return "streaming"
        result = self.stream_result
        code = getattr(result, "exit_code", EXIT_FAILED)
        message = getattr(result, "message", "") or "the CDC consumer ended"
        if code not in (EXIT_OK, EXIT_FAILED):
            raise _error_for(code, message)
        if self.stop.is_set():
            return "stopped"
        self._stream_restarts += 1
        if self._stream_restarts > self.MAX_STREAM_RESTARTS:
            raise FatalStage(f"the CDC consumer stopped {self._stream_restarts} times in a row: {message}")
        delay = min(self.backoff * 2 ** (self._stream_restarts - 1), self.settings.max_backoff)
        log.warning("the CDC consumer stopped (%s); restarting it in %.0fs (%d/%d)", message, delay,
                    self._stream_restarts, self.MAX_STREAM_RESTARTS)
        metrics.STREAM_RESTARTS.inc()
        if self.stop.wait(delay):
            return "stopped"
        self._start_streamer()
        return f"CDC consumer restarted ({self._stream_restarts})"

    def _wait_for_next_cycle(self, interval: float) -> None:
        """The pause between cycles, cut short when the CDC consumer ends: the next cycle's land
        stage restarts it (or ends the process) then, not an interval later (a long --interval
        would otherwise leave a lost slot unnoticed for that long)."""
        deadline = time.monotonic() + interval
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or (self.streamer is not None and not self.streamer.is_alive()):
                return
            self.stop.wait(min(left, 0.5))

    def run(self, *, once: bool, interval: float) -> int:
        """Cycles until stopped; the exit code (0 ok; with --once, 1 when a stage failed; a permanent
        problem, 4 configuration / 3 fenced / 2 slot lost, ends the process in any mode)."""
        metrics.HEALTH.cycle_interval = interval
        metrics.CYCLE_INTERVAL.set(interval)
        if once:
            return self.cycle().exit_code
        if self.source == "cdc":
            self._start_streamer()
        try:
            while not self.stop.is_set():
                try:
                    result = self.cycle()
                except TransientError as e:  # the warehouse is away at the start of a cycle: wait, never exit
                    wait = max(1.0, min(interval, self.settings.max_backoff))
                    log.warning("cycle not started: %s; trying again in %.0fs", e, wait)
                    self._wait_for_next_cycle(wait)
                    continue
                if result.exit_code not in (EXIT_OK, EXIT_FAILED):
                    cause = next((s.error for s in result.stages if s.exit_code), None) or "a stage failed"
                    log.error("paynorm run stops (exit %d): %s", result.exit_code, cause)
                    return result.exit_code
                self._wait_for_next_cycle(interval)
            return EXIT_OK
        finally:
            self.stream_stop.set()
            if self.streamer is not None:
                self.streamer.join(timeout=120)
