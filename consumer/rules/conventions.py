"""Provider knowledge the rules are checked against: amount conventions, the status vocabulary, the
canonical values of the enum fields (seeds/*.csv, the same files dbt loads)."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from ..resources import seeds_dir
from .model import DECLINE_CATEGORIES, EVENT_TYPES, STATUSES

__all__ = ["Convention", "amount_conventions", "convention_for", "vocabulary_status", "canonical_values"]

SEEDS_DIR = seeds_dir()
CONVENTIONS_PATH = SEEDS_DIR / "provider_amount_conventions.csv"


@dataclass(frozen=True)
class Convention:
    """How a provider (API family) writes amounts: seeds/provider_amount_conventions.csv."""

    unit: str
    source: str


@functools.lru_cache(maxsize=4)
def _read_conventions(path: str) -> dict[tuple[str, str], Convention]:
    out: dict[tuple[str, str], Convention] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["currency"] == "*":
                out[(row["provider"], row["api"])] = Convention(row["unit"], row["source"])
    return out


def amount_conventions(path: str | Path = CONVENTIONS_PATH) -> dict[tuple[str, str], Convention]:
    """(provider, api) -> default amount convention; api ``*`` covers every API family."""
    return _read_conventions(str(path))


def convention_for(provider: str, api: str | None = None) -> Convention | None:
    """The convention a rule for ``provider`` (and ``api``) must follow, or None if none is known."""
    conv = amount_conventions()
    return conv.get((provider, api or "*")) or conv.get((provider, "*"))


@functools.lru_cache(maxsize=4)
def _read_seed(name: str) -> tuple[dict[str, str], ...]:
    with open(SEEDS_DIR / f"{name}.csv", newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def vocabulary_status(token: str, provider: str | None = None) -> str | None:
    """The canonical status the status vocabulary seed gives ``token`` (provider rows first)."""
    t = str(token).strip().lower()
    found = {(r["provider"], r["token"].strip().lower()): r["status"] for r in _read_seed("status_vocabulary")}
    return found.get((provider or "", t)) or found.get(("*", t))


def canonical_values(field_name: str) -> set[str]:
    """The values a `map` of ``field_name`` may produce."""
    if field_name == "payment_method":
        return {r["payment_method"] for r in _read_seed("payment_methods")}
    if field_name == "card_network":
        return {r["card_network"] for r in _read_seed("card_networks")}
    return set({"status": STATUSES, "event_type": EVENT_TYPES, "decline_category": DECLINE_CATEGORIES}[field_name])
