"""paynorm.try_timestamptz against PostgreSQL's own cast, on the strings where they could part.

The function checks a text before casting it (no exception block, so builds can run in parallel
workers); the reference here is the cast inside an exception block, i.e. PostgreSQL deciding
itself. Both run on the same server over generated strings: valid and invalid calendars, 24:00 and
leap seconds, fractions that round up, offsets around 15:59, ASCII and Unicode spaces and digits.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

import psycopg
import pytest

from consumer import devdb, rules

REFERENCE = r"""
create function pg_temp.reference_timestamptz(v text) returns timestamptz language plpgsql as $$
begin
    if v is null or v !~ '^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)?\s*$' then
        return null;
    end if;
    if v ~ '(Z|z|[+-]\d{2}(:?\d{2})?)\s*$' and v ~ '[T ]\d{2}:\d{2}' then
        return v::timestamptz;
    end if;
    return v::timestamp at time zone 'UTC';
exception when others then
    return null;
end $$
"""

_SPACES = [" ", "\t", "\n", "\r", "\f", "\v", "\u00a0", "\u2003"]

EDGES = [
    "2024-02-29T10:00:00Z", "2023-02-29T10:00:00Z", "1900-02-29", "2000-02-29", "0000-01-01", "2024-04-31",
    "2024-01-01T24:00:00", "2024-01-01T24:00:00.0000004", "2024-01-01T24:00:00.0000005", "2024-01-01T24:00:01",
    "2024-01-01T23:59:60", "2024-01-01T23:59:60.5", "2024-01-01T23:59:59.9999996Z", "2024-01-01T12:30:60.25+02",
    "2024-01-01T00:00+15:59", "2024-01-01T00:00+16:00", "2024-01-01T00:00-1560", "2024-01-01T00:00-00",
    "2000-05-16-15", "2000-05-16 -15", "2000-05-16+1530", "2000-05-16Z", "2024-01-01t10:00", " 2024-01-01 ",
    "\v2024-01-01T10:00", "\u00a02024-01-01", "2024-01-01\u2003", "\u0662024-01-01", "2024-13-01", "2024-00-10",
    "2024-01-01T25:00", "2024-01-01T10:60", "", "   ", "not a date", "2024-01-01T10:00:00.123456789Z",
]


def _two(r: random.Random, lo: int, hi: int) -> str:
    return f"{r.randint(lo, hi):02d}"


def _well_formed(r: random.Random) -> str:
    """Strings of the usual forms, with every field near its limits (the function's fast path)."""
    out = r.choice(["0999", "1000", "1900", "2000", "2024", "2999", "3000"]) + "-"
    out += r.choice(["00", "01", "02", "04", "12", "13"]) + "-" + r.choice(["00", "01", "28", "29", "30", "31"])
    if r.random() < 0.9:
        out += r.choice("T ") + r.choice(["00", "23", "24"]) + ":" + r.choice(["00", "59", "60"])
        if r.random() < 0.8:
            out += ":" + r.choice(["00", "59", "60"]) + r.choice(["", "", ".5", ".999999", ".9999996"])
    if r.random() < 0.7:
        out += r.choice(["Z", "+00:00", "-05:00", "+0530", "+15", "+15:59", "-16:00", "+14:60"])
    return out


def _generated(r: random.Random) -> str:
    year = r.choice([f"{r.randint(0, 9999):04d}", "0000", "1900", "1996", "2000", "2024", "2100"])
    out = r.choice(["", "", "", r.choice(_SPACES)])
    out += f"{year}-{r.choice([_two(r, 0, 13), _two(r, 1, 12)])}-{r.choice([_two(r, 0, 32), _two(r, 28, 31)])}"
    if r.random() < 0.8:
        out += r.choice(["T", " ", "t"]) + r.choice([_two(r, 0, 25), "23", "24"]) + ":"
        out += r.choice([_two(r, 0, 60), "59", "00"])
        if r.random() < 0.7:
            out += ":" + r.choice([_two(r, 0, 61), "59", "60", "00"])
            if r.random() < 0.5:
                out += r.choice([".0000005", ".9999995", ".9999996", ".0",
                                 "." + "".join(r.choice("0123456789") for _ in range(r.randint(1, 12)))])
    out += r.choice(["", "", " ", "\t"])
    k = r.random()
    if k < 0.2:
        out += r.choice("Zz")
    elif k < 0.6:
        out += r.choice("+-") + r.choice([_two(r, 0, 16), "15", "16", "99"])
        out += r.choice(["", ":" + r.choice([_two(r, 0, 60), "59", "60"]), r.choice(["00", "30", "59", "60"])])
    if r.random() < 0.2:
        out += r.choice(_SPACES)
    if r.random() < 0.01:
        out = out.replace("2", "\u0662")  # an Arabic-Indic digit: \d matches it, the cast does not
    return out


@pytest.fixture(scope="module")
def conn(wh_cluster: devdb.Cluster) -> Iterator[psycopg.Connection]:
    name = f"timestamps_{os.getpid()}"
    wh_cluster.create_database(name)
    try:
        with wh_cluster.connect(name) as c:
            rules.ensure_schema(c)
            c.execute("set timezone = 'UTC'")
            c.execute(REFERENCE)
            yield c
    finally:
        wh_cluster.drop_database(name)


def test_parallel_safe(conn: psycopg.Connection) -> None:
    """The build runs in parallel workers only if every function it calls is parallel safe."""
    row = conn.execute("select proparallel from pg_proc where oid = 'paynorm.try_timestamptz(text)'::regprocedure")
    assert row.fetchone() == ("s",)


def test_same_as_postgres_cast(conn: psycopg.Connection) -> None:
    r = random.Random(20261203)
    samples = EDGES + [_generated(r) for _ in range(100_000)] + [_well_formed(r) for _ in range(20_000)]
    conn.execute("create temp table samples (v text)")
    with conn.cursor().copy("copy samples (v) from stdin") as copy:
        for s in samples:
            copy.write_row((s,))
    parsed, differ = conn.execute(
        "select count(pg_temp.reference_timestamptz(v)),"
        " count(*) filter (where paynorm.try_timestamptz(v) is distinct from pg_temp.reference_timestamptz(v))"
        " from samples").fetchone()
    examples = conn.execute(
        "select v, paynorm.try_timestamptz(v)::text, pg_temp.reference_timestamptz(v)::text from samples"
        " where paynorm.try_timestamptz(v) is distinct from pg_temp.reference_timestamptz(v) limit 5").fetchall()
    assert differ == 0, examples
    assert 25_000 < parsed < 90_000  # the samples hold both kinds in numbers: the comparison means something
    assert conn.execute("select paynorm.try_timestamptz('2024-03-01T10:00:00+05:30')::text").fetchone() == \
        ("2024-03-01 04:30:00+00",)
