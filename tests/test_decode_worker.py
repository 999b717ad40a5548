"""The decode worker: the same results as decoding in process, and no worker outlives its consumer."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

from consumer.landing import DecodeWorker
from consumer.landing.decoder import _answer, _results, decode_pairs

PAIRS = [
    (json.dumps({"id": "ch_1", "amount": 1999, "currency": "usd", "status": "succeeded"}), True),
    (json.dumps("<response><status>OK</status><amount>12.50</amount></response>"), True),
    ("status=approved&amount=10.00&currency=EUR", False),
    ("id,amount,currency\nt1,5.00,GBP", False),
    ("{not json", True),
    (None, True),
    (json.dumps({"amount": 1e400}), True),  # a number jsonb cannot store: a decode_error
    (json.dumps({"note": "x" * 3000}), True),  # over the limit below: landed undecoded
]


def test_the_worker_decodes_exactly_as_this_process_does() -> None:
    expected = decode_pairs(PAIRS, 2048)
    assert any(r[2] is not None for r in expected) and any(r[3] is not None for r in expected)
    with DecodeWorker(2048) as worker:
        assert worker.alive
        futures = [worker.submit(PAIRS), worker.submit(PAIRS[:3]), worker.submit([])]
        assert [f.result() for f in futures] == [expected, expected[:3], []]


def test_a_payload_that_is_its_input_text_is_not_sent_back() -> None:
    """The worker answers "the text you sent" for a payload equal to its input (pure, no worker)."""
    results = decode_pairs(PAIRS, 2048)
    answer = _answer(PAIRS, results)
    same = [i for i, a in enumerate(answer) if a[0] == 0 and not isinstance(a[0], str)]
    assert same and all(results[i][0] == PAIRS[i][0] for i in same)
    assert all(a == r for i, (a, r) in enumerate(zip(answer, results)) if i not in same)  # the rest as decoded
    assert len(pickle.dumps(answer)) < len(pickle.dumps(results))
    assert _results(PAIRS, answer) == results


def test_a_dead_worker_falls_back_to_decoding_here() -> None:
    with DecodeWorker(2048) as worker:
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.submit(PAIRS).result() == decode_pairs(PAIRS, 2048)
        assert not worker.alive  # and it stays here afterwards
        assert worker.submit(PAIRS[:2]).result() == decode_pairs(PAIRS[:2], 2048)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


def test_a_killed_consumer_leaves_no_worker_behind() -> None:
    """SIGKILL gives the consumer no chance to close anything: the worker must still end (end of
    input, parent-death signal), and never hold the consumer's output open (stderr is not shared)."""
    script = textwrap.dedent("""
        import sys, time
        from consumer.landing import DecodeWorker
        w = DecodeWorker(1024)
        print(w.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    assert not _gone(worker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(worker)
    # nobody else holds the pipes the consumer wrote to: both reach end of file at once
    assert proc.stdout.read() == b"" and proc.stderr.read() == b""  # type: ignore[union-attr]
