"""The CDC consumer against real clusters: snapshot, stream, every kind of change, exactly once."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from decimal import Decimal

import pytest
from psycopg import sql

from consumer.decode import decode_payload
from consumer.sources.postgres.cdc import load_state
from consumer.sources.postgres.replicate import EXIT_CONFIG, EXIT_FENCED, EXIT_OK, EXIT_SLOT_LOST, replicate

from .conftest import Env, insert_rows

TRANSPORTS = ["stream", "sql"]


def run_once(env: Env, **kw: object):
    resnapshot = bool(kw.pop("resnapshot", False))
    result = replicate(env.settings(**kw), once=True, resnapshot=resnapshot, max_attempts=3)
    assert result.exit_code == EXIT_OK, result.message
    return result


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_snapshot_then_every_kind_of_change(env: Env, transport: str) -> None:
    """Rows present before the first run come from the snapshot; later I/U/D come from the slot."""
    with env.lake_conn() as lake:
        insert_rows(lake, 120)
    run_once(env, transport=transport)
    assert len(env.landed()) == 120
    with env.lake_conn() as lake:
        new = insert_rows(lake, 30, start=1000)
        lake.execute("update public.raw_transactions set data = data || '{\"status\": \"declined\"}'"
                     " where (data->>'n')::int % 3 = 0")
        lake.execute("delete from public.raw_transactions where (data->>'n')::int % 5 = 0")
        lake.execute("update public.raw_transactions set id = gen_random_uuid() where id = %s::uuid", (new[0],))
    result = run_once(env, transport=transport)
    assert result.stats is not None and result.stats.changes > 0
    env.assert_converged()
    with env.wh_conn() as wh:
        ops = dict(wh.execute("select op, count(*) from raw.lake_transactions group by 1").fetchall())
        tombstones = wh.execute("select count(*) from raw.lake_transactions where deleted").fetchone()[0]
        state = load_state(wh, env.slot)
    assert ops.keys() >= {"S", "I", "U", "D"}
    assert tombstones == 150 // 5 + 1  # every 5th row, plus the old key of the row whose id changed
    assert state is not None and state.snapshot_done


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_second_run_applies_nothing_new(env: Env, transport: str) -> None:
    """Nothing doubled: a run with no new lake changes rewrites no landing row."""
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    run_once(env, transport=transport)
    with env.lake_conn() as lake:
        insert_rows(lake, 10, start=10)
    run_once(env, transport=transport)
    with env.wh_conn() as wh:
        before = wh.execute("select max(load_seq), count(*) from raw.lake_transactions").fetchone()
    result = run_once(env, transport=transport)
    with env.wh_conn() as wh:
        after = wh.execute("select max(load_seq), count(*) from raw.lake_transactions").fetchone()
    assert result.stats is not None and result.stats.rows_written == 0
    assert before == after


def test_snapshot_and_concurrent_writes_converge(env: Env) -> None:
    """Writes racing the snapshot (inserts, updates, deletes) end identical to the lake."""
    with env.lake_conn() as lake:
        insert_rows(lake, 20000)
    stop = threading.Event()

    def writer() -> None:
        rnd = random.Random(1)
        with env.lake_conn() as lake:
            n = 100000
            while not stop.is_set():
                n += 1
                choice = rnd.random()
                if choice < 0.4:
                    insert_rows(lake, 5, start=n * 10)
                elif choice < 0.8:
                    lake.execute("update public.raw_transactions set data = data || jsonb_build_object('v', %s::int)"
                                 " where (data->>'n')::int %% 97 = %s", (n, rnd.randrange(97)))
                else:
                    lake.execute("delete from public.raw_transactions where (data->>'n')::int %% 211 = %s",
                                 (rnd.randrange(211),))

    t = threading.Thread(target=writer)
    t.start()
    try:
        run_once(env, snapshot_chunk=500)  # small chunks: the snapshot takes a while, writes interleave
    finally:
        stop.set()
        t.join()
    run_once(env)
    env.assert_converged()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exact_numerics(env: Env, transport: str) -> None:
    """wal2json 2.5 sends numerics as bare JSON numbers: they must land digit for digit."""
    values = ["0.1", "25.840", "12345678901234567890.123456789012345", "-0.00000001", "1E-20", "100"]
    with env.lake_conn() as lake:
        lake.execute("alter table public.raw_transactions add column amount numeric")
        lake.execute("insert into public.raw_transactions (amount, data) values ('NaN', '{}')")
    run_once(env, transport=transport)  # the snapshot path
    with env.lake_conn() as lake:
        for v in values:
            lake.execute("insert into public.raw_transactions (amount, data) values (%s::numeric,"
                         " jsonb_build_object('amt', %s::numeric))", (v, v))
    run_once(env, transport=transport)  # the stream path
    with env.lake_conn() as lake:
        expected = dict(lake.execute("select id::text, amount::text from public.raw_transactions").fetchall())
    with env.wh_conn() as wh:
        got = dict(wh.execute("select lake_key, row_data->>'amount' from raw.lake_transactions").fetchall())
        amt = dict(wh.execute("select row_data->>'amount', payload->>'amt' from raw.lake_transactions"
                              " where payload ? 'amt'").fetchall())
    assert {k: (v if v != "NaN" else None) for k, v in expected.items()} == got
    assert all(Decimal(a) == Decimal(b) for a, b in amt.items()) and len(amt) == len(values)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_toast_update_keeps_stored_payload(env: Env, transport: str) -> None:
    """UPDATE ... SET processed = true on a 50 kB payload arrives without the payload: keep it."""
    with env.lake_conn() as lake:
        lake.execute("insert into public.raw_transactions (data) select jsonb_build_object('blob',"
                     " (select string_agg(md5(random()::text), '') from generate_series(1, 1600)), 'amount', 12.30)")
    run_once(env, transport=transport)
    with env.lake_conn() as lake:
        lake.execute("update public.raw_transactions set processed = true, processed_at = now()")
        # Prove the premise: the decoded UPDATE really lacks the TOASTed column.
        changes = [r[0] for r in lake.execute(
            "select data from pg_logical_slot_peek_changes(%s, null, null, 'format-version', '2')", (env.slot,))]
    update = next(c for c in changes if '"action":"U"' in c)
    assert '"name":"data"' not in update
    run_once(env, transport=transport)
    env.assert_converged()
    with env.wh_conn() as wh:
        row = wh.execute("select op, payload->>'amount', length(payload->>'blob'), decode_error"
                         " from raw.lake_transactions").fetchone()
    assert row == ("U", "12.30", 51200, None)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_truncate_tombstones_every_row(env: Env, transport: str) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 50)
    run_once(env, transport=transport)
    with env.lake_conn() as lake:
        insert_rows(lake, 5, start=50)
        lake.execute("truncate public.raw_transactions")
        kept = insert_rows(lake, 3, start=100)
    run_once(env, transport=transport)
    env.assert_converged()
    with env.wh_conn() as wh:
        live = {r[0] for r in wh.execute("select lake_key from raw.lake_transactions where not deleted")}
        truncated = wh.execute("select count(*) from raw.lake_transactions where op = 'T' and deleted").fetchone()[0]
    assert live == set(kept)
    assert truncated == 55


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replayed_transactions_are_filtered(env: Env, transport: str) -> None:
    """A slot's confirmed position is durable only at the lake's next checkpoint, so after a lake
    crash the slot replays transactions the warehouse already has. Replay them for sure with a copy
    of the slot taken earlier: the warehouse-side LSN filter must drop every one of them."""
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    run_once(env)
    with env.lake_conn() as lake:
        lake.execute("select pg_copy_logical_replication_slot(%s, 'replay')", (env.slot,))
        for i in range(20):
            insert_rows(lake, 3, start=100 + i * 3)
    run_once(env)
    with env.wh_conn() as wh:
        before = wh.execute("select lake_key, load_seq from raw.lake_transactions order by 1").fetchall()
        wh.execute("insert into paynorm.replication_state (slot_name, lake_table, applied_lsn, snapshot_done)"
                   " select 'replay', lake_table, applied_lsn, true from paynorm.replication_state")
    result = run_once(env, slot="replay", transport=transport)
    assert result.stats is not None
    if transport == "sql":  # a peek always starts at the slot's confirmed position: all 20 come back
        assert result.stats.skipped_transactions == 20
    # (the stream starts at the warehouse position, so the lake itself skips what precedes it)
    assert result.stats.rows_written == 0
    with env.wh_conn() as wh:
        after = wh.execute("select lake_key, load_seq from raw.lake_transactions order by 1").fetchall()
    assert before == after
    env.assert_converged()


def test_second_consumer_is_fenced(env: Env) -> None:
    """One writer per slot: a second consumer exits with a clear message and code 3."""
    with env.lake_conn() as lake:
        insert_rows(lake, 5)
    first = env.spawn("replicate")
    deadline = time.time() + 30
    while time.time() < deadline:
        with env.wh_conn() as wh:
            st = load_state(wh, env.slot) if wh.execute(
                "select to_regclass('paynorm.replication_state')").fetchone()[0] else None
        if st and st.snapshot_done:
            break
        time.sleep(0.2)
    second = env.spawn("replicate", "--once")
    out = second.communicate(timeout=60)[0].decode()
    assert second.returncode == EXIT_FENCED, out
    assert "another paynorm consumer is already replicating slot" in out
    assert first.poll() is None  # the first one is undisturbed
    first.terminate()
    assert first.wait(timeout=30) == 0


def test_lost_slot_is_reported_and_resnapshot_recovers(env: Env) -> None:
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 20)
    run_once(env)
    with env.lake_conn() as lake:
        for _ in range(100):  # the walsender of the run that just ended may still be releasing the slot
            if not lake.execute("select active from pg_replication_slots where slot_name = %s",
                                (env.slot,)).fetchone()[0]:
                break
            time.sleep(0.05)
        lake.execute("select pg_drop_replication_slot(%s)", (env.slot,))
        lake.execute("delete from public.raw_transactions where id = any(%s::uuid[])", (ids[:4],))
        insert_rows(lake, 6, start=500)
    result = replicate(env.settings(), once=True)
    assert result.exit_code == EXIT_SLOT_LOST
    assert "--resnapshot" in result.message
    run_once(env, resnapshot=True)
    env.assert_converged()  # the rows deleted while no slot existed are tombstoned too
    with env.wh_conn() as wh:
        gone = {r[0] for r in wh.execute("select lake_key from raw.lake_transactions where deleted")}
    assert gone == set(ids[:4])


def test_invalidated_slot_is_reported_and_resnapshot_recovers(env: Env) -> None:
    """max_slot_wal_keep_size exceeded while the consumer is away: wal_status = lost."""
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    run_once(env)
    with env.lake_conn() as lake:
        insert_rows(lake, 5, start=100)  # changes the slot will never deliver
        lake.execute("create table public.filler (pad text)")
        keep = lake.execute("show max_slot_wal_keep_size").fetchone()[0]
        lake.execute("alter system set max_slot_wal_keep_size = '1MB'")
        lake.execute("select pg_reload_conf()")
        try:
            for _ in range(6):
                lake.execute("insert into public.filler select repeat('x', 1000) from generate_series(1, 20000)")
                lake.execute("select pg_switch_wal()")
                lake.execute("checkpoint")
            status = lake.execute("select wal_status from pg_replication_slots where slot_name = %s",
                                  (env.slot,)).fetchone()[0]
        finally:
            lake.execute(sql.SQL("alter system set max_slot_wal_keep_size = {}").format(sql.Literal(keep)))
            lake.execute("select pg_reload_conf()")
    assert status == "lost", "the slot was not invalidated: the test proves nothing"
    result = replicate(env.settings(), once=True)
    assert result.exit_code == EXIT_SLOT_LOST
    assert "wal_status=lost" in result.message and "--resnapshot" in result.message
    run_once(env, resnapshot=True)
    env.assert_converged()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_table_does_not_pin_wal(env: Env, transport: str) -> None:
    """Another table churning on the lake instance: our idle slot must still let WAL go."""
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
        lake.execute("create table public.other (id serial primary key, pad text)")
    stop = threading.Event()
    results = []
    t = threading.Thread(target=lambda: results.append(
        replicate(env.settings(transport=transport, interval=0.2), stop=stop)))
    t.start()
    try:
        with env.lake_conn() as lake:
            for _ in range(8):
                lake.execute("insert into public.other (pad) select repeat('x', 500) from generate_series(1, 20000)")
                time.sleep(0.5)
            start_lsn = lake.execute("select pg_current_wal_lsn()").fetchone()[0]
            time.sleep(3)
            lake.execute("checkpoint")  # logs running xacts: lets the slot's restart_lsn move
            time.sleep(1.5)
            lake.execute("checkpoint")
            time.sleep(1.5)
            retained = lake.execute(
                "select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
                " pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn)::bigint"
                " from pg_replication_slots where slot_name = %s", (start_lsn, env.slot)).fetchone()
            churned = lake.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()[0]
    finally:
        stop.set()
        t.join(timeout=30)
    assert results and results[0].exit_code == EXIT_OK, results
    assert churned > 50 * 1024 * 1024
    assert retained[1] <= 0, f"slot confirmed position stayed {retained[1]} bytes behind"
    assert retained[0] < 8 * 1024 * 1024, f"slot retains {retained[0]} bytes of WAL"


def test_once_exit_code_and_sigterm(env: Env) -> None:
    """`--once` exits 0 when drained; SIGTERM during the continuous mode commits and exits 0."""
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    proc = env.spawn("replicate", "--once")
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    proc = env.spawn("replicate")
    with env.lake_conn() as lake:
        for i in range(30):
            insert_rows(lake, 50, start=1000 + i * 50)
    time.sleep(1.0)
    proc.terminate()
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out
    run_once(env)
    env.assert_converged()


def test_a_slot_left_half_made_is_created_again_and_a_foreign_one_refused(env: Env) -> None:
    """Killed between creating its slot and writing the slot's state (as a lake shutdown in that
    window does), the next run re-creates its own slot; a same-named slot it never meant to create
    is refused, not taken over."""
    with env.lake_conn() as lake:
        insert_rows(lake, 30)
    proc = env.spawn("replicate", "--once", PAYNORM_CRASHPOINT="slot_created")
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == -9, out
    with env.lake_conn() as lake:
        assert lake.execute("select count(*) from pg_replication_slots where slot_name = %s",
                            (env.slot,)).fetchone()[0] == 1
    with env.wh_conn() as wh:
        assert load_state(wh, env.slot) is None
    with env.lake_conn() as lake:
        insert_rows(lake, 20, start=1000)
    run_once(env)
    env.assert_converged()
    with env.wh_conn() as wh:
        assert wh.execute("select count(*) from paynorm.slot_intents").fetchone()[0] == 0

    other = env.slot + "_foreign"
    with env.lake_conn() as lake:
        lake.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (other,))
    try:
        result = replicate(env.settings(slot=other), once=True, max_attempts=3)
        assert result.exit_code == EXIT_CONFIG, result.message
        assert "already exists on the lake" in result.message
        with env.lake_conn() as lake:
            assert lake.execute("select count(*) from pg_replication_slots where slot_name = %s",
                                (other,)).fetchone()[0] == 1
    finally:
        with env.lake_conn() as lake:
            lake.execute("select pg_drop_replication_slot(%s)", (other,))


def test_lake_restart_mid_stream(env: Env) -> None:
    """The lake goes away and comes back while the consumer streams: it reconnects, loses nothing."""
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    proc = env.spawn("replicate")
    for round_ in range(3):
        with env.lake_conn() as lake:
            for i in range(10):
                insert_rows(lake, 20, start=round_ * 1000 + i * 20)
        time.sleep(0.5)
        env.lake.stop("immediate" if round_ % 2 else "fast")
        time.sleep(1.0)
        env.lake.start()
    with env.lake_conn() as lake:
        insert_rows(lake, 20, start=9000)
    deadline = time.time() + 60
    while time.time() < deadline and len(env.landed()) < len(env.lake_rows()):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0].decode()
    proc.terminate()
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "retrying" in out
    env.assert_converged()


def test_warehouse_restart_mid_stream(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 10)
    proc = env.spawn("replicate")
    time.sleep(2)
    with env.lake_conn() as lake:
        insert_rows(lake, 200, start=100)
    env.wh.stop("immediate")
    with env.lake_conn() as lake:
        insert_rows(lake, 200, start=1000)
    time.sleep(1.5)
    env.wh.start()
    deadline = time.time() + 60
    while time.time() < deadline and len(env.landed()) < len(env.lake_rows()):
        time.sleep(0.5)
    proc.terminate()
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    env.assert_converged()


def test_payload_column_of_the_older_layout(env: Env) -> None:
    """The brief's older lake layout: id serial, transaction_data jsonb, source."""
    with env.lake_conn() as lake:
        lake.execute("create table public.legacy (id serial primary key, transaction_data jsonb not null,"
                     " source varchar(50), created_at timestamp default now(), processed boolean default false,"
                     " processed_at timestamp)")
        lake.execute("grant select on public.legacy to lake_reader")
        lake.execute("""insert into public.legacy (transaction_data, source) values
            ('{"id": "tx_123", "amount": 100.50, "status": "approved"}', 'stripe'),
            ('{"transaction_id": "pay_456", "value": 250, "state": "declined"}', 'adyen')""")
    run_once(env, table="public.legacy", slot="legacy")
    with env.lake_conn() as lake:
        lake.execute("""insert into public.legacy (transaction_data, source) values ('"<Tx><Val>1.5</Val></Tx>"', 'x')""")
    run_once(env, table="public.legacy", slot="legacy")
    with env.wh_conn() as wh:
        rows = wh.execute("select lake_key, payload_format, payload, row_data->>'source' from raw.lake_transactions"
                          " order by lake_key::int").fetchall()
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert rows[0][2] == {"id": "tx_123", "amount": Decimal("100.50"), "status": "approved"}
    assert rows[2][1] == "xml" and rows[2][2] == {"Tx": {"Val": "1.5"}}
    assert rows[1][3] == "adyen"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_row_image_is_whole_when_the_payload_travels_once(env: Env, transport: str) -> None:
    """A JSON-object payload crosses the wire once and is spliced back into row_data in the
    warehouse; payloads decoded into something else (XML, JSON in a string, \\u0000 removed) keep
    their own text in row_data. Either way row_data is the lake row's full image."""
    payloads = ['{"amount": 12.50, "status": "ok", "nested": {"a": [1, 2.0]}}',
                '"<Tx><Val>1.5</Val></Tx>"', '"{\\"inner\\": 1}"', '{"note": "a\\u0000b"}', "null", '"a=1&b=2"']
    with env.lake_conn() as lake:
        for p in payloads[:3]:
            lake.execute("insert into public.raw_transactions (data, source) values (%s::jsonb, 's')", (p,))
    run_once(env, transport=transport)  # snapshot
    with env.lake_conn() as lake:
        for p in payloads[3:]:
            lake.execute("insert into public.raw_transactions (data, source) values (%s::jsonb, 's')",
                         (p.replace("\\u0000", ""),))
        lake.execute("update public.raw_transactions set data = '{\"amount\": 1.10}' where data->>'status' = 'ok'")
    run_once(env, transport=transport)  # stream
    env.assert_converged()
    with env.lake_conn() as lake:
        lake_images = dict(lake.execute("select id::text, to_jsonb(t) from public.raw_transactions t").fetchall())
    with env.wh_conn() as wh:
        landed = {k: (img, p, fmt) for k, img, p, fmt in wh.execute(
            "select lake_key, raw.row_image(row_data, payload_key, payload), payload, payload_format"
            " from raw.lake_transactions").fetchall()}
    assert landed.keys() == lake_images.keys()
    for key, (image, payload, fmt) in landed.items():
        lake_image = lake_images[key]  # to_jsonb writes timestamps with a "T": compare the rest
        assert image.keys() == lake_image.keys(), key
        assert {k: v for k, v in image.items() if not k.endswith("_at")} == \
            {k: v for k, v in lake_image.items() if not k.endswith("_at")}, key
        if fmt == "json" and isinstance(image["data"], dict):
            assert payload == image["data"]
    formats = sorted(fmt for _, _, fmt in landed.values())
    assert formats == ["empty", "json", "json", "json", "nvp", "xml"]


