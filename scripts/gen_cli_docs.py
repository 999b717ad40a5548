"""Write docs/cli.md, the command line reference, from the click definitions themselves.

Each command's section is its own `--help` (usage, description, examples, every option with its
environment variable and default) at a fixed width, so the page says exactly what the installed
`paynorm` says and tests/test_cli_reference.py can tell when it is stale.

    python scripts/gen_cli_docs.py           # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "cli.md"
WIDTH = 100
COMMAND = "make cli-docs"  # or: python scripts/gen_cli_docs.py

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def walk(ctx: click.Context) -> list[click.Context]:
    """The context of every visible command under ``ctx`` (itself first), depth first, in name order."""
    out = [ctx]
    cmd = ctx.command
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            out += walk(click.Context(sub, info_name=name, parent=ctx))
    return out


def anchor(path: str) -> str:
    return path.lower().replace(" ", "-")


def render() -> str:
    from consumer.cli import cli

    # the group's own context settings (-h, --help), a fixed width whatever the terminal
    root = cli.make_context("paynorm", [], resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH)
    contexts = walk(root)
    lines = ["# paynorm command line reference", "",
             f"Generated from the commands' own definitions by `{COMMAND}` (scripts/gen_cli_docs.py): do not edit "
             "by hand. Each section is the command's `--help`. An option that names an environment variable "
             "reads it when the option is not given; the option's default applies when neither is set. A bad "
             "value in a variable exits 4 (configuration) naming it.", "",
             "## Commands", ""]
    for ctx in contexts[1:]:
        path = ctx.command_path
        indent = "  " * (path.count(" ") - 1)
        short = ctx.command.get_short_help_str(limit=90)
        lines.append(f"{indent}- [`{path}`](#{anchor(path)}): {short}")
    lines.append("")
    for ctx in contexts:
        path = ctx.command_path
        lines += [f"## {path}", "", "```text", ctx.command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is not up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
