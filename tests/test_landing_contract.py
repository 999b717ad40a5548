"""The landing contract at its edges: source precedence between CDC, poll and files, the handoff to
dbt in commit order (a landing transaction that commits late, a writer that never stops), and one
build per warehouse at a time. Real clusters, the real dbt project."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumer import landing, transform
from consumer.landing import LandingBatch, LandingRow

from .conftest import Env
from .dbt_fixtures import land, landing_row, load_fixtures

MARTS = f"{transform.DEFAULT_SCHEMA}_marts"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def wh(env: Env) -> psycopg.Connection:
    conn = env.wh_conn()
    landing.init_warehouse(conn)
    yield conn
    conn.close()


def _image(key: str, payload: dict[str, Any], *, lsn: str | None, deleted: bool = False,
           op: str = "I") -> LandingRow:
    text = json.dumps(payload)
    return LandingRow(lake_key=key, columns={"id": json.dumps(key), "data": json.dumps(text)}, op=op, lsn=lsn,
                      xid=None, committed_at=None, deleted=deleted, payload_raw=text, has_payload=True,
                      payload_column="data")


def _write(conn: psycopg.Connection, source: str, *rows: LandingRow) -> None:
    batch = LandingBatch(source)
    for r in rows:
        batch.add(r)
    with conn.transaction():
        landing.write_batch(conn, batch)


def _landed(conn: psycopg.Connection, key: str) -> tuple[Any, ...]:
    return conn.execute("select deleted, source, payload->>'amount', lake_lsn::text from raw.lake_transactions"
                        " where lake_key = %s", (key,)).fetchone()


# -- source precedence ----------------------------------------------------------------------------


def test_a_poll_image_never_revives_a_cdc_tombstone(wh: psycopg.Connection) -> None:
    """poll read the row before the lake deleted it and commits after CDC landed the tombstone: the
    poll image (no LSN, it cannot say it is newer) must not bring the row back."""
    _write(wh, "cdc:paynorm", _image("k1", {"amount": "10.00"}, lsn="0/1000"))
    _write(wh, "cdc:paynorm", _image("k1", {"amount": "10.00"}, lsn="0/2000", deleted=True, op="D"))
    _write(wh, "poll", _image("k1", {"amount": "10.00"}, lsn=None, op="P"))
    assert _landed(wh, "k1") == (True, "cdc:paynorm", "10.00", "0/2000")
    # nor overwrite a live CDC image
    _write(wh, "cdc:paynorm", _image("k2", {"amount": "5.00"}, lsn="0/3000"))
    _write(wh, "poll", _image("k2", {"amount": "999999"}, lsn=None, op="P"))
    assert _landed(wh, "k2") == (False, "cdc:paynorm", "5.00", "0/3000")
    # a row only poll knows is still poll's to update
    _write(wh, "poll", _image("k3", {"amount": "1.00"}, lsn=None, op="P"))
    _write(wh, "poll", _image("k3", {"amount": "2.00"}, lsn=None, op="P"))
    assert _landed(wh, "k3") == (False, "poll", "2.00", None)


def test_a_file_record_never_takes_over_another_sources_row(wh: psycopg.Connection) -> None:
    """A file record keyed like a lake row neither rewrites nor revives it, unless the files are
    declared to be the lake's own export."""
    _write(wh, "poll", _image("k1", {"amount": "10.00"}, lsn=None, op="P"))
    _write(wh, "file:/exports/a.jsonl", _image("k1", {"amount": "999999"}, lsn=None, op="F"))
    assert _landed(wh, "k1") == (False, "poll", "10.00", None)
    _write(wh, "cdc:paynorm", _image("k2", {"amount": "3.00"}, lsn="0/10", deleted=True, op="D"))
    _write(wh, "file:/exports/a.jsonl", _image("k2", {"amount": "3.00"}, lsn=None, op="F"))
    assert _landed(wh, "k2") == (True, "cdc:paynorm", "3.00", "0/10")
    # a file's own rows follow its versions
    _write(wh, "file:/exports/a.jsonl", _image("f1", {"amount": "1.00"}, lsn=None, op="F"))
    _write(wh, "file:/exports/a.jsonl", _image("f1", {"amount": "1.50"}, lsn=None, op="F"))
    assert _landed(wh, "f1") == (False, "file:/exports/a.jsonl", "1.50", None)
    # declared lake export: the file's image replaces a poll image
    with wh.transaction():
        batch = LandingBatch("file:/exports/a.jsonl")
        batch.add(_image("k1", {"amount": "11.00"}, lsn=None, op="F"))
        landing.write_batch(wh, batch, files_are_lake_export=True)
    assert _landed(wh, "k1") == (False, "file:/exports/a.jsonl", "11.00", None)


