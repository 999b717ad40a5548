"""Kill -9 the consumer again and again while the lake changes; the landing must equal the lake."""

from __future__ import annotations

import random
import threading
import time

import pytest

from consumer.sources.postgres.replicate import EXIT_OK, replicate

from .conftest import Env, insert_rows

# Crash points inside the consumer (see consumer.faults); None = SIGKILL from outside at a random time.
PLAN = ["snapshot_chunk:3", None, "after_commit:2", "before_commit:2", None, "after_commit:4", None,
        "before_commit:5", "after_commit:1", None, "after_commit:3", None]


def _writer(env: Env, stop: threading.Event, seed: int) -> None:
    rnd = random.Random(seed)
    with env.lake_conn() as lake:
        n = 1_000_000
        while not stop.is_set():
            n += 10
            r = rnd.random()
            with lake.transaction():
                if r < 0.5:
                    insert_rows(lake, rnd.randint(1, 8), start=n)
                elif r < 0.8:
                    lake.execute("update public.raw_transactions set data = data || jsonb_build_object('v', %s::int),"
                                 " processed = not processed where id in (select id from public.raw_transactions"
                                 " order by random() limit %s)", (n, rnd.randint(1, 5)))
                else:
                    lake.execute("delete from public.raw_transactions where id in (select id from"
                                 " public.raw_transactions order by random() limit %s)", (rnd.randint(1, 3),))
            time.sleep(rnd.random() * 0.01)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["stream", "sql"])
def test_sigkill_at_any_moment_loses_and_doubles_nothing(env: Env, transport: str) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3000)
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(env, stop, 11))
    writer.start()
    rnd = random.Random(5)
    self_kills = 0
    try:
        for point in PLAN:
            proc = env.spawn("replicate", "--transport", transport, "--batch-size", "150", "--interval", "0.1",
                             PAYNORM_CRASHPOINT=point or "", PAYNORM_SNAPSHOT_CHUNK="400")
            try:
                proc.wait(timeout=rnd.uniform(0.5, 2.5) if point is None else 30)
                self_kills += 1
            except Exception:
                proc.kill()
                proc.wait()
            out = proc.stdout.read().decode() if proc.stdout else ""
            assert proc.returncode == -9, f"consumer exited {proc.returncode} instead of being killed:\n{out}"
    finally:
        stop.set()
        writer.join()
    assert self_kills >= 6, "too few crash points were reached: the test did not exercise them"
    result = replicate(env.settings(transport=transport), once=True)
    assert result.exit_code == EXIT_OK, result.message
    env.assert_converged()
    with env.wh_conn() as wh:
        state = wh.execute("select snapshot_done, applied_lsn::text from paynorm.replication_state").fetchone()
    assert state[0] is True
