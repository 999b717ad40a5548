"""The files source (`paynorm load`): a local folder and S3 through a real S3-compatible HTTP server.

S3 is moto's server mode (``ThreadedMotoServer``) on 127.0.0.1 and a free port, spoken to over HTTP by
boto3 exactly as MinIO or AWS would be (the child processes of the crash tests use it too); nothing is
patched in-process. The warehouse is the suite's real PostgreSQL.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from consumer.sources import files
from consumer.cli import cli
from consumer.sources.postgres.replicate import replicate

from .conftest import Env, insert_rows
from .files_fixtures import AWS_ENV, LocalFiles, S3Files

boto3 = pytest.importorskip("boto3")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
moto_server = pytest.importorskip("moto.server")

def run_load(env: Env, store: LocalFiles | S3Files, **kw: Any) -> files.LoadResult:
    settings = env.settings(**kw.pop("settings", {}))
    return files.load(settings, store.uri, once=True, endpoint_url=store.endpoint, **kw)


# -- data -------------------------------------------------------------------------------------------

MERCHANT = {"id": "m-1", "name": "Tienda Uno", "country": "CO"}


def envelope(n: int, **data: Any) -> dict[str, Any]:
    return {"id": str(uuid.UUID(int=n)), "data": {"provider": "stripe", "amount": Decimal("10.10"), "n": n, **data},
            "merchant": MERCHANT, "transactional_id": str(uuid.UUID(int=10_000 + n)),
            "created_at": "2024-06-01T10:00:00Z"}


def bare(n: int) -> dict[str, Any]:
    return {"provider": "payu", "transaction": {"value": Decimal("99.99"), "currency": "COP"}, "n": n,
            "state": "APPROVED"}


def jdump(obj: Any) -> str:
    from consumer.jsonutil import dumps_exact

    return dumps_exact(obj)


def jsonl(records: list[Any]) -> bytes:
    return "".join(jdump(r) + "\n" for r in records).encode()


def parquet_bytes(table: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=3)
    return buf.getvalue()


def landed(env: Env, source_like: str = "file:%") -> dict[str, dict[str, Any]]:
    with env.wh_conn() as conn:
        rows = conn.execute(
            "select lake_key, raw.row_image(row_data, payload_key, payload), payload, payload_format, decode_error, op,"
            " source, deleted, lake_lsn, load_seq"
            " from raw.lake_transactions where source like %s", (source_like,)).fetchall()
    keys = ("row_data", "payload", "payload_format", "decode_error", "op", "source", "deleted", "lake_lsn", "load_seq")
    return {r[0]: dict(zip(keys, r[1:])) for r in rows}


def tracking(env: Env) -> dict[str, dict[str, Any]]:
    with env.wh_conn() as conn:
        cur = conn.execute("select * from paynorm.processed_files")
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


# -- every format, re-run, change ------------------------------------------------------------------------


def write_every_format(store: LocalFiles | S3Files) -> None:
    store.put("2024/06/a.json", jdump([envelope(1), envelope(2), bare(3)]).encode())
    store.put("2024/06/b.jsonl", jsonl([bare(0), bare(1), envelope(3)]))
    store.put("2024/06/c.csv", (
        "id,data,merchant,transactional_id\n"
        f'{uuid.UUID(int=4)},"{{""provider"": ""stripe"", ""amount"": 10.10}}",'
        f'"{{""id"": ""m-1"", ""name"": ""Tienda Uno"", ""country"": ""CO""}}",{uuid.UUID(int=10_004)}\n'
    ).encode())
    store.put("2024/07/d.csv", b"provider;amount;currency;status\nadyen;1050;EUR;Authorised\nadyen;99;EUR;Refused\n")
    table = pa.table({
        "provider": ["mercadopago"] * 4,
        "amount": pa.array([Decimal("12.34"), Decimal("0.01"), Decimal("100.00"), None], pa.decimal128(12, 2)),
        "fee": [0.25, 1.5, None, 2.0],
        "paid_at": pa.array([1717236000000, 1717236001000, 1717236002000, 1717236003000], pa.timestamp("ms", "UTC")),
        "meta": [{"k": "a"}, {"k": "b"}, None, {"k": "d"}],
    })
    store.put("2024/07/e.parquet", parquet_bytes(table))
    envelopes = pa.table({  # a lake export: jsonb columns as JSON text or as structs
        "id": [str(uuid.UUID(int=5)).upper(), str(uuid.UUID(int=6))],
        "data": ['{"provider": "stripe", "amount": 20.20}', '<tx><status>OK</status></tx>'],
        "merchant": [MERCHANT, None],
        "transactional_id": [str(uuid.UUID(int=10_005)), None],
    })
    store.put("2024/07/f.parquet", parquet_bytes(envelopes))
    store.put("2024/07/_SUCCESS", b"")  # unknown extension: ignored in auto mode
    store.put("2024/07/.part-0.jsonl", b'{"tmp": 1}\n')  # hidden: ignored


def test_every_format_lands_and_a_rerun_loads_nothing(env: Env, store: LocalFiles | S3Files) -> None:
    write_every_format(store)
    if isinstance(store, LocalFiles):  # written an hour ago: not "racy" (see files._RACY_SECONDS)
        for path in store.root.rglob("*"):
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    result = run_load(env, store)
    assert result.exit_code == 0, result.message
    assert (result.stats.loaded, result.stats.failed, result.stats.records) == (6, 0, 15)
    rows = landed(env)
    assert len(rows) == 15
    assert {r["op"] for r in rows.values()} == {"F"} and all(r["lake_lsn"] is None for r in rows.values())

    # envelopes keep their id as lake key, their merchant and their exact amounts
    e1 = rows[str(uuid.UUID(int=1))]
    assert e1["source"] == f"file:{store.key('2024/06/a.json')}"
    assert e1["row_data"]["merchant"] == MERCHANT
    assert e1["row_data"]["transactional_id"] == str(uuid.UUID(int=10_001))
    assert e1["payload"]["amount"] == Decimal("10.10") and str(e1["payload"]["amount"]) == "10.10"
    assert e1["payload_format"] == "json" and e1["decode_error"] is None
    # bare payloads: <key>#<index>, the data of an envelope with null merchant
    b0 = rows[f"{store.key('2024/06/b.jsonl')}#0"]
    assert b0["row_data"] == {"id": None, "data": bare(0), "merchant": None, "transactional_id": None}
    assert b0["payload"]["transaction"]["value"] == Decimal("99.99")
    assert rows[str(uuid.UUID(int=3))]["source"] == f"file:{store.key('2024/06/b.jsonl')}"
    # CSV envelope: JSON cells parsed; CSV bare rows (';' delimited) as objects of strings
    c4 = rows[str(uuid.UUID(int=4))]
    assert c4["row_data"]["merchant"] == MERCHANT
    assert c4["payload"] == {"provider": "stripe", "amount": Decimal("10.10")}
    d1 = rows[f"{store.key('2024/07/d.csv')}#1"]
    assert d1["payload"] == {"provider": "adyen", "amount": "99", "currency": "EUR", "status": "Refused"}
    # Parquet: decimals exact, floats as their shortest decimal, timestamps ISO, structs as objects
    e0 = rows[f"{store.key('2024/07/e.parquet')}#0"]["payload"]
    assert e0["amount"] == Decimal("12.34") and e0["fee"] == Decimal("0.25") and e0["meta"] == {"k": "a"}
    assert e0["paid_at"].startswith("2024-06-01T10:00:00")
    assert rows[f"{store.key('2024/07/e.parquet')}#3"]["payload"]["amount"] is None
    f5, f6 = rows[str(uuid.UUID(int=5))], rows[str(uuid.UUID(int=6))]  # keyed by their id, lower-cased
    assert f5["row_data"]["merchant"] == MERCHANT and f5["payload"]["amount"] == Decimal("20.20")
    assert f6["payload"] == {"tx": {"status": "OK"}} and f6["row_data"]["merchant"] is None

    track = tracking(env)
    assert set(track) == {store.key(p) for p in ("2024/06/a.json", "2024/06/b.jsonl", "2024/06/c.csv",
                                                  "2024/07/d.csv", "2024/07/e.parquet", "2024/07/f.parquet")}
    for t in track.values():
        assert t["status"] == "completed" and t["error"] is None, t
        assert t["sha256"] and len(t["sha256"]) == 64 and t["attempts"] == 1
        assert (t["etag"] is not None) == (store.kind == "s3")
        assert t["finished_at"] >= t["started_at"] and t["duration_ms"] >= 0
    assert track[store.key("2024/07/e.parquet")]["format"] == "parquet"
    assert track[store.key("2024/07/e.parquet")]["records"] == 4

    # a re-run loads nothing: nothing read from S3, no landing row rewritten, tracking untouched
    seq = max(r["load_seq"] for r in rows.values())
    again = run_load(env, store)
    assert again.exit_code == 0
    assert (again.stats.loaded, again.stats.skipped, again.stats.records) == (0, 6, 0)
    assert again.stats.bytes_read == 0  # skipped on size + ETag (S3) or size + mtime (local): nothing read
    assert max(r["load_seq"] for r in landed(env).values()) == seq
    assert {k: t["attempts"] for k, t in tracking(env).items()} == {k: 1 for k in track}


def test_a_changed_file_replaces_its_records(env: Env, store: LocalFiles | S3Files) -> None:
    store.put("t.jsonl", jsonl([bare(i) for i in range(5)] + [envelope(50), envelope(51)]))
    store.put("other.jsonl", jsonl([bare(100)]))
    assert run_load(env, store).stats.loaded == 2
    other_seq = landed(env)[f"{store.key('other.jsonl')}#0"]["load_seq"]

    # the same key, new content (same size as before: only the ETag / the content tell)
    v2 = [bare(i + 1000) for i in range(3)] + [envelope(51, status="refunded"), bare(4)]
    body = jsonl(v2)
    old_size = len(jsonl([bare(i) for i in range(5)] + [envelope(50), envelope(51)]))
    body = body.rstrip(b"\n") + b" " * max(old_size - len(body), 0) + b"\n"
    store.put("t.jsonl", body)
    result = run_load(env, store)
    assert (result.stats.loaded, result.stats.skipped) == (1, 1), result.stats
    rows = landed(env)
    k = store.key("t.jsonl")
    assert [rows[f"{k}#{i}"]["payload"]["n"] for i in range(3)] == [1000, 1001, 1002]
    assert rows[f"{k}#4"]["payload"]["n"] == 4 and not rows[f"{k}#4"]["deleted"]
    assert rows[str(uuid.UUID(int=51))]["payload"]["status"] == "refunded"
    # records of the old version that vanished are tombstoned, keeping their last image
    assert rows[f"{k}#3"]["deleted"] and rows[f"{k}#3"]["payload"]["n"] == 3
    assert rows[str(uuid.UUID(int=50))]["deleted"]
    assert result.stats.tombstoned == 2
    assert sum(not r["deleted"] for r in rows.values() if r["source"] == f"file:{k}") == 5
    assert rows[f"{store.key('other.jsonl')}#0"]["load_seq"] == other_seq  # untouched
    t = tracking(env)[k]
    assert (t["status"], t["records"], t["tombstoned"], t["attempts"]) == ("completed", 5, 2, 2)
    assert run_load(env, store).stats.loaded == 0


# -- bad files and bad records -------------------------------------------------------------------------------


def test_bad_files_fail_clearly_and_the_others_go_on(env: Env, store: LocalFiles | S3Files,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    store.put("bad/latin1.jsonl", '{"provider": "señal"}\n'.encode("latin-1"))
    store.put("bad/truncated.json", jdump([envelope(i) for i in range(20)]).encode()[:700])
    store.put("bad/ragged.csv", b"provider,amount,currency\nstripe,10,USD\nstripe,11\n")
    store.put("bad/fake.parquet", b"PAR1 this is not parquet at all " * 10)
    store.put("bad/empty.jsonl", b"")
    store.put("bad/blank.json", b"  \n\n ")
    store.put("bad/huge.jsonl", jsonl([bare(i) for i in range(200)]))  # "1 GB": over the configured limit
    store.put("good.jsonl", jsonl([bare(1), bare(2)]))
    max_bytes = len(jsonl([bare(i) for i in range(200)])) - 1
    result = run_load(env, store, settings={"files_max_bytes": max_bytes})
    assert result.exit_code == files.EXIT_FAILED
    assert (result.stats.loaded, result.stats.failed) == (1, 7)
    assert set(landed(env)) == {f"{store.key('good.jsonl')}#0", f"{store.key('good.jsonl')}#1"}

    track = tracking(env)
    expected = {
        "bad/latin1.jsonl": ("not_utf8", "not UTF-8: invalid byte 0xf1"),
        "bad/truncated.json": ("bad_json", "truncated JSON"),
        "bad/ragged.csv": ("ragged_csv", "line 3 has 2 field(s), the header has 3"),
        "bad/fake.parquet": ("not_parquet", "not a Parquet file"),
        "bad/empty.jsonl": ("empty", "empty file"),
        "bad/blank.json": ("empty", "empty file"),
        "bad/huge.jsonl": ("too_large", "larger than the limit"),
    }
    for rel, (code, text) in expected.items():
        t = track[store.key(rel)]
        assert t["status"] == "failed" and t["error_code"] == code, (rel, t)
        assert text in t["error"], (rel, t["error"])
        assert t["records"] == 0
        assert f"file {store.key(rel)} failed: {t['error']}" in caplog.text
    assert track[store.key("good.jsonl")]["status"] == "completed"

    # unchanged bad files are not read again, but they are still failures of the pass (exit 1); a fixed
    # one is loaded; raising the limit retries the big one
    again = run_load(env, store, settings={"files_max_bytes": max_bytes})
    assert (again.exit_code, again.stats.loaded, again.stats.failed, again.stats.still_failed,
            again.stats.skipped) == (files.EXIT_FAILED, 0, 0, 7, 1)
    # at most the good file is hashed again (its mtime may be too close to our read to trust)
    assert again.stats.bytes_read <= track[store.key("good.jsonl")]["size"]
    store.put("bad/ragged.csv", b"provider,amount,currency\nstripe,10,USD\nstripe,11,USD\n")
    fixed = run_load(env, store)
    assert (fixed.stats.loaded, fixed.stats.failed, fixed.stats.still_failed) == (2, 0, 5)
    assert fixed.exit_code == files.EXIT_FAILED and "5 file(s) still failed" in fixed.message
    assert tracking(env)[store.key("bad/ragged.csv")]["status"] == "completed"
    assert len(landed(env)) == 2 + 2 + 200


def test_bad_records_in_a_good_file_land_with_their_decode_error(env: Env, tmp_path: Path) -> None:
    store = LocalFiles(tmp_path / "lake")
    lines = [
        jdump(bare(0)),
        '{"provider": "broken", "amount": 1',  # not JSON
        jdump({"id": str(uuid.UUID(int=7)), "data": "<tx><status>DECLINED</status>", "merchant": MERCHANT,
               "transactional_id": None}),  # unterminated XML inside an envelope
        jdump({"id": str(uuid.UUID(int=8)), "data": '<?xml version="1.0"?><tx><amount>5</amount></tx>',
               "merchant": MERCHANT, "transactional_id": None}),
        jdump({"provider": "nul\u0000byte", "amount": Decimal("1.00")}),
        "[" * 200 + "]" * 200,  # too deep for the decoder
        jdump("amount=10&status=ok"),  # a bare name=value string
    ]
    store.put("mixed.jsonl", ("\n".join(lines) + "\n").encode())
    store.put("cells.csv", b'id,data,merchant,transactional_id\n'
                           b'00000000-0000-0000-0000-000000000009,"{""amount"": ",,\n')
    result = run_load(env, store)
    assert result.exit_code == 0 and result.stats.loaded == 2, result.stats.failures
    rows = landed(env)
    k = store.key("mixed.jsonl")
    assert len(rows) == 8
    assert rows[f"{k}#0"]["decode_error"] is None
    broken = rows[f"{k}#1"]
    assert broken["decode_error"].startswith("JSONL line 2: not JSON")
    assert broken["payload"] is None and broken["row_data"]["data"] == lines[1]
    assert rows[str(uuid.UUID(int=7))]["decode_error"] and rows[str(uuid.UUID(int=7))]["payload"] is None
    assert rows[str(uuid.UUID(int=8))]["payload"] == {"tx": {"amount": "5"}}
    assert rows[str(uuid.UUID(int=8))]["payload_format"] == "xml"
    nul = rows[f"{k}#4"]
    assert nul["payload"]["provider"] == "nulbyte" and "NUL" in nul["decode_error"]
    assert rows[f"{k}#5"]["decode_error"] and rows[f"{k}#5"]["payload"] is None
    assert rows[f"{k}#6"]["payload"] == {"amount": "10", "status": "ok"}
    cell = rows[str(uuid.UUID(int=9))]
    assert cell["decode_error"] and cell["row_data"]["merchant"] is None
    t = tracking(env)[k]
    assert t["status"] == "completed" and t["records"] == 7 and t["bad_records"] >= 3


# -- source precedence: files next to the CDC lake ---------------------------------------------------------


def test_a_file_record_never_rewrites_revives_or_tombstones_a_cdc_row(env: Env, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A file whose envelope ids are lake rows' ids leaves those rows to CDC (and says so), unless
    the files are declared the lake's own export; then the file's image is the row's."""
    with env.lake_conn() as lake:
        ids = insert_rows(lake, 3)
    assert replicate(env.settings(), once=True).exit_code == 0
    with env.lake_conn() as lake:
        lake.execute("delete from public.raw_transactions where id = %s", (ids[1],))
    assert replicate(env.settings(), once=True).exit_code == 0
    before = _rows(env)
    assert before[ids[1]][1] is True  # a CDC tombstone
    store = LocalFiles(tmp_path / "lake")
    # the export writes the UUID in upper case: still the same record
    rewrite = {"id": ids[0].upper(), "data": {"amount": Decimal("999999"), "status": "refunded"},
               "merchant": MERCHANT, "transactional_id": None}
    revive = {**rewrite, "id": ids[1]}
    store.put("export.jsonl", jsonl([rewrite, revive, envelope(1)]))
    caplog.set_level(logging.WARNING, logger="consumer.sources.files")
    assert run_load(env, store).stats.loaded == 1
    after = _rows(env)
    assert {k: after[k] for k in ids} == {k: before[k] for k in ids}  # not rewritten, not revived
    assert "2 record(s) carry the id of a row another source" in caplog.text
    # the next version of the file drops them: CDC rows are not tombstoned either
    store.put("export.jsonl", jsonl([envelope(1)]))
    assert run_load(env, store).stats.loaded == 1
    assert {k: _rows(env)[k] for k in ids} == {k: before[k] for k in ids}
    # declared to be the lake's own export (the CLI flag): the file's image is the row's
    store.put("export.jsonl", jsonl([rewrite, envelope(1)]))
    out = CliRunner().invoke(cli, ["load", store.uri, "--once", "--files-are-lake-export"],
                             env={"DATABASE_URL": env.wh_dsn}, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert _rows(env)[ids[0]] == (f"file:{store.key('export.jsonl')}", False, "999999")


def _rows(env: Env) -> dict[str, tuple[Any, ...]]:
    with env.wh_conn() as conn:
        return {k: (src, deleted, amount) for k, src, deleted, amount in conn.execute(
            "select lake_key, source, deleted, payload->>'amount' from raw.lake_transactions").fetchall()}


# -- crashes -----------------------------------------------------------------------------------------------


def big_jsonl(n: int) -> bytes:
    return "".join(f'{{"provider": "payu", "n": {i}, "amount": "{i}.25", "pad": "{"x" * 80}"}}\n'
                   for i in range(n)).encode()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_kill_9_mid_file_then_rerun_yields_exactly_the_file(env: Env, tmp_path: Path, kind: str,
                                                           request: pytest.FixtureRequest) -> None:
    store: LocalFiles | S3Files = (LocalFiles(tmp_path / "lake") if kind == "local"
                                   else S3Files(request.getfixturevalue("s3_endpoint")))
    n = 30_000
    store.put("big.jsonl", big_jsonl(n))
    store.put("small.jsonl", jsonl([bare(1)]))
    key = store.key("big.jsonl")
    extra = {**AWS_ENV, "PAYNORM_FILES_CHUNK": "2000"}

    def count() -> int:
        with env.wh_conn() as conn:
            return conn.execute("select count(*) from raw.lake_transactions where source = %s",
                                (f"file:{key}",)).fetchone()[0]

    # 1. the process kills itself (SIGKILL) after staging its 3rd chunk of the big file, then after the
    #    upsert and the tracking row but before the commit
    for point in ("file_chunk:3", "file_before_commit:1"):
        proc = env.spawn("load", *store.cli_args(), "--once", PAYNORM_CRASHPOINT=point, **extra)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == -signal.SIGKILL, out
        assert count() == 0  # nothing half-loaded
        assert tracking(env)[key]["status"] == "processing"

    # 2. killed from outside, at a moment of its own choosing, while it loads the big file
    proc = env.spawn("load", *store.cli_args(), "--once", **extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = tracking(env).get(key)
        if t and t["status"] == "processing" and t["attempts"] == 3:
            break
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert count() in (0, n)

    # 3. a clean run: exactly the file's records, once
    proc = env.spawn("load", *store.cli_args(), "--once", **extra)
    out = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 0, out
    assert count() == n
    with env.wh_conn() as conn:
        keys = {r[0] for r in conn.execute("select lake_key from raw.lake_transactions where source = %s",
                                           (f"file:{key}",))}
        bad = conn.execute("select count(*) from raw.lake_transactions where source = %s and"
                           " (deleted or decode_error is not null)", (f"file:{key}",)).fetchone()[0]
    assert keys == {f"{key}#{i}" for i in range(n)} and bad == 0
    t = tracking(env)[key]
    assert (t["status"], t["records"], t["rows_landed"]) == ("completed", n, n)


# -- the command line, filters, streaming ------------------------------------------------------------------


def test_cli_load_with_format_prefix_and_glob(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    store = LocalFiles(root)
    store.put("2024/06/a.txt", jsonl([bare(1), bare(2)]))  # JSON Lines under another extension
    store.put("2024/07/b.txt", jsonl([bare(3)]))
    store.put("2024/07/c.log", jsonl([bare(4)]))
    runner = CliRunner()
    cli_env = {"DATABASE_URL": env.wh_dsn}
    out = runner.invoke(cli, ["load", str(root), "--once", "--format", "jsonl", "--prefix", "2024/07/",
                              "--glob", "*.txt"], env=cli_env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "1 loaded" in out.output
    assert set(landed(env)) == {f"{store.key('2024/07/b.txt')}#0"}
    out = runner.invoke(cli, ["load", str(root), "--once", "--format", "jsonl"], env=cli_env, catch_exceptions=False)
    assert out.exit_code == 0 and "2 loaded" in out.output and "1 unchanged" in out.output, out.output
    assert len(landed(env)) == 4
    out = runner.invoke(cli, ["load", "ftp://example.com/x", "--once"], env=cli_env)
    assert out.exit_code == 4 and "s3://bucket/prefix" in out.output


class _Dribble(io.StringIO):
    """A text stream that returns a few characters per read: every element crosses buffer boundaries."""

    def read(self, n: int | None = -1) -> str:
        return super().read(5 if n is None or n < 0 or n > 5 else n)


def test_json_arrays_stream_across_buffer_boundaries() -> None:
    doc = '[1, 23, {"a": [1, 2, {"b": "x,]"}]}, "s]tr", 7.25e3 , -0.5, true, null, {"amount": 10.10}]'
    got = [r for r, _ in files._JsonArray(_Dribble(doc), as_lines_fallback=False)]
    assert got == json.loads(doc, parse_float=Decimal) and str(got[-1]["amount"]) == "10.10"
    for bad, text in (('[{"a": 1}, {"a":', "truncated"), ("[1 2]", "expected ','"), ("[1] x", "extra data"),
                      ('[{"a": 1},]', "invalid JSON"), ('[{"a": "abc', "truncated")):
        with pytest.raises(files.FileError, match=text):
            list(files._JsonArray(_Dribble(bad), as_lines_fallback=False))
    lines = '{"a": 1}\n{"b": 2}\n'  # a .json file that holds JSON Lines
    assert [r for r, _ in files._JsonArray(_Dribble(lines), as_lines_fallback=True)] == [{"a": 1}, {"b": 2}]


def test_continuous_mode_picks_up_new_files_until_stopped(env: Env, s3_endpoint: str) -> None:
    import threading

    store = S3Files(s3_endpoint)
    store.put("day1.jsonl", jsonl([bare(1)]))
    stop = threading.Event()
    out: list[files.LoadResult] = []
    worker = threading.Thread(target=lambda: out.append(files.load(
        env.settings(), store.uri, once=False, interval=0.1, endpoint_url=s3_endpoint, stop=stop)))
    worker.start()
    try:
        def wait_rows(n: int) -> None:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if len(landed(env)) >= n:
                        return
                except psycopg.errors.UndefinedTable:  # the loader has not created the schema yet
                    pass
                assert time.monotonic() < deadline, f"fewer than {n} rows landed"
                time.sleep(0.05)

        wait_rows(1)
        store.put("day2.jsonl", jsonl([bare(2), bare(3)]))
        wait_rows(3)
    finally:
        stop.set()
        worker.join(timeout=20)
    assert not worker.is_alive() and out[0].exit_code == 0
    assert out[0].stats.loaded == 2 and out[0].stats.records == 3
