"""The CDC consumer when the lake table's schema changes under it: a numeric column added mid-stream,
the table renamed away and back or dropped and re-created, the payload column renamed, a replica
identity that would lose updates and deletes, names that need quoting, the slot dropped."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any, Callable

import pytest
from psycopg import sql

from consumer.sources.postgres.cdc import load_state
from consumer.devdb import LAKE_DDL
from consumer.doctor import run_checks
from consumer.errors import EXIT_CONFIG, EXIT_OK, EXIT_SLOT_LOST
from consumer.sources.postgres.replicate import ReplicateResult, replicate

from .conftest import Env, insert_rows

TRANSPORTS = ["stream", "sql"]


def run_once(env: Env, **kw: Any) -> ReplicateResult:
    resnapshot = bool(kw.pop("resnapshot", False))
    return replicate(env.settings(**kw), once=True, resnapshot=resnapshot, max_attempts=3)


def ok_once(env: Env, **kw: Any) -> ReplicateResult:
    result = run_once(env, **kw)
    assert result.exit_code == EXIT_OK, result.message
    return result


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """`replicate` continuous in a thread; ``result`` once it ended (or the exception it raised)."""

    def __init__(self, env: Env, **kw: Any) -> None:
        self.stop = threading.Event()
        self.outcome: list[Any] = []
        settings = env.settings(**kw)

        def target() -> None:
            try:
                self.outcome.append(replicate(settings, stop=self.stop))
            except BaseException as e:  # noqa: BLE001 - a traceback is what the tests look for
                self.outcome.append(e)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def ended(self) -> bool:
        return not self.thread.is_alive()

    def wait_for_snapshot(self, env: Env, rows: int | None = None) -> None:
        """Until the snapshot is done (and ``rows`` rows landed), or replicate ended."""
        wait_for("the snapshot", lambda: snapshot_done(env) and (rows is None or len(env.landed()) == rows)
                 or self.ended())

    def finish(self, timeout: float = 60.0) -> ReplicateResult:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "replicate did not stop"
        return self.result()

    def result(self) -> ReplicateResult:
        assert self.outcome, "replicate has not ended"
        out = self.outcome[0]
        assert isinstance(out, ReplicateResult), f"replicate raised {out!r}"
        return out


def snapshot_done(env: Env, slot: str | None = None) -> bool:
    with env.wh_conn() as wh:
        if wh.execute("select to_regclass('paynorm.replication_state')").fetchone()[0] is None:
            return False
        st = load_state(wh, slot or env.slot)
    return bool(st and st.snapshot_done)


def confirmed_lsn(env: Env, slot: str | None = None) -> str:
    with env.lake_conn() as lake:
        return lake.execute("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                            (slot or env.slot,)).fetchone()[0]


def lsn_le(env: Env, a: str, b: str) -> bool:
    with env.lake_conn() as lake:
        return bool(lake.execute("select %s::pg_lsn <= %s::pg_lsn", (a, b)).fetchone()[0])


def current_lsn(env: Env) -> str:
    with env.lake_conn() as lake:
        return lake.execute("select pg_current_wal_lsn()::text").fetchone()[0]


def slot_idle(env: Env, slot: str | None = None) -> None:
    """The walsender of a run that just ended may still hold the slot for a moment."""
    with env.lake_conn() as lake:
        for _ in range(100):
            row = lake.execute("select active from pg_replication_slots where slot_name = %s",
                               (slot or env.slot,)).fetchone()
            if row is None or not row[0]:
                return
            time.sleep(0.05)


def landed_column(env: Env, column: str) -> dict[str, Any]:
    with env.wh_conn() as wh:
        return dict(wh.execute("select lake_key, row_data->>%s from raw.lake_transactions where not deleted",
                               (column,)).fetchall())


# -- 5: a numeric column added while the stream runs ------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_numeric_column_added_mid_stream_lands_exactly(env: Env, transport: str) -> None:
    """The table had no fractional column when the session started (the fast parser's case):
    ALTER TABLE ADD COLUMN fee numeric, then fee = 1.10 must land as 1.10, never as a float and
    never as a traceback; so must an integer beyond 64 bits."""
    with env.lake_conn() as lake:
        before = insert_rows(lake, 5)
    run = Running(env, transport=transport)
    try:
        run.wait_for_snapshot(env, rows=5)
        with env.lake_conn() as lake:
            lake.execute("alter table public.raw_transactions add column fee numeric")
            new = insert_rows(lake, 3, start=100)
            lake.execute("update public.raw_transactions set fee = 1.10 where id = %s::uuid", (new[0],))
            lake.execute("update public.raw_transactions set fee = 12345678901234567890.123456789012 "
                         "where id = %s::uuid", (new[1],))
            lake.execute("update public.raw_transactions set fee = 123456789012345678901234567890 "
                         "where id = %s::uuid", (new[2],))
            lake.execute("update public.raw_transactions set fee = -0.000000001 where id = %s::uuid", (before[0],))
        expected = {new[0]: "1.10", new[1]: "12345678901234567890.123456789012",
                    new[2]: "123456789012345678901234567890", before[0]: "-0.000000001"}
        wait_for("the fees", lambda: run.ended() or all(
            landed_column(env, "fee").get(k) == v for k, v in expected.items()))
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_OK, result.message
    fees = landed_column(env, "fee")
    assert {k: fees.get(k) for k in expected} == expected
    env.assert_converged()
    with env.wh_conn() as wh:
        types = {r[0] for r in wh.execute("select jsonb_typeof(row_data->'fee') from raw.lake_transactions"
                                          " where row_data->'fee' <> 'null'::jsonb")}
    assert types == {"number"}


# -- 6: the table renamed away and back, dropped and re-created ------------------------------------


def test_rename_away_and_back_stops_before_the_slot_passes_it(env: Env) -> None:
    """Renamed away, changed, renamed back between two runs: the slot filters by name, so those
    changes never come. The next run must stop (exit 4, naming --resnapshot) without confirming
    the slot past the rename; the re-snapshot then brings the lake and the landing together."""
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 10)
    ok_once(env)
    slot_idle(env)
    at_rename = current_lsn(env)
    with env.lake_conn() as lake:
        lake.execute("alter table public.raw_transactions rename to raw_transactions_away")
        insert_rows_into(lake, "raw_transactions_away", 4, start=500)
        lake.execute("delete from public.raw_transactions_away where id = %s::uuid", (ids[0],))
        lake.execute("update public.raw_transactions_away set source = 'while away' where id = %s::uuid", (ids[1],))
        lake.execute("alter table public.raw_transactions_away rename to raw_transactions")
        insert_rows(lake, 2, start=900)
    result = run_once(env)
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "renamed" in result.message and "--resnapshot" in result.message
    assert "\n" not in result.message
    assert lsn_le(env, confirmed_lsn(env), at_rename), "the slot was confirmed past the rename"
    again = run_once(env)  # it stays stopped: nothing was accepted
    assert again.exit_code == EXIT_CONFIG, again.message
    slot_idle(env)
    ok_once(env, resnapshot=True)
    env.assert_converged()
    ok_once(env)


def insert_rows_into(conn: Any, table: str, n: int, *, start: int) -> None:
    conn.execute(sql.SQL("insert into {} (data, merchant, transactional_id)"
                         " select jsonb_build_object('amount', (g * 1.01)::numeric(12,2), 'n', g), '{{}}'::jsonb,"
                         " gen_random_uuid() from generate_series(%s::int, %s::int) g").format(
        sql.Identifier("public", table)), (start + 1, start + n))


def test_rename_away_and_back_while_streaming(env: Env) -> None:
    """The same while a continuous consumer streams: it stops by itself (exit 4), the slot not
    confirmed past the rename even though keepalives and later commits came meanwhile."""
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    run = Running(env, transport="stream")
    try:
        run.wait_for_snapshot(env)
        time.sleep(1.5)
        at_rename = current_lsn(env)
        with env.lake_conn() as lake:
            lake.execute("alter table public.raw_transactions rename to raw_transactions_away")
            insert_rows_into(lake, "raw_transactions_away", 3, start=500)
            lake.execute("alter table public.raw_transactions_away rename to raw_transactions")
            insert_rows(lake, 3, start=900)
        wait_for("the consumer to stop", run.ended, timeout=30)
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "--resnapshot" in result.message
    assert lsn_le(env, confirmed_lsn(env), at_rename), "the slot was confirmed past the rename"
    slot_idle(env)
    ok_once(env, resnapshot=True)
    env.assert_converged()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drop_and_recreate_stops_and_resnapshot_tombstones_the_old_rows(env: Env, transport: str) -> None:
    """Dropped and re-created under the same name: the old rows would stay live forever. The run
    stops (exit 4) before confirming past the drop; --resnapshot tombstones them."""
    with env.lake_conn() as lake:
        old = insert_rows(lake, 8)
    ok_once(env, transport=transport)
    slot_idle(env)
    at_drop = current_lsn(env)
    with env.lake_conn() as lake:
        lake.execute("drop table public.raw_transactions")
        lake.execute(LAKE_DDL)
        new = insert_rows(lake, 3, start=100)
    result = run_once(env, transport=transport)
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "dropped and re-created" in result.message and "--resnapshot" in result.message
    assert lsn_le(env, confirmed_lsn(env), at_drop), "the slot was confirmed past the drop"
    slot_idle(env)
    ok_once(env, transport=transport, resnapshot=True)
    env.assert_converged()
    with env.wh_conn() as wh:
        gone = {r[0] for r in wh.execute("select lake_key from raw.lake_transactions where deleted")}
    assert gone == set(old)
    assert set(env.landed()) == set(new)


def test_drop_and_recreate_while_streaming(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 4)
    run = Running(env, transport="sql")
    try:
        run.wait_for_snapshot(env)
        at_drop = current_lsn(env)
        with env.lake_conn() as lake:
            lake.execute("drop table public.raw_transactions")
            lake.execute(LAKE_DDL)
            insert_rows(lake, 2, start=100)
        wait_for("the consumer to stop", run.ended, timeout=30)
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "--resnapshot" in result.message
    assert lsn_le(env, confirmed_lsn(env), at_drop), "the slot was confirmed past the drop"


def test_ddl_that_keeps_the_table_does_not_stop_the_consumer(env: Env) -> None:
    """What the table guard must let through while streaming: a grant, an index, a truncate, an
    owner change (which rewrites the row type too), a column added and one dropped."""
    with env.lake_conn() as lake:
        insert_rows(lake, 4)
    run = Running(env, transport="stream")
    try:
        run.wait_for_snapshot(env)
        with env.lake_conn() as lake:
            for ddl in ("grant select on public.raw_transactions to lake_reader",
                        "create index on public.raw_transactions (source)",
                        "truncate public.raw_transactions",
                        "alter table public.raw_transactions owner to lake_reader",
                        "alter table public.raw_transactions add column note text",
                        "alter table public.raw_transactions drop column note"):
                lake.execute(ddl)
                insert_rows(lake, 2, start=100 + len(ddl))
                time.sleep(1.2)  # let a table check fall between two statements
        wait_for("the rows", lambda: run.ended() or env.landed().keys() == env.lake_rows().keys())
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_OK, result.message
    env.assert_converged()


# -- 7: the payload column renamed -----------------------------------------------------------------


def test_payload_column_renamed_between_runs_stops_then_follows_the_setting(env: Env) -> None:
    """RENAME COLUMN data TO body: no payload column fits any more, so the run stops with the fix
    (exit 4) instead of keeping the stale decoded payload; with --payload-column body the updates
    land with their new payload."""
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 4)
    ok_once(env)
    with env.lake_conn() as lake:
        lake.execute("alter table public.raw_transactions rename column data to body")
        lake.execute("update public.raw_transactions set body = '{\"status\": \"refunded\", \"amount\": 9.90}'"
                     " where id = %s::uuid", (ids[0],))
    result = run_once(env)
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "'data'" in result.message and "PAYNORM_PAYLOAD_COLUMN" in result.message
    ok_once(env, payload_column="body")
    with env.wh_conn() as wh:
        payload = wh.execute("select payload from raw.lake_transactions where lake_key = %s", (ids[0],)).fetchone()[0]
    assert payload == {"status": "refunded", "amount": Decimal("9.90")}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_payload_column_renamed_mid_stream_is_resolved_again(env: Env, transport: str) -> None:
    """RENAME COLUMN data TO payload while streaming: the payload column is chosen again the way
    startup does (payload is a candidate) and later updates land with their new payload."""
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 3)
    run = Running(env, transport=transport)
    try:
        run.wait_for_snapshot(env, rows=3)
        with env.lake_conn() as lake:
            lake.execute("alter table public.raw_transactions rename column data to payload")
            lake.execute("update public.raw_transactions set payload = '{\"status\": \"chargeback\"}'"
                         " where id = %s::uuid", (ids[1],))

        def landed_payload() -> Any:
            with env.wh_conn() as wh:
                return wh.execute("select payload from raw.lake_transactions where lake_key = %s",
                                  (ids[1],)).fetchone()[0]

        wait_for("the new payload", lambda: run.ended() or landed_payload() == {"status": "chargeback"}, timeout=20)
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_OK, result.message
    assert landed_payload() == {"status": "chargeback"}


def test_payload_column_renamed_mid_stream_without_a_fit_stops(env: Env) -> None:
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 3)
    run = Running(env, transport="stream")
    try:
        run.wait_for_snapshot(env, rows=3)
        with env.lake_conn() as lake:
            lake.execute("alter table public.raw_transactions rename column data to body")
            lake.execute("update public.raw_transactions set body = '{\"status\": \"x\"}' where id = %s::uuid",
                         (ids[0],))
        wait_for("the consumer to stop", run.ended, timeout=30)
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "'data'" in result.message and "PAYNORM_PAYLOAD_COLUMN" in result.message


# -- 8: replica identity ---------------------------------------------------------------------------


def _doctor_check(env: Env, name: str, **kw: Any) -> Any:
    checks = {c.name: c for c in run_checks(env.settings(**kw))}
    assert name in checks, sorted(checks)
    return checks[name]


def test_replica_identity_nothing_is_refused_and_doctor_fails(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
        lake.execute("alter table public.raw_transactions replica identity nothing")
    result = run_once(env)
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "NOTHING" in result.message and "REPLICA IDENTITY DEFAULT" in result.message
    assert "\n" not in result.message
    with env.lake_conn() as lake:
        assert lake.execute("select count(*) from pg_replication_slots where slot_name = %s",
                            (env.slot,)).fetchone()[0] == 0  # refused before creating the slot
    check = _doctor_check(env, "replica identity")
    assert not check.ok and "REPLICA IDENTITY DEFAULT" in check.message


def test_replica_identity_using_a_non_key_index_is_refused(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
        lake.execute("alter table public.raw_transactions alter column transactional_id set not null")
        lake.execute("create unique index raw_transactions_tid on public.raw_transactions (transactional_id)")
        lake.execute("alter table public.raw_transactions replica identity using index raw_transactions_tid")
    result = run_once(env)
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "USING INDEX" in result.message and "\n" not in result.message
    check = _doctor_check(env, "replica identity")
    assert not check.ok and "raw_transactions_tid" in check.message and "REPLICA IDENTITY DEFAULT" in check.message


def test_replica_identity_set_to_nothing_while_streaming_stops(env: Env) -> None:
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 3)
    run = Running(env, transport="stream")
    try:
        run.wait_for_snapshot(env)
        at_alter = current_lsn(env)
        with env.lake_conn() as lake:
            lake.execute("alter table public.raw_transactions replica identity nothing")
            lake.execute("delete from public.raw_transactions where id = %s::uuid", (ids[0],))
            insert_rows(lake, 2, start=50)
        wait_for("the consumer to stop", run.ended, timeout=30)
    finally:
        result = run.finish()
    assert result.exit_code == EXIT_CONFIG, result.message
    assert "NOTHING" in result.message
    assert lsn_le(env, confirmed_lsn(env), at_alter), "the slot was confirmed past the change"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replica_identity_full_lands_updates_key_changes_and_deletes(env: Env, transport: str) -> None:
    """FULL: the old key comes from the whole old row (numbers included, parsed exactly)."""
    with env.lake_conn() as lake:
        lake.execute("alter table public.raw_transactions add column fee numeric")
        lake.execute("alter table public.raw_transactions replica identity full")
        ids = insert_rows(lake, 12)
        lake.execute("update public.raw_transactions set fee = 0.10")
    ok_once(env, transport=transport)
    with env.lake_conn() as lake:
        lake.execute("update public.raw_transactions set source = 'u', fee = 2.50 where id = any(%s::uuid[])",
                     (ids[:3],))
        lake.execute("update public.raw_transactions set id = gen_random_uuid() where id = any(%s::uuid[])",
                     (ids[3:5],))
        lake.execute("delete from public.raw_transactions where id = any(%s::uuid[])", (ids[5:8],))
    ok_once(env, transport=transport)
    env.assert_converged()
    with env.wh_conn() as wh:
        gone = {r[0] for r in wh.execute("select lake_key from raw.lake_transactions where deleted")}
    assert gone == set(ids[3:8])
    fees = landed_column(env, "fee")
    assert {fees[k] for k in ids[:3]} == {"2.50"}
    assert _doctor_check(env, "replica identity").ok


# -- 13: names that need quoting -------------------------------------------------------------------


def test_table_setting_names() -> None:
    from consumer.sources.postgres.lake import split_table_name, wal2json_table_pattern

    assert split_table_name("public.raw_transactions") == ("public", "raw_transactions")
    assert split_table_name("raw_transactions") == ("public", "raw_transactions")
    assert split_table_name("Lake Data.Raw Transactions") == ("Lake Data", "Raw Transactions")
    assert split_table_name('"Lake Data"."Raw Transactions"') == ("Lake Data", "Raw Transactions")
    assert split_table_name('"a.b"."c ""d"" e"') == ("a.b", 'c "d" e')
    assert wal2json_table_pattern("Lake Data", "Raw, it's 2.0*") == "Lake\\ Data.Raw\\,\\ it\\'s\\ 2\\.0\\*"
    assert wal2json_table_pattern("a\\b", "c") == "a\\\\b.c"


QUOTED = [("stream", "Lake Data", "Raw Transactions", "Lake Data.Raw Transactions"),
          ("sql", "Lake Data", "Raw Transactions", "Lake Data.Raw Transactions"),
          ("stream", "Lake.Data", "Raw, it's \"Q4\" 2.0*", '"Lake.Data"."Raw, it\'s ""Q4"" 2.0*"')]


@pytest.mark.parametrize("transport,schema,name,setting", QUOTED, ids=["stream", "sql", "stream-odd-characters"])
def test_names_that_need_quoting_round_trip(env: Env, transport: str, schema: str, name: str, setting: str) -> None:
    """Snapshot, then streamed insert, update and delete, on a table whose names need quoting;
    doctor passes on it; another table of the same schema is not read."""
    ident = sql.Identifier(schema, name)
    with env.lake_conn() as lake:
        lake.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        lake.execute(sql.SQL("create table {} (id serial primary key, data jsonb, note text)").format(ident))
        decoy = sql.Identifier(schema, name.replace(" ", "_") + "_decoy")
        lake.execute(sql.SQL("create table {} (id serial primary key, data jsonb)").format(decoy))
        lake.execute(sql.SQL("grant usage on schema {} to lake_reader").format(sql.Identifier(schema)))
        lake.execute(sql.SQL("grant select on all tables in schema {} to lake_reader").format(sql.Identifier(schema)))
        lake.execute(sql.SQL("insert into {} (data, note) select jsonb_build_object('n', g, 'amount', g * 1.5),"
                             " 'snap' from generate_series(1, 6) g").format(ident))
    ok_once(env, table=setting, transport=transport)
    with env.lake_conn() as lake:
        lake.execute(sql.SQL("insert into {} (data, note) values ('{{\"n\": 100, \"amount\": 2.25}}', 'new')").format(
            ident))
        lake.execute(sql.SQL("update {} set note = 'updated', data = data || '{{\"status\": \"ok\"}}'"
                             " where id in (1, 2)").format(ident))
        lake.execute(sql.SQL("delete from {} where id = 3").format(ident))
        lake.execute(sql.SQL("insert into {} (data) values ('{{\"decoy\": true}}')").format(decoy))
    result = ok_once(env, table=setting, transport=transport)
    assert result.stats is not None and result.stats.changes == 4
    with env.lake_conn() as lake:
        lake_rows = dict(lake.execute(sql.SQL("select id::text, note from {}").format(ident)).fetchall())
    with env.wh_conn() as wh:
        rows = wh.execute("select lake_key, row_data->>'note', deleted, op, payload from raw.lake_transactions"
                          ).fetchall()
    live = {k: note for k, note, deleted, _, _ in rows if not deleted}
    assert live == lake_rows
    assert {k for k, _, deleted, _, _ in rows if deleted} == {"3"}
    assert {k: op for k, _, _, op, _ in rows} == {"1": "U", "2": "U", "3": "D", "4": "S", "5": "S", "6": "S", "7": "I"}
    payload7 = next(p for k, _, _, _, p in rows if k == "7")
    assert payload7 == {"n": 100, "amount": Decimal("2.25")}
    checks = list(run_checks(env.settings(table=setting)))
    lake_checks = [c for c in checks if c.name in ("lake table", "select right", "primary key", "payload column",
                                                    "replica identity")]
    assert len(lake_checks) == 4 and all(c.ok for c in lake_checks), [(c.name, c.message) for c in checks]


# -- the slot dropped under a running consumer -----------------------------------------------------


def test_slot_dropped_under_a_running_consumer_exits_2(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    proc = env.spawn("replicate")
    wait_for("the snapshot", lambda: snapshot_done(env) or proc.poll() is not None)
    time.sleep(1.0)
    with env.lake_conn() as lake:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lake.execute("select pg_terminate_backend(active_pid) from pg_replication_slots"
                         " where slot_name = %s and active_pid is not null", (env.slot,))
            try:
                lake.execute("select pg_drop_replication_slot(%s)", (env.slot,))
                break
            except Exception:  # noqa: BLE001 - the consumer took the slot again first: try again
                time.sleep(0.05)
        insert_rows(lake, 2, start=100)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == EXIT_SLOT_LOST, out
    assert "Traceback" not in out
    assert "--resnapshot" in out
    assert out.count("retrying") <= 1, out
