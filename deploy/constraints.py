"""Write constraints.txt: the exact versions of paynorm's runtime dependencies (with the extras the
image installs), read from the environment this script runs in, so an install elsewhere (the image,
a server's venv) gets the versions the test suite ran against.

The dependency closure is walked from pyproject.toml through the installed packages' metadata,
markers evaluated for this interpreter: dev tools installed beside them are left out.

    .venv/bin/python deploy/constraints.py            # or: make constraints
    .venv/bin/python deploy/constraints.py --check    # exit 1 when constraints.txt is out of date
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
#: The extras the image installs (deploy/Dockerfile): S3 and Parquet for `--source files`.
IMAGE_EXTRAS = ("s3", "parquet")

HEADER = """\
# Exact versions of paynorm's runtime dependencies (extras: {extras}) for Python {python} on Linux,
# taken from the development venv the test suite runs in. Install with:
#   pip install --constraint constraints.txt 'paynorm[{extras}]'   (deploy/Dockerfile does)
# Regenerate after changing dependencies in pyproject.toml (then run tests/test_deploy.py):
#   make constraints      (= .venv/bin/python deploy/constraints.py)
"""


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""}))


def runtime_closure(extras: tuple[str, ...] = IMAGE_EXTRAS) -> dict[str, str]:
    """{distribution name: installed version} of everything paynorm[extras] needs at run time."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        roots += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins: dict[str, str] = {}
    todo: list[tuple[Requirement, frozenset[str]]] = [(r, frozenset()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} (needed by paynorm) is not installed here: run make install first")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"installed {req.name} {dist.version} does not satisfy {req}: run make install first")
        pins[dist.metadata["Name"]] = dist.version
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or ()]
    return pins


def render(pins: dict[str, str], extras: tuple[str, ...] = IMAGE_EXTRAS) -> str:
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: canonicalize_name(kv[0]))]
    return HEADER.format(extras=",".join(extras), python=python) + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Compare with constraints.txt instead of writing it.")
    parser.add_argument("--output", type=Path, default=REPO / "constraints.txt")
    args = parser.parse_args()
    text = render(runtime_closure())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run make constraints", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
