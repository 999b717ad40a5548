"""Every ```sql block of README.md and docs/*.md runs against a warehouse built from the demo data.

The documented queries are what analysts paste first; a renamed column or mart breaks them
silently unless they are executed. Queries run as the warehouse role in a read-only transaction;
blocks with other statements (roles, grants) run as the superuser in a transaction that is rolled
back. Every block is bounded by a statement_timeout.
"""

from __future__ import annotations

import os
import re
import textwrap
from typing import Iterator

import psycopg
import pytest
import sqlparse
from psycopg import sql

from consumer import devdb
from consumer.demo import generate_records, insert_records
from consumer.landing.analyst import ensure_analyst_role
from consumer.pipeline import Pipeline

from .conftest import REPO, Env, fresh_env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# An opening fence (possibly indented inside a list item) ```sql, up to the closing fence at the same indent.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```sql[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
QUERY_KEYWORDS = {"select", "with", "table", "values", "explain", "show"}
STATEMENT_TIMEOUT = "30s"
ANALYST_ROLE = "paynorm_analyst"  # the name the docs use


def sql_blocks() -> list[tuple[str, str]]:
    """(id "file:line", SQL text) of every ```sql block of the docs."""
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((f"{path.relative_to(REPO)}:{line}", textwrap.dedent(m.group("body"))))
    return blocks


def statements(block: str) -> list[str]:
    return [s.strip().rstrip(";") for s in sqlparse.split(block) if sqlparse.format(s, strip_comments=True).strip()]


def is_query(stmt: str) -> bool:
    first = sqlparse.format(stmt, strip_comments=True).strip().split(None, 1)[0].lower()
    return first in QUERY_KEYWORDS


BLOCKS = sql_blocks()


def test_the_docs_have_sql_blocks() -> None:
    assert any(name.startswith("README.md") for name, _ in BLOCKS), "README.md lost its example queries"
    assert all(statements(body) for _, body in BLOCKS), "an empty ```sql block"


@pytest.fixture(scope="module")
def demo_env(lake_cluster: devdb.Cluster, wh_cluster: devdb.Cluster, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[Env]:
    """A lake with the demo records and a warehouse after one `paynorm run --once` cycle."""
    with fresh_env(lake_cluster, wh_cluster, f"{os.getpid()}_docs_sql") as env:
        with env.lake_conn() as lake:
            n = insert_records(lake, generate_records(600, seed=5))
        assert n == 600
        home = tmp_path_factory.mktemp("docs-sql") / "home"
        assert Pipeline(env.settings(home=home)).run(once=True, interval=0) == 0
        # The analyst group the docs grant to, set up as docs/marts.md says: an administrator creates
        # the role once (the warehouse user has no CREATEROLE), `paynorm init --analyst-role` grants it.
        with wh_cluster.connect(env.wh_db) as admin:
            try:
                admin.execute(sql.SQL("create role {} nologin").format(sql.Identifier(ANALYST_ROLE)))
            except psycopg.errors.DuplicateObject:
                pass  # the session's warehouse cluster already has it
        with env.wh_conn() as conn:
            ensure_analyst_role(conn, ANALYST_ROLE)
        yield env


@pytest.mark.parametrize("name,block", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_sql_block_runs(demo_env: Env, name: str, block: str) -> None:
    stmts = statements(block)
    read_only = all(is_query(s) for s in stmts)
    # Queries as the warehouse role; administration (roles, grants) as the cluster's superuser, as a DBA runs it.
    dsn = demo_env.wh_dsn if read_only else demo_env.wh.dsn(demo_env.wh_db)
    with psycopg.connect(dsn) as conn:  # not autocommit: one transaction, never committed
        conn.execute("set transaction read only" if read_only else "set transaction read write")
        conn.execute("select set_config('statement_timeout', %s, true)", (STATEMENT_TIMEOUT,))
        try:
            for stmt in stmts:
                try:
                    cur = conn.execute(stmt)
                except psycopg.Error as e:
                    pytest.fail(f"{name}: {type(e).__name__}: {e}\n  in: {stmt}")
                if is_query(stmt):
                    assert cur.description is not None, f"{name}: {stmt} returned no result set"
                    cur.fetchall()
        finally:
            conn.rollback()
