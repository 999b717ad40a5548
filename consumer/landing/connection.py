"""The warehouse connections every source writes through."""

from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

__all__ = ["open_pool", "check_connection"]


def _configure(conn: psycopg.Connection) -> None:
    """Session settings of every landing connection, before it first touches its temp table:
    - jit off: the upsert's estimated cost crosses jit_above_cost, and compiling it costs more
      (~17 ms a batch, measured) than it saves on 10k rows;
    - temp_buffers 64MB: a 10k-row staging table (~15 MB) otherwise spills to disk at every batch."""
    conn.execute("set jit = off")
    conn.execute("set temp_buffers = '64MB'")


def open_pool(dsn: str, max_size: int = 4) -> ConnectionPool:
    """The warehouse pool: opened explicitly, connections checked before use (the warehouse may restart)."""
    pool = ConnectionPool(dsn, min_size=1, max_size=max_size, open=False, check=ConnectionPool.check_connection,
                          configure=_configure, kwargs={"autocommit": True, "application_name": "paynorm"},
                          name="warehouse")
    pool.open(wait=True, timeout=30)
    return pool


def check_connection(dsn: str) -> None:
    """Connect once (and close): a permanent problem (bad DSN, password, role, database) raises
    here, classified, instead of a connection pool retrying it in the background."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10):
        pass