def test_each_change_is_parsed_exactly() -> None:
    """orjson reads 1.10 (and integers past 64 bits) as floats: a change holding one is read again
    by the exact parser, whatever the table's columns were when the session started."""
    from consumer.sources.postgres.lake import parse_change, parse_message

    ints = b'{"action":"I","columns":[{"name":"c0","type":"bigint","value":-9223372036854775808},' \
           b'{"name":"c1","type":"bigint","value":9223372036854775807},{"name":"c2","type":"text","value":"\\u00e9"}]}'
    assert parse_change(memoryview(ints)) == parse_message(ints)
    for number in (b"1.10", b"123456789012345678901234567890", b"-0.000001"):
        for where in ("columns", "identity"):
            msg = b'{"action":"U","' + where.encode() + b'":[{"name":"fee","type":"numeric","value":' + number + b"}]}"
            value = parse_change(msg)[where][0]["value"]
            assert isinstance(value, (int, Decimal)) and str(value) == number.decode(), (where, number, value)


def test_integer_keys_snapshot_in_many_chunks(env: Env) -> None:
    """Keyset pages must follow the key's own order: the select list outputs every column as text,
    and an unqualified ORDER BY id sorted "10" before "9", so the next page (id > last) skipped rows."""
    with env.lake_conn() as lake:
        lake.execute("create table public.legacy (id serial primary key, transaction_data jsonb not null,"
                     " source varchar(50), created_at timestamp default now())")
        lake.execute("grant select on public.legacy to lake_reader")
        lake.execute("insert into public.legacy (transaction_data) select jsonb_build_object('n', g)"
                     " from generate_series(1, 45) g")
    run_once(env, table="public.legacy", slot="legacy", snapshot_chunk=7)
    with env.wh_conn() as wh:
        keys = sorted(int(k) for (k,) in wh.execute("select lake_key from raw.lake_transactions").fetchall())
    assert keys == list(range(1, 46))


