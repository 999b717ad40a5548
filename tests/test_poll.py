"""The brief's polling mode against a real lake: late commits, both layouts, the processed protocol."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from consumer.sources.postgres.poll import poll

from .conftest import Env, insert_rows


def test_poll_lands_everything_and_rewrites_nothing_unchanged(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 250)
    r = poll(env.settings(batch_size=100), once=True)
    assert (r.rows_read, r.rows_written) == (250, 250)
    with env.wh_conn() as wh:
        seq = wh.execute("select max(load_seq) from raw.lake_transactions").fetchone()[0]
        ops = wh.execute("select distinct op, source from raw.lake_transactions").fetchall()
    assert ops == [("P", "poll")]
    with env.lake_conn() as lake:
        lake.execute("update public.raw_transactions set data = data || '{\"status\": \"refunded\"}'"
                     " where (data->>'n')::int <= 3")
        insert_rows(lake, 2, start=1000)
    r = poll(env.settings(batch_size=100), once=True)  # re-reads the safety window
    assert r.rows_written == 2 + 3
    with env.wh_conn() as wh:
        rewritten = wh.execute("select count(*) from raw.lake_transactions where load_seq > %s", (seq,)).fetchone()[0]
    assert rewritten == 5
    env.assert_converged()


def test_a_row_that_commits_late_is_still_landed(env: Env) -> None:
    """created_at is taken at insert time; a long transaction commits after newer rows were polled."""
    late = psycopg.connect(env.lake_admin_dsn)
    try:
        late_id = late.execute("insert into public.raw_transactions (data, created_at)"
                               " values ('{\"late\": true}', now() - interval '10 seconds') returning id::text"
                               ).fetchone()[0]
        with env.lake_conn() as lake:
            insert_rows(lake, 20)
        poll(env.settings(), once=True, safety_lag=60)
        assert late_id not in env.landed()
        late.commit()
    finally:
        late.close()
    r = poll(env.settings(), once=True, safety_lag=60)
    assert late_id in env.landed()
    assert r.rows_written == 1  # the 20 already landed are re-read in the window but not rewritten
    env.assert_converged()


def test_mark_processed_flags_exactly_the_landed_rows(env: Env) -> None:
    from consumer.sources.postgres.poll import PollError

    with env.lake_conn() as lake:
        ids = insert_rows(lake, 40)
        lake.execute("update public.raw_transactions set processed = true where id = any(%s::uuid[])", (ids[:10],))
    with pytest.raises(PollError, match="GRANT UPDATE"):  # the lake role is read-only by default
        poll(env.settings(), once=True, mark_processed=True)
    with env.lake_conn() as lake:  # the rows are in the warehouse but not flagged: the next poll flags them
        lake.execute("grant update (processed, processed_at) on public.raw_transactions to lake_reader")
    r = poll(env.settings(batch_size=7), once=True, mark_processed=True)
    assert (r.rows_read, r.rows_written, r.rows_marked) == (30, 0, 30)
    with env.lake_conn() as lake:
        flagged = {row[0] for row in lake.execute(
            "select id::text from public.raw_transactions where processed and processed_at is not null")}
    with env.wh_conn() as wh:
        landed = {row[0] for row in wh.execute("select lake_key from raw.lake_transactions")}
    assert landed == set(ids[10:])
    assert flagged == set(ids[10:])  # the 10 pre-flagged rows have no processed_at: not touched by us
    assert poll(env.settings(), once=True, mark_processed=True).rows_read == 0


def test_default_poll_never_writes_to_the_lake(env: Env) -> None:
    """Without --mark-processed the lake role could be read-only: nothing in the lake changes."""
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
        before = lake.execute("select md5(string_agg(t::text, ',' order by id)) from public.raw_transactions t"
                              ).fetchone()[0]
    poll(env.settings(), once=True)
    with env.lake_conn() as lake:
        after = lake.execute("select md5(string_agg(t::text, ',' order by id)) from public.raw_transactions t"
                             ).fetchone()[0]
    assert before == after


def test_poll_the_older_layout(env: Env) -> None:
    with env.lake_conn() as lake:
        lake.execute("create table public.legacy (id serial primary key, transaction_data jsonb not null,"
                     " source varchar(50), created_at timestamp default now(), processed boolean default false,"
                     " processed_at timestamp)")
        lake.execute("grant select on public.legacy to lake_reader")
        lake.execute("grant update (processed, processed_at) on public.legacy to lake_reader")
        lake.execute("""insert into public.legacy (transaction_data, source) values
            ('{"id": "tx_123", "amount": 100.50, "status": "approved"}', 'stripe'),
            ('{"transaction_id": "pay_456", "value": 250, "state": "declined"}', 'adyen')""")
    r = poll(env.settings(table="public.legacy"), once=True)
    assert r.rows_written == 2
    r = poll(env.settings(table="public.legacy"), once=True, mark_processed=True)
    assert r.rows_marked == 2
    with env.wh_conn() as wh:
        rows = wh.execute("select lake_key, payload->>'status', row_data->>'source' from raw.lake_transactions"
                          " order by 1").fetchall()
    assert rows == [("1", "approved", "stripe"), ("2", None, "adyen")]


def test_continuous_poll_stops_on_request(env: Env) -> None:
    stop = threading.Event()
    results = []
    t = threading.Thread(target=lambda: results.append(poll(env.settings(interval=0.1), stop=stop)))
    t.start()
    try:
        with env.lake_conn() as lake:
            insert_rows(lake, 3)
        deadline = time.time() + 20
        while time.time() < deadline and len(env.landed()) < 3:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(timeout=20)
    assert not t.is_alive() and results and results[0].polls >= 1
    env.assert_converged()


@pytest.mark.parametrize("missing", ["created_at"])
def test_a_table_without_a_watermark_column_is_refused_clearly(env: Env, missing: str) -> None:
    from consumer.sources.postgres.poll import PollError

    with env.lake_conn() as lake:
        lake.execute("create table public.nowm (id int primary key, data jsonb)")
        lake.execute("grant select on public.nowm to lake_reader")
    with pytest.raises(PollError, match="no 'created_at' column"):
        poll(env.settings(table="public.nowm"), once=True)


@pytest.mark.parametrize("mark_processed", [False, True])
def test_integer_keys_poll_in_many_pages(env: Env, mark_processed: bool) -> None:
    """Pages of 7 over 45 rows with one created_at and serial keys: every page must continue after
    the previous one in key order (an ORDER BY on the text output sorted "10" before "9")."""
    with env.lake_conn() as lake:
        lake.execute("create table public.legacy (id serial primary key, transaction_data jsonb not null,"
                     " source varchar(50), created_at timestamptz not null default now(),"
                     " processed boolean not null default false)")
        lake.execute("grant select, update on public.legacy to lake_reader")
        lake.execute("insert into public.legacy (transaction_data, created_at) select jsonb_build_object('n', g),"
                     " '2026-01-01T00:00:00Z' from generate_series(1, 45) g")
    r = poll(env.settings(table="public.legacy", batch_size=7), once=True, mark_processed=mark_processed)
    assert r.rows_written == 45
    with env.wh_conn() as wh:
        keys = sorted(int(k) for (k,) in wh.execute("select lake_key from raw.lake_transactions").fetchall())
    assert keys == list(range(1, 46))
