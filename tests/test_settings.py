"""Settings are checked when they are read: a value that does not parse names its variable and
exits 4 (never a traceback); .env files take comments; an env file named on the command line must
exist. Pure logic and the CLI through CliRunner: no database needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consumer.cli import cli
from consumer.errors import ConfigError
from consumer.settings import Settings, load_dotenv


@pytest.mark.parametrize("variable, value", [("PAYNORM_BATCH_SIZE", "10k"), ("POLL_INTERVAL_SECONDS", "five"),
                                             ("PAYNORM_RETRY_FOR", "1m"), ("PAYNORM_MAX_BACKOFF", "-3"),
                                             ("PAYNORM_PROGRESS_SECONDS", "soon"), ("PAYNORM_LOG_FORMAT", "xml"),
                                             ("PAYNORM_LOG_LEVEL", "loud"), ("PAYNORM_TRANSPORT", "carrier")])
def test_a_bad_number_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        Settings()
    out = CliRunner().invoke(cli, ["replicate", "--once"], env={variable: value})
    assert out.exit_code == 4 and variable in out.output and "Traceback" not in out.output, out.output


@pytest.mark.parametrize("args, variable, value", [
    (["run", "--once"], "PAYNORM_METRICS_PORT", "ninety"),
    (["run", "--once"], "PAYNORM_METRICS_PORT", "70000"),
    (["replicate"], "RUN_ONCE", "maybe"),
    (["load", "--once", "/nonexistent"], "PAYNORM_FILES_FORMAT", "xlsx"),
])
def test_a_bad_option_variable_names_it(args: list[str], variable: str, value: str) -> None:
    """A variable only an option reads (no Settings field) is checked by the option: exit 4 too."""
    out = CliRunner().invoke(cli, args, env={variable: value})
    assert out.exit_code == 4 and variable in out.output and "Traceback" not in out.output, out.output


def test_options_show_their_variable_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """--help shows what the option reads and its default (the one Settings has), whatever the environment."""
    monkeypatch.setenv("PAYNORM_BATCH_SIZE", "123")
    out = CliRunner().invoke(cli, ["replicate", "--help"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # as wrapped at any width
    assert "[env var: PAYNORM_BATCH_SIZE; default: 10000; x>=1]" in text
    assert "[env var: PAYNORM_SLOT; default: paynorm]" in text
    run = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "[env var: PAYNORM_METRICS_PORT; 0<=x<=65535]" in run
    assert "[env var: PAYNORM_METRICS_ADDR; default: 0.0.0.0]" in run
    assert "[env var: PAYNORM_CYCLE_INTERVAL_SECONDS; default: 300; x>=0]" in run


def test_an_option_wins_over_its_variable_and_the_variable_over_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer.pipeline import Pipeline

    seen: list[tuple[float, bool]] = []

    def record(self: Pipeline, *, once: bool, interval: float) -> int:
        seen.append((interval, once))
        return 0

    monkeypatch.setattr(Pipeline, "run", record)
    env = {"DATABASE_URL": "postgresql://wh@127.0.0.1:1/wh", "DATALAKE_DATABASE_URL": "postgresql://l@127.0.0.1:1/l",
           "PAYNORM_CYCLE_INTERVAL_SECONDS": "90", "RUN_ONCE": "true"}
    for args, expected in ((["run"], (90, True)), (["run", "--interval", "30"], (30, True))):
        out = CliRunner().invoke(cli, args, env=env)
        assert out.exit_code == 0, out.output
        assert seen.pop() == expected


def test_dotenv_comments_quotes_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("PAYNORM_BATCH_SIZE", "PAYNORM_SLOT", "PAYNORM_LAKE_TABLE"):
        monkeypatch.delenv(v, raising=False)
    env = tmp_path / ".env"
    env.write_text("# settings for the lake\n"
                   "PAYNORM_BATCH_SIZE=500   # rows per warehouse commit\n"
                   "export PAYNORM_SLOT='slot # one'\n"
                   'PAYNORM_LAKE_TABLE="public.raw_transactions"  # the table\n')
    load_dotenv(env)
    s = Settings()
    assert (s.batch_size, s.slot, s.table) == (500, "slot # one", "public.raw_transactions")


def test_dotenv_never_overrides_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYNORM_BATCH_SIZE", "700")
    env = tmp_path / ".env"
    env.write_text("PAYNORM_BATCH_SIZE=500\n")
    load_dotenv(env)
    assert Settings().batch_size == 700


def test_a_named_env_file_must_exist(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["--env-file", str(tmp_path / "missing.env"), "status"])
    assert out.exit_code == 4 and "not found" in out.output and "Traceback" not in out.output, out.output
    with pytest.raises(ConfigError):
        load_dotenv(tmp_path / "missing.env", required=True)
    load_dotenv(tmp_path / "missing.env")  # the default ./.env is optional


def test_the_cycle_interval_is_not_the_consumer_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain continuous `paynorm run` must not build dbt every POLL_INTERVAL_SECONDS (5 s)."""
    from consumer.pipeline import Pipeline

    for v in ("PAYNORM_CYCLE_INTERVAL_SECONDS", "POLL_INTERVAL_SECONDS"):
        monkeypatch.delenv(v, raising=False)
    s = Settings()
    assert (s.cycle_interval, s.interval) == (300, 5)
    seen: list[tuple[float, float]] = []

    def record(self: Pipeline, *, once: bool, interval: float) -> int:  # the cycles themselves are tested elsewhere
        seen.append((interval, self.settings.interval))
        return 0

    monkeypatch.setattr(Pipeline, "run", record)
    env = {"DATABASE_URL": "postgresql://wh@127.0.0.1:1/wh", "DATALAKE_DATABASE_URL": "postgresql://l@127.0.0.1:1/l"}
    for args, expected in ((["run"], (300, 5)), (["run", "--interval", "60"], (60, 5))):
        out = CliRunner().invoke(cli, args, env=env)
        assert out.exit_code == 0, out.output
        assert seen.pop() == expected