#: One payload of every kind the decoder tells apart: JSON, XML and name=value in a jsonb string,
#: broken JSON, a top-level array.
PAYLOAD_KINDS = [json.dumps({"amount": "1.10", "status": "approved"}),
                 json.dumps("<r><status>OK</status><amount>2.20</amount></r>"),
                 json.dumps("status=declined&amount=3.30"), json.dumps("{broken"), json.dumps([1, 2])]


def insert_payload_kinds(env: Env, groups: int, size: int) -> None:
    with env.lake_conn() as lake:
        for i in range(groups):
            insert_rows(lake, size, start=i * size, payload=PAYLOAD_KINDS[i % len(PAYLOAD_KINDS)])


def assert_landed_as_decoded(env: Env, rows: int) -> None:
    """Every landed row is what decode_payload makes of its payload column (payload, format, error,
    shape key), the column's JSON text being what wal2json and the snapshot read."""
    with env.wh_conn() as wh:
        landed = wh.execute("select payload::text, payload_format, decode_error, shape_key,"
                            " (raw.row_image(row_data, payload_key, payload)->'data')::text"
                            " from raw.lake_transactions").fetchall()
    assert len(landed) == rows
    for payload, fmt, error, shape, raw in landed:
        d = decode_payload(raw, is_json=True)
        assert (fmt, error, shape) == (d.payload_format, d.decode_error, d.shape_key)
        assert (json.loads(payload) if payload else None) == (json.loads(d.payload) if d.payload else None)


