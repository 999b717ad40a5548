"""Where lake rows come from: the PostgreSQL lake (``postgres``: CDC by logical replication, its
snapshot, keyset polling) and files (``files``: a folder or an S3 prefix).

Every source follows one contract: it reads a batch, hands it with its checkpoint to
``consumer.landing.commit`` (rows and checkpoint in one warehouse transaction, the fence inside),
then acknowledges the checkpoint (confirm the LSN, flag rows processed, or nothing). ``run_source``
runs a source's passes and owns its reconnects, with the one retry policy (``consumer.retry``):
permanent errors raise ``ConfigError`` at once, transient ones back off until the deadline.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator, TypeVar

from ..retry import RetryPolicy
from ..settings import Settings

__all__ = ["run_source"]

T = TypeVar("T")


def run_source(settings: Settings, one_pass: Callable[[], T], *, once: bool, stop: threading.Event, what: str,
               interval: float = 0.0, on_retry: Callable[[], None] | None = None,
               max_attempts: int | None = None, secrets: tuple[str, ...] | None = None) -> Iterator[T]:
    """Run ``one_pass`` (reconnecting through the retry policy) and yield each pass's result: once
    with ``once``, else again every ``interval`` seconds until ``stop``. A permanent problem, or a
    transient one that outlasts ``settings.retry_for`` (or ``max_attempts``), raises out of the loop.
    The deadline is per pass: it measures consecutive failures, never the run's age."""
    policy = RetryPolicy.for_run(once=once, retry_for=settings.retry_for, max_backoff=settings.max_backoff,
                                 secrets=secrets if secrets is not None
                                 else tuple(d for d in (settings.lake_dsn, settings.warehouse_dsn) if d),
                                 max_attempts=max_attempts)
    while not stop.is_set():
        yield policy.run(one_pass, stop=stop, what=what, on_retry=on_retry)
        if once:
            return
        if interval:
            stop.wait(interval)
