"""The files source against hostile folders and failing connections: symbolic links out of the folder,
gzip files (and gzip bombs), files that stay failed, and the one retry policy for the warehouse and S3.

Real PostgreSQL (the suite's clusters) and a real S3-compatible server (moto's, see test_files.py);
nothing is patched. A warehouse that comes back is a real TCP forwarder in front of the real cluster.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import threading
import time
import tracemalloc
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from psycopg import sql

from consumer.sources import files
from consumer.cli import cli

from .conftest import Env
from .files_fixtures import LocalFiles, S3Files
from .test_files import bare, envelope, jdump, jsonl, landed, run_load, tracking


def _old(root: Path) -> None:
    """Files written an hour ago: not "racy" (files._RACY_SECONDS), so unchanged ones are not re-hashed."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.utime(path, (time.time() - 3600, time.time() - 3600))


# -- 1. symbolic links ----------------------------------------------------------------------------------


def test_a_symlink_out_of_the_folder_is_refused_and_never_read(env: Env, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumer.sources.files")
    root, outside = tmp_path / "lake", tmp_path / "elsewhere"
    folder = LocalFiles(root)
    good = jsonl([bare(1), bare(2)])
    folder.put("good.jsonl", good)
    outside.mkdir()
    (outside / "secret.jsonl").write_bytes(jsonl([{"provider": "secret", "api_key": "sk_live_x"}]))
    os.symlink(outside / "secret.jsonl", root / "leak.jsonl")  # a file out of the folder
    os.symlink("/etc/passwd", root / "passwd.csv")
    os.symlink(outside, root / "exports")  # a folder out of the folder
    os.symlink(outside / "gone.jsonl", root / "dangling.jsonl")  # out of the folder, and dangling
    (root / "sub").mkdir()
    os.symlink("../../elsewhere/secret.jsonl", root / "sub" / "relative.jsonl")  # relative, climbing out
    refused = ["leak.jsonl", "passwd.csv", "exports", "dangling.jsonl", "sub/relative.jsonl"]
    _old(root)

    result = run_load(env, folder)
    assert result.exit_code == files.EXIT_FAILED, result.message
    assert (result.stats.loaded, result.stats.failed) == (1, len(refused)), result.stats
    assert result.stats.bytes_read == len(good)  # nothing but the good file was read
    rows = landed(env)
    assert set(rows) == {f"{folder.key('good.jsonl')}#0", f"{folder.key('good.jsonl')}#1"}
    track = tracking(env)
    for rel in refused:
        key = str(root / rel)  # the link's own path, not its target
        t = track[key]
        assert (t["status"], t["error_code"], t["records"], t["sha256"]) == ("failed", "symlink", 0, None), t
        assert "symbolic link" in t["error"] and "outside" in t["error"] and "never read" in t["error"], t
        assert f"file {key} failed: symbolic link" in caplog.text
    assert "exports/secret.jsonl" not in str(track)  # the linked folder was not walked

    # the next pass still fails on them (they are still there), without reading anything
    caplog.clear()
    again = run_load(env, folder)
    assert again.exit_code == files.EXIT_FAILED
    assert (again.stats.failed, again.stats.still_failed, again.stats.bytes_read) == (0, len(refused), 0)
    assert "failed: symbolic link" not in caplog.text  # said once; the summary says they stay failed
    assert f"{len(refused)} still failed" in caplog.text

    for rel in refused:
        os.unlink(root / rel)
    assert run_load(env, folder).exit_code == 0


def test_symlinks_inside_the_folder_are_not_followed(env: Env, tmp_path: Path) -> None:
    """Their targets are loaded once, under their own path: following the links would load them again
    under other keys (and a link to a parent folder would loop)."""
    root = tmp_path / "lake"
    folder = LocalFiles(root)
    folder.put("2024/06/a.jsonl", jsonl([bare(1), bare(2)]))
    os.symlink(root / "2024" / "06", root / "latest")  # a folder link inside the folder
    os.symlink("2024/06/a.jsonl", root / "alias.jsonl")  # a file link inside the folder
    os.symlink(root, root / "2024" / "loop")  # the root itself
    result = run_load(env, folder)
    assert result.exit_code == 0, result.message
    assert (result.stats.loaded, result.stats.failed, result.stats.links_skipped) == (1, 0, 3)
    assert "3 symbolic link(s) inside the folder not followed" in result.stats.summary()
    k = folder.key("2024/06/a.jsonl")
    assert set(landed(env)) == {f"{k}#0", f"{k}#1"}
    assert set(tracking(env)) == {k}


def test_a_path_swapped_for_a_symlink_after_the_listing_is_refused(tmp_path: Path) -> None:
    """The listing saw regular files; by the time they are opened a file, then a folder on the way,
    has become a link out of the folder: the open follows no link anywhere in the path."""
    root, outside = tmp_path / "lake", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jsonl").write_bytes(jsonl([bare(1)]))
    (root / "b.jsonl").write_bytes(jsonl([bare(2)]))
    outside.mkdir()
    (outside / "a.jsonl").write_bytes(b'{"provider": "secret"}\n')
    (outside / "b.jsonl").write_bytes(b'{"provider": "secret"}\n')
    local = files.LocalStore(str(root))
    refs = {Path(r.location).name: r for page in local.pages() for r in page}
    assert set(refs) == {"a.jsonl", "b.jsonl"} and all(r.refused is None for r in refs.values())

    (root / "b.jsonl").unlink()
    os.symlink(outside / "b.jsonl", root / "b.jsonl")
    with pytest.raises(files.FileError, match="became a symbolic link") as e:
        with local.open(refs["b.jsonl"]) as f:
            f.read()
    assert e.value.code == "symlink"

    (root / "sub").rename(tmp_path / "moved")
    os.symlink(outside, root / "sub")
    with pytest.raises(files.FileError, match="sub became a symbolic link") as e:
        with local.open(refs["a.jsonl"]) as f:
            f.read()
    assert e.value.code == "symlink"


# -- 2. gzip ---------------------------------------------------------------------------------------------


def test_gzip_files_land_like_their_plain_versions(env: Env, store: LocalFiles | S3Files) -> None:
    records = [envelope(1), bare(2), envelope(3, status="refunded")]
    plain_csv = b"provider;amount;currency;status\nadyen;10.50;EUR;Authorised\nadyen;0.99;EUR;Refused\n"
    bodies = {
        "a.jsonl.gz": gzip.compress(jsonl(records)),
        "b.csv.gz": gzip.compress(plain_csv),
        "c.json.gz": gzip.compress(jdump([bare(10), bare(11)]).encode()),
        "d.ndjson.gz": gzip.compress(jsonl([bare(20)])),
        # two gzip members, as `cat a.gz b.gz` or a streaming writer produce
        "e.jsonl.gz": gzip.compress(jsonl([bare(30)])) + gzip.compress(jsonl([bare(31), bare(32)])),
    }
    for rel, body in bodies.items():
        store.put(rel, body)
    if isinstance(store, LocalFiles):
        _old(store.root)
    result = run_load(env, store)
    assert result.exit_code == 0, result.stats.failures
    assert (result.stats.loaded, result.stats.records) == (5, 3 + 2 + 2 + 1 + 3)
    rows = landed(env)
    e1 = rows[str(uuid.UUID(int=1))]
    assert e1["payload"]["amount"] == Decimal("10.10") and str(e1["payload"]["amount"]) == "10.10"
    assert rows[str(uuid.UUID(int=3))]["payload"]["status"] == "refunded"
    assert rows[f"{store.key('b.csv.gz')}#1"]["payload"] == {"provider": "adyen", "amount": "0.99",
                                                             "currency": "EUR", "status": "Refused"}
    assert rows[f"{store.key('c.json.gz')}#1"]["payload"]["n"] == 11
    assert [rows[f"{store.key('e.jsonl.gz')}#{i}"]["payload"]["n"] for i in range(3)] == [30, 31, 32]
    track = tracking(env)
    assert {k: t["format"] for k, t in track.items()} == {
        store.key("a.jsonl.gz"): "jsonl", store.key("b.csv.gz"): "csv", store.key("c.json.gz"): "json",
        store.key("d.ndjson.gz"): "jsonl", store.key("e.jsonl.gz"): "jsonl"}
    for rel, body in bodies.items():  # the hash is of the stored (compressed) bytes
        assert track[store.key(rel)]["sha256"] == hashlib.sha256(body).hexdigest()
    again = run_load(env, store)
    assert (again.exit_code, again.stats.loaded, again.stats.skipped, again.stats.bytes_read) == (0, 0, 5, 0)


def _bomb(member: bytes, copies: int) -> bytes:
    """``copies`` gzip members of ``member``: a few hundred KB that decompress to ``copies * len(member)``."""
    return gzip.compress(member, compresslevel=9) * copies


def test_a_gzip_bomb_fails_cleanly_with_a_reason(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    folder = LocalFiles(root)
    line = jdump({"provider": "payu", "n": 1, "pad": "x" * 2000}) + "\n"
    lines = (line * (8 * 1024 * 1024 // len(line))).encode()
    folder.put("bomb.jsonl.gz", _bomb(lines, 128))  # 1 GiB of valid records
    folder.put("good.jsonl.gz", gzip.compress(jsonl([bare(1)])))
    folder.put("not-gzip.jsonl.gz", jsonl([bare(2)]))
    folder.put("truncated.csv.gz", gzip.compress(b"provider,amount\n" + b"stripe,10\n" * 5000)[:-40])
    _old(root)
    limit = 4 * 1024 * 1024
    assert all(p.stat().st_size < limit for p in root.iterdir())  # every file passes the size check as listed
    started = time.monotonic()
    result = run_load(env, folder, settings={"files_max_bytes": limit})
    assert time.monotonic() - started < 60
    assert result.exit_code == files.EXIT_FAILED
    assert (result.stats.loaded, result.stats.failed) == (1, 3), result.stats.failures
    assert set(landed(env)) == {f"{folder.key('good.jsonl.gz')}#0"}  # nothing of the bomb committed
    track = tracking(env)
    bomb = track[folder.key("bomb.jsonl.gz")]
    assert (bomb["status"], bomb["error_code"], bomb["records"]) == ("failed", "too_large_decompressed", 0)
    assert "once decompressed" in bomb["error"] and "4.0 MiB" in bomb["error"], bomb["error"]
    assert track[folder.key("not-gzip.jsonl.gz")]["error_code"] == "bad_gzip"
    assert "not a valid gzip file" in track[folder.key("not-gzip.jsonl.gz")]["error"]
    assert track[folder.key("truncated.csv.gz")]["error_code"] == "bad_gzip"
    assert "truncated gzip file" in track[folder.key("truncated.csv.gz")]["error"]
    # not decompressed again at every pass while the file is unchanged
    again = run_load(env, folder, settings={"files_max_bytes": limit})
    assert (again.stats.still_failed, again.stats.bytes_read) == (3, 0)


def test_a_gzip_bomb_of_one_endless_record_keeps_memory_flat(env: Env, tmp_path: Path) -> None:
    """With the default 512 MiB limit, one record that never ends (a line without a newline, a JSON
    string without its closing quote) fails at MAX_RECORD_CHARS instead of growing in memory."""
    root = tmp_path / "lake"
    folder = LocalFiles(root)
    folder.put("line.jsonl.gz", _bomb(b" " * (8 << 20), 64))  # 512 MiB, no newline
    folder.put("string.json.gz", gzip.compress(b'["') + _bomb(b"a" * (8 << 20), 64))
    folder.put("cells.csv.gz", gzip.compress(b"provider,note\n") + _bomb(b"b" * (8 << 20), 64))
    tracemalloc.start()
    try:
        result = run_load(env, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == files.EXIT_FAILED
    assert result.stats.failed == 3, result.stats
    track = tracking(env)
    for rel in ("line.jsonl.gz", "string.json.gz", "cells.csv.gz"):
        t = track[folder.key(rel)]
        assert t["error_code"] == "record_too_large", (rel, t["error"])
        assert f"{files.MAX_RECORD_CHARS:,} characters" in t["error"]
    assert peak < 8 * files.MAX_RECORD_CHARS, f"peak {peak / 2 ** 20:.0f} MiB"  # not the 512 MiB decompressed


# -- 3. a failed file fails every pass --------------------------------------------------------------------


def test_a_failed_file_fails_every_pass_until_it_changes(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    folder = LocalFiles(root)
    folder.put("bad.jsonl", '{"provider": "señal"}\n'.encode("latin-1"))
    folder.put("good.jsonl", jsonl([bare(1)]))
    _old(root)
    first = run_load(env, folder)
    assert (first.exit_code, first.stats.failed) == (files.EXIT_FAILED, 1)

    second = run_load(env, folder)
    assert second.exit_code == files.EXIT_FAILED, "a failed file that did not change is still a failure"
    assert (second.stats.failed, second.stats.still_failed, second.stats.skipped) == (0, 1, 1)
    assert "1 file(s) still failed, unchanged since an earlier pass" in second.message
    assert "1 still failed (unchanged since an earlier pass)" in second.stats.summary()
    assert second.stats.failures == [(folder.key("bad.jsonl"), second.stats.failures[0][1])]
    assert "not UTF-8" in second.stats.failures[0][1]

    out = CliRunner().invoke(cli, ["load", str(root), "--once"], env={"DATABASE_URL": env.wh_dsn},
                             catch_exceptions=False)
    assert out.exit_code == 1, out.output
    assert "1 still failed" in out.output and f"failed: {folder.key('bad.jsonl')}: not UTF-8" in out.output

    folder.put("bad.jsonl", '{"provider": "señal"}\n'.encode())  # fixed
    assert run_load(env, folder).exit_code == 0
    folder.put("worse.jsonl", b"\xff\n")
    assert run_load(env, folder).exit_code == files.EXIT_FAILED
    (root / "worse.jsonl").unlink()  # a failed file that is gone is no failure any more
    assert run_load(env, folder).exit_code == 0


# -- 5. the retry policy ------------------------------------------------------------------------------------


def _timed_load(settings: Any, uri: str, **kw: Any) -> tuple[files.LoadResult, float]:
    started = time.monotonic()
    result = files.load(settings, uri, once=True, **kw)
    return result, time.monotonic() - started


@pytest.fixture
def no_privilege_role(env: Env) -> Iterator[str]:
    """A warehouse role that may log in and nothing else (it cannot create paynorm's schemas)."""
    role = f"nopriv_{os.getpid()}"
    with env.wh.connect() as conn:
        if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    yield role


@pytest.mark.parametrize("problem", ["unknown database", "unknown role", "not a DSN", "no privilege"])
def test_a_permanent_warehouse_problem_fails_at_once(env: Env, tmp_path: Path, problem: str,
                                                     no_privilege_role: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "lake"
    LocalFiles(root).put("a.jsonl", jsonl([bare(1)]))
    base = env.wh_dsn.rsplit("/", 1)[0]
    dsn, reason = {
        "unknown database": (base + "/no_such_db", 'database "no_such_db" does not exist'),
        "unknown role": (env.wh_dsn.replace("warehouse@", "nobody_here@"), 'role "nobody_here" does not exist'),
        "not a DSN": ("host=127.0.0.1 pass word=s3cret-pw", "not a valid PostgreSQL DSN"),
        "no privilege": (env.wh_dsn.replace("warehouse@", f"{no_privilege_role}@"), "permission denied"),
    }[problem]
    result, seconds = _timed_load(env.settings(warehouse_dsn=dsn, retry_for=30), str(root))
    assert result.exit_code == files.EXIT_CONFIG, (result.exit_code, result.message)
    assert reason in result.message, result.message
    assert seconds < 10 and "retrying" not in caplog.text, (seconds, caplog.text)
    assert "s3cret-pw" not in result.message and "s3cret-pw" not in caplog.text


def test_a_missing_bucket_fails_at_once(env: Env, s3_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    result, seconds = _timed_load(env.settings(retry_for=30), f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x",
                                  endpoint_url=s3_endpoint)
    assert result.exit_code == files.EXIT_CONFIG, (result.exit_code, result.message)
    assert "NoSuchBucket" in result.message and seconds < 10 and "retrying" not in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LateForwarder:
    """A TCP forwarder to the real warehouse that starts listening only after ``delay`` seconds: until
    then the port refuses connections, as a warehouse that is restarting does."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.port = _free_port()
        self.target_port = target_port
        self.delay = delay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.stop.wait(self.delay):
            return
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", self.port))
            srv.listen()
            srv.settimeout(0.2)
            while not self.stop.is_set():
                try:
                    client, _ = srv.accept()
                except socket.timeout:
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_warehouse_that_comes_back_within_the_deadline_is_waited_for(env: Env, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "lake"
    LocalFiles(root).put("a.jsonl", jsonl([bare(1)]))
    fwd = _LateForwarder(env.wh.port, delay=4.0)
    try:
        dsn = env.wh_dsn.replace(f":{env.wh.port}/", f":{fwd.port}/")
        result, seconds = _timed_load(env.settings(warehouse_dsn=dsn), str(root))  # --once: 60 s by default
    finally:
        fwd.close()
    assert result.exit_code == 0, result.message
    assert result.stats.loaded == 1 and seconds >= 4
    assert caplog.text.count("retrying in") >= 3  # backed off while it was down


def test_an_unreachable_warehouse_gives_up_at_the_deadline(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    LocalFiles(root).put("a.jsonl", jsonl([bare(1)]))
    dsn = env.wh_dsn.replace(f":{env.wh.port}/", f":{_free_port()}/")
    result, seconds = _timed_load(env.settings(warehouse_dsn=dsn, retry_for=4), str(root))
    assert result.exit_code == files.EXIT_FAILED, result.message
    assert "gave up after retrying" in result.message and "Connection refused" in result.message, result.message
    assert 4 <= seconds < 20, seconds


def test_a_warehouse_lost_mid_pass_is_reconnected(env: Env, tmp_path: Path) -> None:
    """The loader's session is killed after the first file committed: the pass is retried on a new
    connection and the second file lands, the first is not loaded twice."""
    root = tmp_path / "lake"
    folder = LocalFiles(root)
    folder.put("a.jsonl", jsonl([bare(1)]))
    folder.put("b.jsonl", jsonl([bare(2)]))
    _old(root)
    real = files.FileLoader._one
    killed: list[bool] = []

    def one_then_kill(self: files.FileLoader, ref: files.FileRef, k: Any, stats: files.LoadStats) -> None:
        if ref.key.endswith("b.jsonl") and not killed:
            killed.append(True)
            with env.wh_conn() as admin:
                admin.execute("select pg_terminate_backend(pid) from pg_stat_activity"
                              " where application_name = 'paynorm-files'")
        real(self, ref, k, stats)

    mp = pytest.MonkeyPatch()
    mp.setattr(files.FileLoader, "_one", one_then_kill)
    try:
        result = files.load(env.settings(), str(root), once=True)
    finally:
        mp.undo()
    assert killed and result.exit_code == 0, result.message
    assert set(landed(env)) == {f"{folder.key('a.jsonl')}#0", f"{folder.key('b.jsonl')}#0"}
    assert {k: t["attempts"] for k, t in tracking(env).items()} == {folder.key("a.jsonl"): 1, folder.key("b.jsonl"): 1}


def test_stopping_during_an_outage_ends_a_continuous_load(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    LocalFiles(root).put("a.jsonl", jsonl([bare(1)]))
    dsn = env.wh_dsn.replace(f":{env.wh.port}/", f":{_free_port()}/")
    stop = threading.Event()
    out: list[files.LoadResult] = []
    worker = threading.Thread(target=lambda: out.append(files.load(env.settings(warehouse_dsn=dsn), str(root),
                                                                   once=False, stop=stop)))
    worker.start()
    time.sleep(2)
    stop.set()
    worker.join(10)
    assert not worker.is_alive() and out[0].exit_code == 0

