"""The polling source against real clusters: a created_at in the future, rows that change while
being flagged, a NULL processed flag, permanent and transient errors through the one retry policy,
a stop request in the middle of a pass, and table names that need quoting."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest

import consumer.sources.postgres.poll as pollmod
from consumer.errors import ConfigError, TransientError
from consumer.sources.postgres.poll import PollResult, poll

from .conftest import Env, insert_rows, scram_role


def _bounded(run: Callable[[threading.Event], PollResult], timeout: float = 30.0) -> PollResult:
    """``run(stop)`` on a thread: its result, or its exception re-raised here. A run still going
    after ``timeout`` is stopped and the test fails: an error that should end it is being looped on."""
    stop = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = run(stop)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        stop.set()
        t.join(30)
        pytest.fail(f"poll still running after {timeout:.0f}s (a retry loop on an error that should end it?)")
    if "error" in out:
        raise out["error"]
    return out["result"]


def _after_each_write(monkeypatch: pytest.MonkeyPatch, hook: Callable[[int], None]) -> None:
    """Run ``hook(n)`` right after the n-th landing write of the poller (n from 1), inside the pass:
    the moment between a page's landing commit and its acknowledgement in the lake."""
    real = pollmod.landing.commit
    calls = [0]

    def commit_then_hook(*args: Any, **kwargs: Any) -> int:
        written = real(*args, **kwargs)
        calls[0] += 1
        hook(calls[0])
        return written

    monkeypatch.setattr(pollmod.landing, "commit", commit_then_hook)


def _watermark(env: Env) -> str | None:
    with env.wh_conn() as wh:
        row = wh.execute("select watermark from paynorm.poll_state").fetchone()
    return row[0] if row else None


# -- 1. a created_at in the future ----------------------------------------------------------------


@pytest.mark.parametrize("future", ["2099-06-01T00:00:00Z", "infinity"])
def test_a_future_created_at_does_not_hide_the_rows_inserted_after_it(env: Env, future: str) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
        future_id = lake.execute("insert into public.raw_transactions (data, created_at)"
                                 " values ('{\"n\": -1}', %s) returning id::text", (future,)).fetchone()[0]
    r = poll(env.settings(), once=True)
    assert r.rows_written == 4 and future_id in env.landed()  # the future row lands
    with env.lake_conn() as lake:
        assert lake.execute("select %s::timestamptz <= now()", (_watermark(env),)).fetchone()[0], _watermark(env)
        later = insert_rows(lake, 5, start=100)
    r = poll(env.settings(), once=True)
    assert set(later) <= env.landed().keys(), "rows inserted after a future-dated row were never read"
    assert r.rows_written == 5
    again = poll(env.settings(), once=True)  # the future row is re-read while it is ahead, never rewritten
    assert again.rows_written == 0 and again.rows_read >= 1
    env.assert_converged()


def test_a_watermark_stored_in_the_future_is_pulled_back_to_now(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 2)
    poll(env.settings(), once=True)
    with env.wh_conn() as wh:  # as an earlier version could have left it
        wh.execute("update paynorm.poll_state set watermark = 'infinity'")
    with env.lake_conn() as lake:
        later = insert_rows(lake, 3, start=10)
    r = poll(env.settings(), once=True)
    assert r.rows_written == 3 and set(later) <= env.landed().keys()
    with env.lake_conn() as lake:
        assert lake.execute("select %s::timestamptz <= now()", (_watermark(env),)).fetchone()[0]
    env.assert_converged()


# -- 2. --mark-processed is compare-and-set --------------------------------------------------------


def test_mark_processed_leaves_a_row_that_changed_after_the_read_unflagged(env: Env,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 6)
        lake.execute("grant update (processed, processed_at) on public.raw_transactions to lake_reader")
    changed = ids[2]

    def change_one_row(n: int) -> None:  # another writer updates a row read in this page
        if n == 1:
            with env.lake_conn() as lake:
                lake.execute("update public.raw_transactions set data = data || '{\"status\": \"refunded\"}'"
                             " where id = %s", (changed,))

    _after_each_write(monkeypatch, change_one_row)
    r = poll(env.settings(), once=True, mark_processed=True)
    monkeypatch.undo()
    assert (r.rows_read, r.rows_marked) == (6, 5)
    with env.lake_conn() as lake:
        unflagged = [row[0] for row in lake.execute(
            "select id::text from public.raw_transactions where processed is not true")]
    assert unflagged == [changed], "a row changed after the read was flagged: its new data would never land"
    r = poll(env.settings(), once=True, mark_processed=True)
    assert (r.rows_read, r.rows_written, r.rows_marked) == (1, 1, 1)
    landed, lake_rows = env.landed(), env.lake_rows()
    assert landed[changed]["data"]["status"] == "refunded"
    # the landed images predate the flag, so only their data is compared
    assert {k: v["data"] for k, v in landed.items()} == {k: v["data"] for k, v in lake_rows.items()}


