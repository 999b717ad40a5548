"""The optional compiled payload decoder: ``consumer/decode.py`` compiled by mypyc as ``consumer._cdecode``.

Everything else is in pyproject.toml. The decode is most of a landed row's CPU, and the same source
compiled runs it in about three quarters of the time (docs/landing.md, "Decoding speed"). The
compiled module is built from a copy of decode.py that records the source's SHA-256; paynorm uses
it only while that still matches the installed decode.py (an edited checkout falls back to the
source until it is reinstalled), and the package works without it: set PAYNORM_COMPILE=0 to skip
the build, and a machine without a C compiler gets a warning and the pure-Python decoder.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "consumer" / "decode.py"
# The copy lives outside the package so that an editable checkout never imports it as source.
COPY_ROOT = HERE / "build" / "paynorm-mypyc"


def _compiled_decoder() -> list:
    if os.environ.get("PAYNORM_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("paynorm: mypyc not available, the payload decoder stays pure Python", file=sys.stderr)
        return []
    text = SOURCE.read_bytes()
    package = COPY_ROOT / "consumer"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    stamp = f"SOURCE_SHA256 = {hashlib.sha256(text).hexdigest()!r}  # of consumer/decode.py, compiled here\n"
    (package / "_cdecode.py").write_bytes(text + b"\n\n" + stamp.encode())
    cwd = os.getcwd()
    os.chdir(COPY_ROOT)  # mypyc names modules from the working directory: consumer._cdecode
    try:
        extensions = mypycify(["--ignore-missing-imports", "consumer/_cdecode.py"], opt_level="3")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypyc exits through SystemExit on a type error
        print(f"paynorm: mypyc failed ({exc!r}), the payload decoder stays pure Python", file=sys.stderr)
        return []
    finally:
        os.chdir(cwd)
    for ext in extensions:
        ext.sources = [s if os.path.isabs(s) else str(COPY_ROOT / s) for s in ext.sources]
        ext.include_dirs = [d if os.path.isabs(d) else str(COPY_ROOT / d) for d in ext.include_dirs]
        ext.optional = True  # no compiler: a warning, not a failed install
    return extensions


setup(ext_modules=_compiled_decoder())