def test_every_write_stamps_the_writing_transaction(wh: psycopg.Connection) -> None:
    """landed_xid is the commit-order handle of dbt: whoever writes a landing row (a source, a
    hand-made fix) stamps it with the writing transaction."""
    with wh.transaction():
        _write(wh, "poll", _image("k1", {"amount": "1.00"}, lsn=None, op="P"))
        inserting = wh.execute("select pg_current_xact_id()::text").fetchone()[0]
    first = wh.execute("select landed_xid::text from raw.lake_transactions where lake_key = 'k1'").fetchone()[0]
    assert first == inserting
    with wh.transaction():
        wh.execute("update raw.lake_transactions set payload = payload where lake_key = 'k1'")
        xid = wh.execute("select pg_current_xact_id()::text").fetchone()[0]
    now = wh.execute("select landed_xid::text from raw.lake_transactions where lake_key = 'k1'").fetchone()[0]
    assert now == xid and int(now) > int(first)


def test_images_under_8kb_are_not_compressed_larger_ones_with_lz4(env: Env, wh: psycopg.Connection) -> None:
    """Every jsonpath of a build decompresses a compressed payload again: rows up to 8 kB stay
    uncompressed (toast_tuple_target); the landing's own compression is lz4 (Debian's PostgreSQL has
    it). A row past 8 kB already in the staging table is compressed there, with the session's default
    method, and lands as it is."""
    methods = dict(wh.execute("select attname, attcompression::text from pg_attribute where attrelid ="
                              " 'raw.lake_transactions'::regclass and attname in ('payload', 'row_data')").fetchall())
    assert methods == {"payload": "l", "row_data": "l"}
    options = wh.execute("select reloptions from pg_class where oid = 'raw.lake_transactions'::regclass").fetchone()[0]
    assert "toast_tuple_target=8160" in options
    for key, chars in (("mid", 2500), ("big", 10_000)):  # a row of ~5 kB (past the default 2 kB), of ~20 kB
        _write(wh, "poll", _image(key, {"amount": "1.00", "note": "x" * chars}, lsn=None, op="P"))
    wh.commit()
    rows = dict(wh.execute(
        "select lake_key, array[pg_column_compression(payload), pg_column_compression(row_data)]::text"
        " from raw.lake_transactions where lake_key in ('mid', 'big')").fetchall())
    assert rows["mid"] == "{NULL,NULL}" and "NULL" not in rows["big"], rows
    assert wh.execute("select payload->>'note' = repeat('x', 10000) from raw.lake_transactions"
                      " where lake_key = 'big'").fetchone() == (True,)
    # already set: init does not ALTER the table again, which would wait for every reader (a build)
    with env.wh_conn() as reader:
        reader.autocommit = False
        reader.execute("select count(*) from raw.lake_transactions")  # holds its lock until it ends
        wh.execute("set lock_timeout = '3s'")
        landing.init_warehouse(wh)
        wh.execute("reset lock_timeout")
        reader.rollback()
    wh.commit()


def _json_column(key: str, payload: str | None, *, lsn: str, partial: bool = False, has_payload: bool = True,
                 note: str | None = None) -> LandingRow:
    """A change of a lake row whose payload column ``data`` is jsonb (``payload``: its JSON text)."""
    columns = {"id": json.dumps(key)} if not partial else {}
    if note is not None:
        columns["note"] = json.dumps(note)
    if has_payload:
        columns["data"] = payload if payload is not None else "null"
    return LandingRow(lake_key=key, columns=columns, op="U" if partial else "I", lsn=lsn, xid=None,
                      committed_at=None, partial=partial, payload_raw=payload, has_payload=has_payload,
                      payload_column="data" if has_payload else None)


