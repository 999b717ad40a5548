"""Log lines and progress, without a database: JSON lines a collector can parse (UTC timestamps with
milliseconds, structured fields at the top level, a traceback as one field), human lines in UTC too,
and progress that becomes periodic log lines with rate and ETA when stderr is not a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from consumer.cli import cli
from consumer.ops import logs, progress
from consumer.ops.logs import HumanFormatter, JsonFormatter
from consumer.ops.progress import Progress

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# 2026-12-02T05:20:09.123Z as a Unix time
WHEN = 1796188809.123


def _record(msg: str, *args: object, level: int = logging.INFO, exc: bool = False, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("consumer.sources.postgres.cdc")
    exc_info = None
    if exc:
        try:
            raise ValueError("the warehouse said no\nsecond line of the error")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logger.makeRecord(logger.name, level, __file__, 1, msg, args, exc_info, extra=extra)
    record.created = WHEN
    return record


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The CLI reconfigures the root logger: give the next test back what it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_has_utc_ms_timestamp_level_logger_message_and_extra_fields() -> None:
    line = JsonFormatter().format(_record("batch: %d rows written, up to %s", 42, "0/16B3748",
                                          rows_written=42, lsn="0/16B3748", seconds=0.125))
    assert "\n" not in line
    record = json.loads(line)
    assert record["ts"] == "2026-12-02T05:20:09.123Z"
    assert list(record)[:4] == ["ts", "level", "logger", "message"]
    assert record["level"] == "info" and record["logger"] == "consumer.sources.postgres.cdc"
    assert record["message"] == "batch: 42 rows written, up to 0/16B3748"
    assert (record["rows_written"], record["lsn"], record["seconds"]) == (42, "0/16B3748", 0.125)
    # the record's own attributes are not dumped as fields
    assert not {"args", "msg", "levelno", "pathname", "created", "exc_info"} & record.keys()


def test_json_exception_is_one_string_field_on_one_line() -> None:
    line = JsonFormatter().format(_record("stage %s failed", "land", level=logging.ERROR, exc=True, stage="land"))
    assert "\n" not in line, "a traceback must not split the JSON line"
    record = json.loads(line)
    assert isinstance(record["exc_info"], str)
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: the warehouse said no\nsecond line of the error" in record["exc_info"]
    assert (record["level"], record["stage"], record["message"]) == ("error", "land", "stage land failed")


def test_json_values_that_json_cannot_encode_are_written_as_text() -> None:
    from decimal import Decimal

    record = json.loads(JsonFormatter().format(_record("amount", amount=Decimal("10.10"), path=Path("/x"))))
    assert record["amount"] == "10.10" and record["path"] == "/x"


def test_human_line_is_utc_with_milliseconds() -> None:
    line = HumanFormatter().format(_record("cycle %d: ok", 3))
    assert line == "2026-12-02T05:20:09.123Z INFO consumer.sources.postgres.cdc: cycle 3: ok"


def test_configure_replaces_the_handlers_and_sets_the_level() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        out = io.StringIO()
        logs.configure("json", "warning", stream=out)
        logging.getLogger("consumer.test").info("not shown")
        logging.getLogger("consumer.test").warning("shown %s", 1, extra={"n": 1})
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["message"] == "shown 1"
        assert ISO_MS_Z.match(json.loads(lines[0])["ts"])
        with pytest.raises(ValueError, match="log format"):
            logs.configure("xml", "info")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_the_cli_takes_the_log_format_and_progress_interval_from_an_env_file(tmp_path: Path, root_logging: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--log-format is parsed before the env file is read: left at its default, the file's value wins."""
    for v in ("PAYNORM_LOG_FORMAT", "PAYNORM_PROGRESS_SECONDS"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(progress, "_interval", progress._interval)
    env = tmp_path / "paynorm.env"
    env.write_text("PAYNORM_LOG_FORMAT=json\nPAYNORM_PROGRESS_SECONDS=7\n")
    out = CliRunner().invoke(cli, ["--env-file", str(env), "mappings", "validate", "--offline"])
    assert out.exit_code in (0, 1), out.output
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    assert progress._interval == 7
    out = CliRunner().invoke(cli, ["--env-file", str(env), "--log-format", "human", "mappings", "validate", "--offline"])
    assert isinstance(logging.getLogger().handlers[0].formatter, HumanFormatter)


# -- progress ---------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_without_a_terminal_logs_rate_and_eta_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock, stream = _Clock(), io.StringIO()
    p = Progress("snapshot", 1000, interval=30, stream=stream, clock=clock,
                 logger=logging.getLogger("consumer.sources.postgres.snapshot"))
    with caplog.at_level(logging.INFO):
        clock.now += 10
        p.update(100)  # before the interval: nothing yet
        assert not caplog.records
        clock.now += 20
        p.update(600)  # 30 s, 600 rows: 20 rows/s, 400 left: 20 s
        clock.now += 5
        p.update(700)  # 5 s after the line: too soon for another
        clock.now += 25
        p.update(900)  # 60 s, 900 rows: 15 rows/s, 100 left: ~7 s
        p.close()
    assert stream.getvalue() == "", "no bar without a terminal"
    lines = [r for r in caplog.records if r.name == "consumer.sources.postgres.snapshot"]
    assert [r.getMessage() for r in lines] == ["snapshot: 600/1,000 rows, 20 rows/s, ETA 20s",
                                               "snapshot: 900/1,000 rows, 15 rows/s, ETA 7s"]
    first = lines[0]
    assert (first.rows_done, first.rows_total, first.rows_per_second, first.eta_seconds,  # type: ignore[attr-defined]
            first.elapsed_seconds) == (600, 1000, 20.0, 20.0, 30.0)  # type: ignore[attr-defined]
    # as a collector sees it: the figures are top-level JSON fields
    record = json.loads(JsonFormatter().format(first))
    assert (record["progress"], record["rows_done"], record["eta_seconds"]) == ("snapshot", 600, 20.0)


def test_progress_rate_leaves_out_what_an_earlier_run_did(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    p = Progress("snapshot", 10_000, initial=4_000, interval=0, stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO):
        clock.now += 10
        p.update(5_000)  # 1,000 rows in 10 s this run: 100 rows/s, 5,000 left: 50 s
    assert caplog.records[-1].getMessage() == "snapshot: 5,000/10,000 rows, 100 rows/s, ETA 50s"


def test_progress_of_a_file_takes_its_eta_from_the_bytes(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    p = Progress("exports/2024/06/batch-001.jsonl", total_bytes=4 * 1024 * 1024, interval=1,
                 stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO):
        clock.now += 2
        p.bytes(1024 * 1024)  # a quarter in 2 s: 6 s left
        p.rows(500)
    line = caplog.records[-1]
    assert line.getMessage() == ("exports/2024/06/batch-001.jsonl: 0 rows, 1.0 MiB/4.0 MiB, 0 rows/s, ETA 6s")
    assert (line.bytes_done, line.bytes_total, line.rows_total) == (1024 * 1024, 4 * 1024 * 1024, None)  # type: ignore[attr-defined]


def test_progress_with_a_real_clock_and_a_short_interval(caplog: pytest.LogCaptureFixture) -> None:
    p = Progress("snapshot", 10_000, interval=0.2, stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        deadline = time.monotonic() + 1.1
        done = 0
        while time.monotonic() < deadline:
            done += 10
            p.update(done)
            time.sleep(0.01)
        p.close()
    lines = [r for r in caplog.records if getattr(r, "progress", None) == "snapshot"]
    assert 3 <= len(lines) <= 6, [r.getMessage() for r in lines]  # every 0.2 s, not on every update
    for r in lines:
        assert r.rows_per_second > 0 and r.eta_seconds > 0  # type: ignore[attr-defined]
        assert re.fullmatch(r"snapshot: [\d,]+/10,000 rows, [\d,]+ rows/s, ETA \d+(s|m\d\ds)", r.getMessage())


def test_progress_on_a_terminal_draws_a_bar_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, stream = _Clock(), Tty()
    p = Progress("snapshot", 200, interval=0, stream=stream, clock=clock)
    with caplog.at_level(logging.INFO):
        clock.now += 1
        p.update(100)
        clock.now += 1
        p.update(200)
        p.close()
    assert not caplog.records
    out = stream.getvalue()
    assert out.startswith("\rsnapshot [" + "#" * 15 + " " * 15 + "] 100/200 rows 100/s ETA 1s")
    assert "\rsnapshot [" + "#" * 30 + "] 200/200 rows 100/s ETA 0s" in out and out.endswith("\n")


def test_progress_interval_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer.settings import Settings

    monkeypatch.setenv("PAYNORM_PROGRESS_SECONDS", "12.5")
    monkeypatch.setattr(progress, "_interval", progress._interval)
    progress.configure(Settings().progress_seconds)
    assert Progress("x", 1, stream=io.StringIO()).interval == 12.5