# -- 3. processed IS NULL is unprocessed -----------------------------------------------------------


def test_mark_processed_reads_rows_whose_flag_is_null(env: Env) -> None:
    with env.lake_conn() as lake:
        lake.execute("alter table public.raw_transactions alter column processed drop not null")
        ids = insert_rows(lake, 8)
        lake.execute("update public.raw_transactions set processed = null where id = any(%s::uuid[])", (ids[:5],))
        lake.execute("grant update (processed, processed_at) on public.raw_transactions to lake_reader")
    r = poll(env.settings(batch_size=3), once=True, mark_processed=True)
    assert (r.rows_read, r.rows_written, r.rows_marked) == (8, 8, 8)
    with env.lake_conn() as lake:
        assert lake.execute("select count(*) from public.raw_transactions where processed is not true"
                            ).fetchone()[0] == 0
    assert set(ids) == env.landed().keys()


# -- 4. the retry policy ---------------------------------------------------------------------------

PW_ROLE = "poll_pw"
PASSWORD = "the-right-one"


@pytest.fixture
def pw_role(env: Env) -> Iterator[str]:
    """A role that must authenticate with scram on both clusters (the test clusters trust the others)."""
    for cluster in (env.lake, env.wh):
        scram_role(cluster, PW_ROLE, PASSWORD)
    yield PW_ROLE


def _with_user(dsn: str, port: int, user: str, password: str) -> str:
    db = dsn.rsplit("/", 1)[1]
    return f"postgresql://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{port}/{db}"


@pytest.mark.parametrize("side", ["lake", "warehouse"])
def test_a_wrong_password_fails_at_once_with_a_config_error(env: Env, pw_role: str, side: str) -> None:
    wrong = "wr0ng-s3cret"
    if side == "lake":
        settings = env.settings(lake_dsn=_with_user(env.lake_dsn, env.lake.port, pw_role, wrong))
    else:
        settings = env.settings(warehouse_dsn=_with_user(env.wh_dsn, env.wh.port, pw_role, wrong))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="password authentication failed") as e:
        _bounded(lambda stop: poll(settings, once=True, stop=stop), timeout=40)
    assert time.monotonic() - t0 < 20 and wrong not in str(e.value)


def test_a_wrong_password_exits_4_in_one_line(env: Env, pw_role: str) -> None:
    wrong = "wr0ng-s3cret"
    proc = env.spawn("poll", "--once",
                     DATALAKE_DATABASE_URL=_with_user(env.lake_dsn, env.lake.port, pw_role, wrong))
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 4, out
    assert "Traceback" not in out and "retrying" not in out and wrong not in out, out
    assert "password authentication failed" in out, out


@pytest.mark.parametrize("problem", ["unknown role", "unknown database", "missing table", "missing privilege"])
def test_permanent_lake_problems_fail_at_once_with_a_config_error(env: Env, problem: str) -> None:
    settings = env.settings()
    if problem == "unknown role":
        settings.lake_dsn = env.lake_dsn.replace("lake_reader@", "nobody_here@")
    elif problem == "unknown database":
        settings.lake_dsn = env.lake_dsn.rsplit("/", 1)[0] + "/no_such_db"
    elif problem == "missing table":
        settings.table = "public.no_such_table"
    else:
        with env.lake_conn() as lake:
            insert_rows(lake, 2)
            lake.execute("revoke select on public.raw_transactions from lake_reader")
    t0 = time.monotonic()
    with pytest.raises(ConfigError):
        _bounded(lambda stop: poll(settings, once=True, stop=stop), timeout=30)
    assert time.monotonic() - t0 < 20