@pytest.mark.parametrize("decode_process", [True, False])
def test_the_snapshot_decodes_alike_in_a_worker_or_here(env: Env, decode_process: bool,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot of full chunks hands their payloads to the decode worker (started at the first
    full chunk); either way every row lands as decode_payload makes it."""
    insert_payload_kinds(env, 10, 50)
    with caplog.at_level(logging.INFO, logger="consumer.sources.postgres.snapshot"):
        run_once(env, decode_process=decode_process, snapshot_chunk=120)
    done = [r for r in caplog.records if r.getMessage().startswith("snapshot done")]
    assert len(done) == 1 and (done[0].chunks_decoded_elsewhere > 0) is decode_process  # type: ignore[attr-defined]
    assert_landed_as_decoded(env, 500)
    env.assert_converged()


@pytest.mark.parametrize("decode_process", [True, False])
def test_the_stream_decodes_alike_in_a_worker_or_here(env: Env, decode_process: bool) -> None:
    """Payloads of every format, decoded in the decode worker or in the consumer's own thread, land
    as decode_payload makes them (payload, format, error, shape key), in several batches."""
    run_once(env)  # snapshot of an empty table; what follows comes from the stream
    insert_payload_kinds(env, 25, 100)
    result = run_once(env, decode_process=decode_process, batch_size=300)
    # the first full batch decodes here while the worker starts; the worker decodes the later ones
    assert result.stats is not None
    assert (result.stats.batches_decoded_elsewhere > 0) is decode_process
    assert_landed_as_decoded(env, 2500)