def test_a_json_payload_is_stored_once_and_the_row_image_stays_whole(wh: psycopg.Connection) -> None:
    """A payload that is its column's own JSON object is kept in ``payload`` only (payload_key names
    the column row_data leaves out); raw.row_image is the lake row's full image through every kind of
    change: complete, partial without the payload (unchanged TOAST), partial with a payload decoded
    into something else (kept inline), and partial with a JSON payload again."""

    def stored() -> tuple[Any, ...]:
        return wh.execute("select row_data, payload_key, payload, raw.row_image(row_data, payload_key, payload)"
                          " from raw.lake_transactions where lake_key = 'once'").fetchone()

    _write(wh, "cdc:t", _json_column("once", '{"amount": 1.50, "status": "ok"}', lsn="0/10", note="a"))
    row_data, key, payload, image = stored()
    assert key == "data" and "data" not in row_data and payload == {"amount": Decimal("1.50"), "status": "ok"}
    assert image == {"id": "once", "note": "a", "data": payload}
    _write(wh, "cdc:t", _json_column("once", None, lsn="0/20", partial=True, has_payload=False, note="b"))
    row_data, key, payload, image = stored()
    assert key == "data" and image == {"id": "once", "note": "b", "data": {"amount": Decimal("1.50"), "status": "ok"}}
    _write(wh, "cdc:t", _json_column("once", '"<Tx><Val>2</Val></Tx>"', lsn="0/30", partial=True, note="c"))
    row_data, key, payload, image = stored()
    assert key is None and row_data == image == {"id": "once", "note": "c", "data": "<Tx><Val>2</Val></Tx>"}
    assert payload == {"Tx": {"Val": "2"}}
    _write(wh, "cdc:t", _json_column("once", '{"amount": 3}', lsn="0/40", partial=True))
    row_data, key, payload, image = stored()
    assert key == "data" and row_data == {"id": "once", "note": "c"} and image == {**row_data, "data": {"amount": 3}}
    _write(wh, "cdc:t", _json_column("once", None, lsn="0/50", has_payload=False, note="d"))  # no payload column
    row_data, key, payload, image = stored()
    assert key is None and row_data == image == {"id": "once", "note": "d"} and payload == {"amount": 3}
    wh.commit()


def test_tombstones_have_their_own_small_index(wh: psycopg.Connection) -> None:
    """A build reads the deleted rows apart from the live ones: through a partial index of the
    tombstones only, not a scan of the whole landing (0.7 s of a 1M-row build)."""
    definition = wh.execute("select pg_get_indexdef('raw.lake_transactions_deleted'::regclass)").fetchone()[0]
    assert definition.endswith("(lake_key) WHERE deleted"), definition
    with wh.transaction():
        wh.execute("set local enable_seqscan = off")
        plan = "\n".join(r[0] for r in wh.execute("explain select lake_key from raw.lake_transactions where deleted"))
    assert "lake_transactions_deleted" in plan, plan


# -- the handoff to dbt, by commit order ------------------------------------------------------------


def _fixture_rows(prefix: str, n: int) -> list[dict[str, Any]]:
    fx = load_fixtures()["brief_payu_like__approved"]
    return [landing_row(f"{prefix}-{i}", fx) for i in range(n)]


def _placed(conn: psycopg.Connection) -> dict[str, int]:
    out = {}
    for rel in ("normalized_payment_events", "normalization_quarantine", "normalization_pending"):
        out[rel] = conn.execute(f"select count(*) from {MARTS}.{rel}").fetchone()[0]  # noqa: S608 - fixed names
    out["live"] = conn.execute("select count(*) from raw.lake_transactions where not deleted").fetchone()[0]
    return out


def _keys_placed(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        f"select lake_key from {MARTS}.normalized_payment_events union all "  # noqa: S608 - fixed names
        f"select lake_key from {MARTS}.normalization_quarantine union all "
        f"select lake_key from {MARTS}.normalization_pending").fetchall()
    return {r[0] for r in rows}


def test_a_landing_transaction_that_commits_late_is_normalized(env: Env, wh: psycopg.Connection,
                                                               home: Path) -> None:
    """A landing transaction that took its load_seq before others but commits after a build (a big
    file loading while CDC lands and dbt runs) is normalized by the next build, however far behind
    the load_seq watermark it is: the handoff follows commit order, not write order."""
    late = psycopg.connect(env.wh_dsn)  # not autocommit: its transaction stays open
    try:
        late.execute("select 1")
        land(late, _fixture_rows("late", 1))  # a savepoint inside the open transaction
        land(wh, _fixture_rows("early", 5))
        res = transform.transform(env.wh_dsn, home=home, vars={"late_arrival_lookback": 1})
        assert res.success, res.summary()
        late.commit()
    finally:
        late.close()
    res = transform.transform(env.wh_dsn, home=home, vars={"late_arrival_lookback": 1})
    assert res.success, res.summary()
    assert "late-0" in _keys_placed(wh)
    counts = _placed(wh)
    assert counts["live"] == 6 == counts["normalized_payment_events"] + counts["normalization_quarantine"] \
        + counts["normalization_pending"]