def test_a_watermark_column_of_another_type_is_refused_clearly(env: Env) -> None:
    with env.lake_conn() as lake:
        lake.execute("create table public.epochs (id int primary key, data jsonb, created_at bigint)")
        lake.execute("insert into public.epochs values (1, '{}', 1700000000)")
        lake.execute("grant select on public.epochs to lake_reader")
    with pytest.raises(ConfigError, match="created_at"):
        _bounded(lambda stop: poll(env.settings(table="public.epochs"), once=True, stop=stop), timeout=30)


def test_an_unreachable_lake_is_retried_with_back_off_until_the_deadline(env: Env,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = env.settings(lake_dsn=env.lake_dsn.replace(f":{env.lake.port}/", ":9/"), retry_for=3.0)
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="gave up after retrying"):
        _bounded(lambda stop: poll(settings, once=True, stop=stop), timeout=40)
    assert 3.0 <= time.monotonic() - t0 < 30
    assert sum("retrying in" in m for m in caplog.messages) >= 2, caplog.messages


def test_an_unreachable_lake_exits_1_after_retry_for(env: Env) -> None:
    proc = env.spawn("poll", "--once", "--retry-for", "3",
                     DATALAKE_DATABASE_URL=env.lake_dsn.replace(f":{env.lake.port}/", ":9/"))
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1 and "retrying in" in out and "gave up after retrying" in out, out
    assert "Traceback" not in out, out


def test_a_lake_connection_lost_mid_pass_is_reconnected(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with env.lake_conn() as lake:
        insert_rows(lake, 25)

    def kill_lake_sessions(n: int) -> None:
        if n == 1:
            with env.lake_conn() as lake:
                lake.execute("select pg_terminate_backend(pid) from pg_stat_activity"
                             " where datname = current_database() and usename = 'lake_reader'")

    _after_each_write(monkeypatch, kill_lake_sessions)
    r = _bounded(lambda stop: poll(env.settings(batch_size=10, retry_for=30.0), once=True, stop=stop), timeout=60)
    assert r.polls == 1 and not r.stopped
    assert any("retrying in" in m for m in caplog.messages), caplog.messages  # the pass did fail once
    env.assert_converged()


def test_a_stopped_poll_does_not_report_a_full_pass(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 25)
    stop = threading.Event()
    _after_each_write(monkeypatch, lambda n: stop.set())  # SIGTERM after the first page
    r = poll(env.settings(batch_size=10), once=True, stop=stop)
    monkeypatch.undo()
    assert r.stopped and r.polls == 0
    assert r.rows_read == 10 and len(env.landed()) == 10  # the page in flight is committed
    r = poll(env.settings(batch_size=10), once=True)
    assert not r.stopped and r.polls == 1
    env.assert_converged()


# -- names that need quoting -----------------------------------------------------------------------


@pytest.mark.parametrize("mark_processed", [False, True])
def test_a_schema_and_table_whose_names_need_quoting(env: Env, mark_processed: bool) -> None:
    with env.lake_conn() as lake:
        lake.execute('create schema "my-lake"')
        lake.execute('create table "my-lake"."Raw Tx" ("Tx Id" bigint generated always as identity primary key,'
                     ' data jsonb, created_at timestamptz not null default now(),'
                     ' processed boolean not null default false, processed_at timestamptz)')
        lake.execute('insert into "my-lake"."Raw Tx" (data) select jsonb_build_object(\'n\', g)'
                     ' from generate_series(1, 7) g')
        lake.execute('grant usage on schema "my-lake" to lake_reader')
        lake.execute('grant select, update (processed, processed_at) on "my-lake"."Raw Tx" to lake_reader')
    settings = env.settings(table="my-lake.Raw Tx", batch_size=3)
    r = _bounded(lambda stop: poll(settings, once=True, mark_processed=mark_processed, stop=stop), timeout=30)
    assert r.rows_written == 7 and r.rows_marked == (7 if mark_processed else 0)
    with env.wh_conn() as wh:
        keys = sorted(int(k) for (k,) in wh.execute("select lake_key from raw.lake_transactions"))
    assert keys == list(range(1, 8))
    r = _bounded(lambda stop: poll(settings, once=True, mark_processed=mark_processed, stop=stop), timeout=30)
    assert r.rows_written == 0
