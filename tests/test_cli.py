"""The command line: every command documented, doctor and status truthful, dev cluster usable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from consumer.cli import cli

from .conftest import REPO, Env, insert_rows


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


ALL_COMMANDS = _commands(cli)


def test_the_commands_the_readme_promises_exist() -> None:
    names = {" ".join(c) for c in ALL_COMMANDS}
    assert {"dev up", "dev down", "dev status", "init", "replicate", "doctor", "status",
            "mappings sync", "mappings list", "mappings show", "mappings validate", "transform"} <= names


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`paynorm {' '.join(command)} --help` shows no example"


def test_the_cli_reference_documents_every_command() -> None:
    reference = (REPO / "docs" / "cli.md").read_text()
    for command in ALL_COMMANDS:
        assert f"paynorm {' '.join(command)}" in reference, (
            f"docs/cli.md does not show `paynorm {' '.join(command)}`: run `make cli-docs`")


def _invoke(env: Env, *args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), env={"DATALAKE_DATABASE_URL": env.lake_dsn,
                                                    "DATABASE_URL": env.wh_dsn, "PAYNORM_SLOT": env.slot},
                              catch_exceptions=False)


def test_doctor_passes_on_a_good_setup_and_names_each_problem(env: Env) -> None:
    ok = _invoke(env, "doctor")
    assert ok.exit_code == 0, ok.output
    assert "[ok  ] wal_level: logical" in ok.output
    assert "[ok  ] wal2json" in ok.output
    with env.lake_conn() as lake:
        lake.execute("revoke select on public.raw_transactions from lake_reader")
        lake.execute("alter role lake_reader noreplication")
    try:
        bad = _invoke(env, "doctor")
    finally:
        with env.lake_conn() as lake:
            lake.execute("alter role lake_reader replication")
    assert bad.exit_code == 1
    assert "GRANT SELECT ON public.raw_transactions" in bad.output
    assert "ALTER ROLE <role> REPLICATION" in bad.output


def test_init_is_idempotent_and_status_reports_progress(env: Env) -> None:
    for _ in range(2):
        result = _invoke(env, "init")
        assert result.exit_code == 0, result.output
    with env.lake_conn() as lake:
        insert_rows(lake, 7)
    result = _invoke(env, "replicate", "--once")
    assert result.exit_code == 0, result.output
    with env.lake_conn() as lake:
        insert_rows(lake, 3, start=100)
    status = _invoke(env, "status")
    assert status.exit_code == 0, status.output
    assert "snapshot      done, 7/7 rows" in status.output
    assert "landed rows     7 (7 live" in status.output
    assert re.search(r"WAL\s+[\d.,]+ (B|KiB) of instance WAL past the confirmed position", status.output)
    assert re.search(r"lag\s+\d+ s behind \(oldest unapplied change committed", status.output), status.output
    as_json = _invoke(env, "status", "--json")
    assert '"rows": 7' in as_json.output


def test_replicate_without_configuration_says_what_to_set() -> None:
    result = CliRunner().invoke(cli, ["replicate", "--once"], env={"DATALAKE_DATABASE_URL": "", "DATABASE_URL": ""})
    assert result.exit_code != 0
    assert "DATALAKE_DATABASE_URL" in result.output


def test_passwords_never_reach_the_logs(env: Env) -> None:
    """A DSN with a password: the log lines show *** instead."""
    with env.wh_conn() as wh:
        wh.execute("alter role warehouse password 's3cret-pw'")
    dsn = env.wh_dsn.replace("warehouse@", "warehouse:s3cret-pw@")
    proc = subprocess.run([sys.executable, "-m", "consumer", "replicate", "--once"], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "DATALAKE_DATABASE_URL": env.lake_dsn, "DATABASE_URL": dsn,
                               "PAYNORM_SLOT": env.slot})
    assert proc.returncode == 0, proc.stderr
    assert "warehouse:***@" in proc.stderr
    assert "s3cret-pw" not in proc.stdout + proc.stderr


def test_dev_up_writes_env_and_is_idempotent(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"paynorm-dev-{os.getpid()}"
    env = {**os.environ, "PAYNORM_HOME": str(home)}
    try:
        for _ in range(2):
            up = subprocess.run([sys.executable, "-m", "consumer", "dev", "up"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
            assert up.returncode == 0, up.stderr
        lines = up.stdout.splitlines()
        assert lines[0].startswith("export DATALAKE_DATABASE_URL=postgresql://lake_reader@127.0.0.1:")
        assert lines[1].startswith("export DATABASE_URL=postgresql://warehouse@127.0.0.1:")
        assert (home / "env").read_text().splitlines() == lines
        conf = (home / "pg" / "postgresql.auto.conf").read_text()
        assert "wal_level = logical" in conf and "max_slot_wal_keep_size" in conf and "fsync = on" in conf
        seeded = subprocess.run([sys.executable, "-m", "consumer", "dev", "seed"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert "inserted 5 records" in seeded.stdout, seeded.stderr
        again = subprocess.run([sys.executable, "-m", "consumer", "dev", "seed"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=60)
        assert "inserted 0 records" in again.stdout, again.stderr
        status = subprocess.run([sys.executable, "-m", "consumer", "dev", "status"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert ": running on 127.0.0.1:" in status.stdout
    finally:
        subprocess.run([sys.executable, "-m", "consumer", "dev", "down", "--destroy"], cwd=REPO, env=env,
                       capture_output=True, timeout=120)
    assert not (home / "pg").exists()