def test_a_warehouse_built_before_the_commit_horizon_existed_upgrades(env: Env, wh: psycopg.Connection,
                                                                      home: Path) -> None:
    """An incremental table built by an older paynorm has no build_xmin: the next build adds the
    column and places every row (then the horizon takes over)."""
    land(wh, _fixture_rows("old", 4))
    assert transform.transform(env.wh_dsn, home=home).success
    wh.execute(f"alter table {transform.DEFAULT_SCHEMA}_intermediate.int_transactions_normalized"  # noqa: S608
               " drop column build_xmin cascade")  # an older build: no column, no views on it
    land(wh, _fixture_rows("new", 3))
    res = transform.transform(env.wh_dsn, home=home)
    assert res.success, res.summary()
    assert {f"old-{i}" for i in range(4)} | {f"new-{i}" for i in range(3)} <= _keys_placed(wh)
    land(wh, _fixture_rows("newer", 2))
    res = transform.transform(env.wh_dsn, home=home)
    assert res.success, res.summary()
    assert _placed(wh)["live"] == 9 and len(_keys_placed(wh)) == 9


def test_events_of_a_model_built_before_it_hashed_event_ids_keep_their_ids(env: Env, wh: psycopg.Connection,
                                                                            home: Path) -> None:
    """The model hashes the events' ids; rows it wrote before it had the column reach the events
    with a NULL event_id (here: rows normalized by a build whose events step did not run) and are
    hashed there, to the same id."""
    model = f"{transform.DEFAULT_SCHEMA}_intermediate.int_transactions_normalized"
    events = f"{transform.DEFAULT_SCHEMA}_marts.normalized_payment_events"
    land(wh, _fixture_rows("old", 4))
    assert transform.transform(env.wh_dsn, home=home).success
    ids = dict(wh.execute(f"select lake_key, event_id::text from {events}").fetchall())  # noqa: S608
    assert ids and all(ids[k] == str(wh.execute("select md5('paynorm-event|' || %s)::uuid", (k,)).fetchone()[0])
                       for k in ids)
    wh.execute(f"alter table {model} drop column event_id cascade")  # noqa: S608 - an older build
    wh.execute(f"update {model} set normalized_at = clock_timestamp() where outcome = 'event'")  # noqa: S608
    wh.commit()
    land(wh, _fixture_rows("new", 2))
    res = transform.transform(env.wh_dsn, home=home)
    assert res.success, res.summary()
    after = dict(wh.execute(f"select lake_key, event_id::text from {events}").fetchall())  # noqa: S608
    assert {k: after[k] for k in ids} == ids and len(after) == len(ids) + 2
    nulls = wh.execute(f"select count(*) from {model} where outcome = 'event' and event_id is null").fetchone()[0]  # noqa: S608
    assert nulls == len(ids)  # the old rows kept no id in the model: the events' model hashed them


def test_builds_under_a_writer_that_never_stops_pass_their_conservation_test(env: Env, wh: psycopg.Connection,
                                                                             home: Path) -> None:
    """A continuous `run` lands while dbt builds: the conservation test checks what the build saw,
    and once the writer stops one more build places every row exactly once."""
    land(wh, _fixture_rows("seed", 20))
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(env.wh_dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                land(conn, _fixture_rows(f"w{i}", 3))
                i += 1
                time.sleep(0.02)
            written.append(i)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for _ in range(2):
            res = transform.transform(env.wh_dsn, home=home)
            assert res.success, res.summary()
    finally:
        stop.set()
        t.join(timeout=30)
    assert written and written[0] > 10  # the writer really ran across the builds
    res = transform.transform(env.wh_dsn, home=home)
    assert res.success, res.summary()
    counts = _placed(wh)
    assert counts["live"] == 20 + 3 * written[0]
    assert counts["live"] == counts["normalized_payment_events"] + counts["normalization_quarantine"] \
        + counts["normalization_pending"]


def test_two_transforms_at_once_both_succeed(env: Env, wh: psycopg.Connection, home: Path) -> None:
    """Two `paynorm transform` on one warehouse and one home: the second waits for the first
    (advisory lock on the warehouse, a lock on the home's dbt directory), neither fails."""
    land(wh, _fixture_rows("t", 10))
    procs = [env.spawn("transform", PAYNORM_HOME=str(home)) for _ in range(2)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append(out.decode(errors="replace"))
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
    assert any("waiting for it to finish" in o for o in outs)
    assert len(_keys_placed(wh)) == 10
