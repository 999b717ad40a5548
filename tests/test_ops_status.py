"""`paynorm status` against real clusters: a lag that means lag (per slot, 0 when caught up even on
a busy instance, the age of the oldest unapplied change otherwise), every source kind shown, and
an answer rather than a hang when a table is locked."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from consumer.ops.status import collect, render
from consumer.sources.files import load
from consumer.sources.postgres.poll import poll
from consumer.sources.postgres.replicate import replicate

from .conftest import Env, insert_rows


def _slot(info: dict) -> dict:
    (slot,) = info["cdc"]
    return slot


def _busy_other_table(env: Env, rows: int = 20000) -> None:
    """WAL on the lake that is none of paynorm's business (another table, another database's work)."""
    with env.lake_conn() as lake:
        lake.execute("create table if not exists public.unrelated (id bigserial primary key, note text)")
        lake.execute("insert into public.unrelated (note) select repeat('x', 200) from generate_series(1, %s)", (rows,))


def test_caught_up_on_an_idle_table_of_a_busy_instance(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    assert replicate(env.settings(), once=True).exit_code == 0
    _busy_other_table(env)
    info = collect(env.settings())
    slot = _slot(info)
    assert slot["lake_slot"]["lag_bytes"] > 1_000_000  # the instance wrote plenty of WAL since
    assert slot["lag"]["seconds"] == 0 and slot["lag"]["caught_up"] is True, slot["lag"]
    # what the warehouse says it confirmed is what the lake's slot says
    assert slot["confirmed_lsn"] == slot["lake_slot"]["confirmed_flush_lsn"]
    text = render(info)
    assert "caught up (0 s behind)" in text and "inactive, wal_status reserved" in text


def test_seconds_behind_is_the_age_of_the_oldest_unapplied_change(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
    assert replicate(env.settings(), once=True).exit_code == 0
    _busy_other_table(env, 1000)
    with env.lake_conn() as lake:
        committed = lake.execute("select now()").fetchone()[0]
        insert_rows(lake, 4, start=10)  # its own transaction, committed right after `committed`
    _busy_other_table(env, 1000)
    time.sleep(2.0)
    lag = _slot(collect(env.settings()))["lag"]
    assert lag["caught_up"] is False
    assert 2.0 <= lag["seconds"] < 60, lag
    assert abs((lag["oldest_change_at"] - committed).total_seconds()) < 1.5
    assert "behind (oldest unapplied change committed" in render(collect(env.settings()))
    assert replicate(env.settings(), once=True).exit_code == 0
    assert _slot(collect(env.settings()))["lag"]["seconds"] == 0


def test_a_streaming_consumer_reports_its_own_lag(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    stop = threading.Event()
    settings = env.settings(status_interval=0.5)
    worker = threading.Thread(target=replicate, args=(settings,), kwargs={"stop": stop}, daemon=True)
    worker.start()
    try:
        deadline = time.time() + 60
        lag = None
        while time.time() < deadline:
            info = collect(settings)
            if info.get("cdc"):  # the consumer has initialized the warehouse and taken the slot
                slot = _slot(info)
                lag = slot["lag"]
                if slot.get("lake_slot") and slot["lake_slot"]["active"] and lag["caught_up"]:
                    break
            time.sleep(0.3)
        assert lag is not None and lag["caught_up"] is True and lag["seconds"] == 0, lag
        assert lag["basis"] == "reported by the streaming consumer"
        _busy_other_table(env, 5000)  # the stream sees only empty transactions: still caught up
        with env.lake_conn() as lake:
            insert_rows(lake, 2, start=50)
        time.sleep(1.5)
        lag = _slot(collect(settings))["lag"]
        assert lag["seconds"] is not None and lag["seconds"] < 5, lag
    finally:
        stop.set()
        worker.join(timeout=60)
    assert len(env.landed()) == 7


def test_status_answers_while_the_landing_is_locked(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
    assert replicate(env.settings(), once=True).exit_code == 0
    with env.wh_conn() as locker:
        locker.execute("begin")
        locker.execute("lock table raw.lake_transactions in access exclusive mode")
        started = time.monotonic()
        info = collect(env.settings(), timeout=1.0)
        took = time.monotonic() - started
        locker.execute("rollback")
    assert took < 8, took
    assert any(e.startswith("landing:") for e in info["errors"]), info["errors"]
    assert _slot(info)["lag"]["caught_up"] is True  # what could be read still is
    assert "not read        landing:" in render(info)


def test_status_of_a_poll_fed_warehouse_shows_the_watermark_and_no_slot(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 6)
    result = poll(env.settings(), once=True)
    assert result.rows_written == 6
    info = collect(env.settings())
    assert info["cdc"] == []  # the lake's slot of another consumer is not this warehouse's business
    (p,) = info["poll"]
    assert p["lake_table"].endswith("raw_transactions") and p["watermark"] and p["rows_landed"] == 6
    text = render(info)
    assert "poll            " in text and "slot  " not in text


def test_status_of_a_files_fed_warehouse_lists_failed_files(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "good.jsonl").write_text('{"id": "1", "data": {"status": "approved"}}\n')
    (folder / "bad.jsonl").write_bytes(b"\xff\xfe not utf-8 at all\n")
    settings = env.settings(lake_dsn="")
    load(settings, str(folder), once=True)
    info = collect(settings)
    assert info["files"]["by_status"]["completed"] == 1 and info["files"]["by_status"]["failed"] == 1
    (failed,) = info["files"]["failed"]
    assert failed["key"].endswith("bad.jsonl") and failed["error_code"]
    text = render(info)
    assert "1 completed" in text and "failed        " in text and "bad.jsonl" in text
    assert "lake_up" not in info  # no lake DSN: nothing claimed about a lake


def test_status_of_an_empty_warehouse(env: Env) -> None:
    info = collect(env.settings())
    assert info["warehouse_up"] and info["initialized"] is False
    assert "not initialized" in render(info)


def test_lag_from_a_consumer_report_is_believed_only_while_fresh() -> None:
    """Pure logic: a streaming consumer's report older than STALE_REPORT_SECONDS says nothing."""
    from datetime import datetime, timedelta, timezone

    from consumer.ops.status import STALE_REPORT_SECONDS, _lag

    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    streamed = {"lake_slot": {"active": True}, "behind_since": now - timedelta(seconds=42),
                "lag_checked_at": now - timedelta(seconds=5)}
    assert _lag(streamed, now)["seconds"] == 42 and _lag(streamed, now)["caught_up"] is False
    assert _lag({**streamed, "behind_since": None}, now)["seconds"] == 0
    stale = {**streamed, "lag_checked_at": now - timedelta(seconds=STALE_REPORT_SECONDS + 1)}
    assert _lag(stale, now)["seconds"] is None and _lag(stale, now)["basis"].startswith("unknown")
    assert _lag({"lake_slot": None}, now)["basis"] == "slot missing on the lake"
    peeked = {"lake_slot": {"active": False}, "peeked": True, "oldest_unconfirmed_change": now - timedelta(minutes=3)}
    assert _lag(peeked, now)["seconds"] == 180
