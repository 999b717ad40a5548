"""Where paynorm's data lives: the dbt project (models, macros, seeds), the mapping rules with their
schema and fixtures, the prompts. A source checkout uses its top level; an install (a wheel, the
Docker image) finds them as the package data of ``paynorm_project`` through ``importlib.resources``."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

__all__ = ["project_dir", "mappings_dir", "seeds_dir", "prompts_dir", "ResourceError"]


class ResourceError(RuntimeError):
    """paynorm's package data cannot be found (a broken install)."""


@functools.lru_cache(maxsize=1)
def project_dir() -> Path:
    """The dbt project shipped with paynorm (dbt_project.yml, models/, macros/, seeds/, mappings/):
    the source checkout this package runs from, else the installed ``paynorm_project`` data."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "dbt_project.yml").is_file() and (checkout / "models").is_dir():
        return checkout
    try:
        marker = files("paynorm_project").joinpath("dbt_project.yml")
    except ModuleNotFoundError as e:
        raise ResourceError("paynorm's project data (package paynorm_project) is not installed") from e
    path = Path(str(marker))
    if not path.is_file():
        raise ResourceError(f"paynorm's dbt project is missing from the install ({path})")
    return path.parent


def mappings_dir() -> Path:
    """The built-in mapping rules (mappings/*.yml, schema.json, fixtures/)."""
    return project_dir() / "mappings"


def seeds_dir() -> Path:
    return project_dir() / "seeds"


def prompts_dir() -> Path:
    return project_dir() / "prompts"
