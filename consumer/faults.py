"""Fault injection for the crash tests: ``PAYNORM_CRASHPOINT=after_commit:3`` makes the process
SIGKILL itself (no cleanup) the 3rd time it reaches that point. Unset in production: then
``crashpoint`` is a dictionary lookup. Points: ``slot_created``, ``snapshot_chunk``,
``before_commit``, ``after_commit`` (CDC), ``file_chunk``, ``file_before_commit`` (files)."""

from __future__ import annotations

import os
import signal

__all__ = ["crashpoint"]


def _crashpoints() -> dict[str, int]:
    """Fault injection for the crash tests: PAYNORM_CRASHPOINT=after_commit:3 kills the process
    (SIGKILL, no cleanup) the 3rd time it reaches that point. Unset in production."""
    spec = os.environ.get("PAYNORM_CRASHPOINT", "")
    name, _, count = spec.partition(":")
    return {name: int(count or 1)} if name else {}


_CRASH = _crashpoints()


def crashpoint(name: str) -> None:
    if name in _CRASH:
        _CRASH[name] -= 1
        if _CRASH[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
