"""A huge lake transaction is applied in chunks as it arrives: consumer memory stays flat."""

from __future__ import annotations

import os

import pytest

from .conftest import Env


def _peak_rss_mb(env: Env, transport: str) -> float:
    proc = env.spawn("replicate", "--once", "--transport", transport, "--batch-size", "2000")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 0, out
    return usage.ru_maxrss / 1024  # kB on Linux


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["stream", "sql"])
def test_memory_does_not_grow_with_transaction_size(env: Env, transport: str) -> None:
    peaks = {}
    total = 0
    for n in (20_000, 300_000):
        with env.lake_conn() as lake:
            lake.execute(  # one COMMIT
                "insert into public.raw_transactions (data, merchant)"
                " select jsonb_build_object('amount', g * 1.5, 'status', 'approved', 'pad', repeat('p', 200)),"
                " '{\"id\": \"m1\"}' from generate_series(1, %s) g", (n,))
        total += n
        peaks[n] = _peak_rss_mb(env, transport)
        assert len(env.landed()) == total
    # 15x the rows must not need meaningfully more memory (buffering the transaction would need ~15x).
    assert peaks[300_000] < peaks[20_000] * 1.25 + 15, peaks
