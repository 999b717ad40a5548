"""docs/cli.md is the command line reference: every command is in it, and it is exactly what
scripts/gen_cli_docs.py makes of the click definitions now, so it cannot go stale unnoticed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import click

from consumer.cli import cli

from .conftest import REPO

REFERENCE = REPO / "docs" / "cli.md"
REGENERATE = "make cli-docs (or: python scripts/gen_cli_docs.py)"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", REPO / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


def test_every_command_and_subcommand_has_a_section() -> None:
    text = REFERENCE.read_text()
    commands = _commands(cli)
    assert len(commands) > 20
    for command in ("paynorm", *("paynorm " + " ".join(c) for c in commands)):
        assert f"\n## {command}\n" in text, f"docs/cli.md has no section for `{command}`: run {REGENERATE}"
        assert f"Usage: {command} " in text, f"docs/cli.md lacks the usage of `{command}`: run {REGENERATE}"


def test_every_environment_variable_of_an_option_is_documented() -> None:
    text = REFERENCE.read_text()
    for command in [(), *_commands(cli)]:
        cmd: click.Command = cli
        for name in command:
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[name]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.envvar:
                assert param.show_envvar, f"{' '.join(command)} {param.opts[0]}: show_envvar is off"
                assert str(param.envvar) in text, f"docs/cli.md does not name {param.envvar}"


def test_the_reference_is_what_the_generator_writes_now() -> None:
    expected = _generator().render()
    assert REFERENCE.read_text() == expected, f"docs/cli.md is stale: run {REGENERATE}"


def test_the_generator_check_mode_agrees() -> None:
    proc = subprocess.run([sys.executable, "scripts/gen_cli_docs.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
