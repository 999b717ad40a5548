"""Rule files on disk: ``mappings/<id>.yml`` and their fixtures ``mappings/fixtures/<id>__<case>.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..resources import mappings_dir
from .model import MappingError, Rule, parse_rule

__all__ = ["DEFAULT_DIR", "FIXTURES_SUBDIR", "RuleFile", "load_rule_files", "load_fixtures", "fixture_row_image"]

DEFAULT_DIR = mappings_dir()
FIXTURES_SUBDIR = "fixtures"


@dataclass
class RuleFile:
    path: Path | None
    rule: Rule

    @property
    def id(self) -> str:
        return self.rule.id


def rule_paths(directory: str | Path = DEFAULT_DIR) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise MappingError(f"mappings directory not found: {d}")
    return sorted([*d.glob("*.yml"), *d.glob("*.yaml")])


def load_rule_files(directory: str | Path = DEFAULT_DIR) -> list[RuleFile]:
    """Every ``*.yml``/``*.yaml`` rule of ``directory`` (sorted by file name), parsed and checked
    against the schema (MappingError names the first invalid file)."""
    return [RuleFile(p, Rule.parse(parse_rule(p.read_text(), name=str(p)))) for p in rule_paths(directory)]


def load_fixtures(directory: str | Path = DEFAULT_DIR) -> dict[str, dict[str, Any]]:
    """The rules' fixtures, ``<directory>/fixtures/<rule id>__<case>.json``, by file stem."""
    d = Path(directory) / FIXTURES_SUBDIR
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out[p.stem] = json.loads(p.read_text())
        except ValueError as e:
            raise MappingError(f"{p}: not JSON: {e}") from e
    return out


def fixture_row_image(name: str, fixture: dict[str, Any]) -> dict[str, Any]:
    """The lake row image (``row_data``) a fixture lands as: its row, with the payload under its key."""
    return {"id": name, fixture.get("payload_key", "data"): fixture.get("raw"), **(fixture.get("row") or {})}
