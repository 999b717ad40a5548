"""The one retry policy of every source (replicate, poll, load, run): a permanent error (bad DSN,
authentication, unknown role or database, missing privilege or table) fails at once; a transient
one (the lake or the warehouse is down, a connection dropped) is retried with exponential back-off
until ``deadline`` seconds have passed without a success, then fails with the last error."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import tenacity

from .errors import PaynormError, TransientError, classify

__all__ = ["RetryPolicy", "ONCE_DEFAULT_DEADLINE"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long `--once` keeps retrying a transient problem when no --retry-for is given: cron and
#: Kubernetes CronJobs must see the run end (exit 1), not hang.
ONCE_DEFAULT_DEADLINE = 60.0

# What a source may raise that is a connection problem (psycopg's, or a socket's).
_DRIVER_ERRORS: tuple[type[BaseException], ...]
try:
    import psycopg
    from psycopg_pool import PoolTimeout

    _DRIVER_ERRORS = (psycopg.Error, PoolTimeout, TimeoutError, ConnectionError, OSError)
except ImportError:  # pragma: no cover
    _DRIVER_ERRORS = (TimeoutError, ConnectionError, OSError)


@dataclass
class RetryPolicy:
    """``deadline``: seconds of consecutive failures before giving up (None: retry forever);
    ``max_backoff``: the longest wait between attempts."""

    deadline: float | None
    max_backoff: float = 30.0
    first_backoff: float = 1.0
    secrets: tuple[str, ...] = ()
    max_attempts: int | None = None  # also give up after this many attempts (the pipeline's stages)

    @classmethod
    def for_run(cls, *, once: bool, retry_for: float | None, max_backoff: float,
                secrets: tuple[str, ...] = (), max_attempts: int | None = None) -> "RetryPolicy":
        """The policy of a command: ``retry_for`` when given (0 = forever), else bounded in --once."""
        if retry_for is not None:
            deadline = None if retry_for <= 0 else retry_for
        else:
            deadline = ONCE_DEFAULT_DEADLINE if once else None
        return cls(deadline, max_backoff, secrets=secrets, max_attempts=max_attempts)

    def run(self, attempt: Callable[[], T], *, stop: threading.Event | None = None, what: str = "paynorm",
            on_retry: Callable[[], None] | None = None) -> T:
        """``attempt()`` until it returns; driver errors are classified (classify): permanent ones
        raise ConfigError at once, transient ones are retried. Raises TransientError at the deadline.
        ``on_retry`` runs before each new attempt (release a fence, drop a pool...)."""
        stop = stop or threading.Event()

        def call() -> T:
            try:
                return attempt()
            except PaynormError:
                raise
            except _DRIVER_ERRORS as e:
                raise classify(e, secrets=self.secrets) from e

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            log.warning("%s: %s; retrying in %.0fs", what, exc, wait)
            if on_retry is not None:
                on_retry()

        streak = _FailureStreak(self.deadline)
        stops = tenacity.stop_any(streak, _StopOnEvent(stop),
                                  tenacity.stop_after_attempt(self.max_attempts) if self.max_attempts
                                  else tenacity.stop_never)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=lambda state: min(self.max_backoff, self.first_backoff * 2 ** max(streak.failures - 1, 0)),
            stop=stops, sleep=lambda s: stop.wait(s), before=streak.before, after=streak.after,
            before_sleep=before_sleep, reraise=True)
        try:
            return retrying(call)
        except TransientError as e:
            if not stop.is_set() and (self.deadline is not None or self.max_attempts):
                raise TransientError(f"{e} (gave up after retrying; --retry-for / PAYNORM_RETRY_FOR sets for how "
                                     f"long)") from e
            raise


class _FailureStreak(tenacity.stop.stop_base):
    """Stop once failures have gone on for ``deadline`` seconds in a row. The streak starts when the
    first failed attempt ends, not when the command started: a continuous consumer that streamed for
    hours and then lost its lake gets the whole deadline. An attempt that itself ran longer than the
    deadline before failing was working: it starts a new streak, and the back-off starts over."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.started: float | None = None  # end of the first failure of the streak
        self.failures = 0
        self._attempt_began = time.monotonic()

    def before(self, retry_state: tenacity.RetryCallState) -> None:
        self._attempt_began = time.monotonic()

    def after(self, retry_state: tenacity.RetryCallState) -> None:
        """A failed attempt ended (runs before the wait and the stop are computed)."""
        now = time.monotonic()
        long_run = self.deadline is not None and now - self._attempt_began > self.deadline
        if self.started is None or long_run:
            self.started, self.failures = now, 0
        self.failures += 1

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return (self.deadline is not None and self.started is not None
                and time.monotonic() - self.started >= self.deadline)


class _StopOnEvent(tenacity.stop.stop_base):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.event.is_set()
