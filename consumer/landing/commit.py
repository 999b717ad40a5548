"""The one landing commit (as Debezium's committer, PeerDB's sync step): a source's rows and its
checkpoint go into the warehouse in ONE transaction, the single-writer fence checked inside it.
What the source does after the commit (confirm an LSN, flag lake rows processed) is its
``acknowledge``; a crash between the two replays at most what the checkpoint already covers, and
the upsert makes a replay harmless."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import psycopg

from .table import LandingBatch, write_batch

__all__ = ["Checkpoint", "Fence", "commit"]


class Checkpoint(Protocol):
    """A source's position, saved in the landing transaction (a slot's LSN, a poll watermark, a
    file's version, a snapshot cursor); ``rows`` is what this commit wrote."""

    def save(self, conn: psycopg.Connection, rows: int) -> None: ...


class Fence(Protocol):
    """The single-writer fence of a source that must have one writer (a replication slot)."""

    def check(self, conn: psycopg.Connection) -> None: ...


#: What a commit writes: a batch of rows, records already staged (``stage``), or a function that
#: writes on the connection itself (a file streams its records through a temp table) and returns
#: the number of rows written.
Rows = LandingBatch | Sequence[Sequence[Any]] | Callable[[psycopg.Connection], int]


def commit(conn: psycopg.Connection, rows: Rows, checkpoint: Checkpoint | None = None, *,
           fence: Fence | None = None, source: str | None = None, files_are_lake_export: bool = False) -> int:
    """Write ``rows`` and ``checkpoint`` in one warehouse transaction, the fence checked first inside
    it (a consumer that lost the fence writes nothing); rows written. ``source`` names the writer when
    ``rows`` are staged records."""
    with conn.transaction():
        if fence is not None:
            fence.check(conn)
        if callable(rows):
            written = rows(conn)
        elif isinstance(rows, LandingBatch):
            written = write_batch(conn, rows, files_are_lake_export=files_are_lake_export)
        else:
            written = write_batch(conn, None, list(rows), source=source, files_are_lake_export=files_are_lake_export)
        if checkpoint is not None:
            checkpoint.save(conn, written)
    return written
