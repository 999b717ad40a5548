"""The documentation holds together: every relative link in README.md and docs/ points at a file
that exists, docs/README.md indexes every page, the README stays a short entry point naming both
commands, and no project-history wording ("issue 7", "the brief") is left in docs or code.

Pure file checks, no database."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 150

# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" after it).
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference definitions)
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+\1", re.DOTALL)

HISTORY = re.compile(r"\bissue \d+|\bthe brief\b|\bthis round\b|\blast session\b|\bprevious session\b"
                     r"|\bthe issue's\b", re.IGNORECASE)
SCANNED_SUFFIXES = {".py", ".md", ".sql", ".yml", ".yaml", ".sh", ".service", ".crontab", ".toml", ".cfg", ".txt"}
SCANNED_NAMES = {"Makefile", "Dockerfile"}


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def links(markdown: str) -> list[str]:
    """Link targets of a markdown text, outside code blocks and code spans."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)) or target.startswith("//")


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        if is_external(target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same page (anchors are not checked)
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            broken.append(target)
        elif root.resolve() not in (resolved, *resolved.parents):
            broken.append(f"{target} (outside the repository)")
    return broken


def repository_files() -> list[Path]:
    """Tracked files plus new ones not ignored (so a page written but not yet committed counts),
    without tests/ (which quote the wording they look for) and the labelled corpus."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, check=True, capture_output=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree instead
        skip = {".git", ".venv", ".paynorm", "build", "dist", "target", "__pycache__"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)]
    files = []
    for name in names:
        p = Path(name)
        if p.parts and p.parts[0] == "tests":
            continue
        if p.suffix in SCANNED_SUFFIXES or p.name in SCANNED_NAMES:
            files.append(REPO / p)
    return files


# --- the checks themselves can fail ----------------------------------------------------------------

def test_link_parser_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [anchor](page.md#x) [gone](missing.md#y) [web](https://example.com)\n"
                    "`[not a link](nowhere.md)`\n```\n[also not](nowhere2.md)\n```\n[ref]: gone2.md\n")
    assert links(page.read_text()) == ["page.md", "page.md#x", "missing.md#y", "https://example.com", "gone2.md"]
    assert broken_links(page, root=tmp_path) == ["missing.md#y", "gone2.md"]
    (tmp_path / "sub").mkdir()
    inner = tmp_path / "sub" / "inner.md"
    inner.write_text("[up](../page.md)\n")
    assert broken_links(inner, root=tmp_path / "sub") == ["../page.md (outside the repository)"]


def test_history_pattern() -> None:
    for text in ("as in the brief", "The brief's samples", "issue 7 sizes", "this round of fixes",
                 "since the last session", "a previous session of ours", "the issue's sizes"):
        assert HISTORY.search(text), text
    for text in ("briefly", "brief_xml_tx", "a known issue with psycopg", "the last run", "tissue 3"):
        assert not HISTORY.search(text), text


# --- the documentation -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    assert not broken_links(path), f"{path.relative_to(REPO)}: broken links {broken_links(path)}"


def test_docs_index_lists_every_page() -> None:
    index = DOCS / "README.md"
    linked = {(DOCS / t.split("#", 1)[0]).resolve() for t in links(index.read_text(encoding="utf-8"))
              if not is_external(t) and not t.startswith("#")}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p != index and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


def test_readme_is_short_and_names_both_commands() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + 1
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
    for command in ("make demo", "make test"):
        assert command in text, f"README.md does not name `{command}`"
    assert "docs/README.md" in links(text), "README.md does not link the docs index"


def test_no_project_history_wording() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the working tree
        for number, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not found, "project-history wording (describe the behaviour instead):\n" + "\n".join(found)
