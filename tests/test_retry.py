"""The one retry policy, as pure logic: the deadline counts a streak of failures (from the first
failure, not from the start of the command), so a consumer that streamed for hours gets the whole
deadline when its lake goes away; permanent errors are never retried."""

from __future__ import annotations

import threading
import time

import pytest

from consumer.errors import ConfigError, TransientError
from consumer.retry import RetryPolicy


def _policy(deadline: float | None, **kw: float) -> RetryPolicy:
    return RetryPolicy(deadline, max_backoff=0.05, first_backoff=0.01, **kw)  # type: ignore[arg-type]


def test_failures_are_retried_until_the_deadline_then_raise() -> None:
    calls = []

    def attempt() -> None:
        calls.append(time.monotonic())
        raise TransientError("lake down")

    t0 = time.monotonic()
    with pytest.raises(TransientError, match="gave up after retrying"):
        _policy(0.3).run(attempt)
    assert 0.3 <= time.monotonic() - t0 < 2 and len(calls) > 3


def test_the_deadline_starts_at_the_first_failure_not_at_the_start() -> None:
    """An attempt that worked for longer than the deadline, then failed, still gets retried."""
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)  # streamed for a while, then lost the lake
            raise TransientError("connection lost")
        if len(calls) < 4:
            raise TransientError("lake down")
        return "back"

    assert _policy(0.3).run(attempt) == "back"
    assert len(calls) == 4


def test_a_working_session_starts_a_new_streak() -> None:
    """Sessions that each run longer than the deadline before failing are never given up on."""
    calls = []

    def attempt() -> None:
        calls.append(1)
        time.sleep(0.25)
        raise TransientError("dropped after a while")

    with pytest.raises(TransientError):
        _policy(0.2, max_attempts=4).run(attempt)
    assert len(calls) == 4  # stopped by max_attempts, never by the deadline


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ConfigError("password authentication failed")

    with pytest.raises(ConfigError):
        _policy(None).run(attempt)
    assert calls == [1]


def test_a_stop_request_ends_the_back_off() -> None:
    stop = threading.Event()

    def attempt() -> None:
        stop.set()
        raise TransientError("lake down")

    t0 = time.monotonic()
    with pytest.raises(TransientError):
        RetryPolicy(None, max_backoff=30, first_backoff=30).run(attempt, stop=stop)
    assert time.monotonic() - t0 < 5


def test_the_back_off_doubles_up_to_its_cap() -> None:
    times: list[float] = []

    def attempt() -> None:
        times.append(time.monotonic())
        raise TransientError("down")

    with pytest.raises(TransientError):
        RetryPolicy(None, max_backoff=0.16, first_backoff=0.02, max_attempts=6).run(attempt)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] < gaps[2] and all(g < 0.16 + 0.1 for g in gaps)
    assert gaps[-1] >= 0.15
