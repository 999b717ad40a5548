"""Permanent errors fail at once with one line and exit 4, transient ones are retried to a deadline
then exit 1, in every command that reads a source; secrets never reach the output or the tables.

Real clusters: a role that must give a password (scram) on the warehouse cluster, an unknown
role, a port nothing listens on, a revoked privilege, a missing table."""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import quote

import psycopg
import pytest

from consumer.errors import ConfigError, TransientError, classify, require_dsn
from consumer.secrets import redact_dsn, redact_error

from .conftest import REPO, Env, insert_rows, scram_role

PW_ROLE = "pw_check"
# passwords that broke the regex redaction: an unencoded %, @, a space, an escaped quote
PASSWORDS = ["50%off", "p@ss:w0rd", "it's my s3cret", "two words here"]


def _cli(env: Env, *args: str, timeout: float = 120, **extra: str) -> tuple[int, str, float]:
    e = env.cli_env(**extra)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "consumer", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def _url(env: Env, user: str, password: str, db: str) -> str:
    return f"postgresql://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{env.wh.port}/{db}"


def _kv(env: Env, user: str, password: str, db: str) -> str:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"host=127.0.0.1 port={env.wh.port} dbname={db} user={user} password='{escaped}'"


@pytest.fixture
def pw_role(env: Env) -> str:
    return scram_role(env.wh, PW_ROLE, "the-right-one")


@pytest.fixture
def lake_pw_role(env: Env) -> str:
    """The same role on the lake cluster: its errors are recorded in the warehouse."""
    return scram_role(env.lake, PW_ROLE, "the-right-one", replication=True)


# -- pure logic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_dsn_redaction_is_structural(password: str) -> None:
    url = f"postgresql://u:{quote(password, safe='')}@h:5432/db"
    kv = "host=h user=u password='" + password.replace("'", "\\'") + "' dbname=db"
    for dsn in (url, kv):
        shown = redact_dsn(dsn)
        assert password not in shown and quote(password, safe="") not in shown and "***" in shown, shown
        assert "dbname=db" in shown or "/db" in shown
        for word in password.split():
            if len(word) >= 4:
                assert word not in shown
    err = f'connection to server failed: password authentication failed for user "u" ({password})'
    assert password not in redact_error(err, (url,)) and password not in redact_error(err, (kv,))


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_pasted_unencoded_into_a_url_is_refused_and_never_shown(password: str) -> None:
    """libpq reads ``u:p@ss:w0rd@h`` as password ``p`` on host ``ss``: refused before any connection,
    and neither the refusal nor the redacted DSN holds a fragment of the password."""
    url = f"postgresql://u:{password}@h:5432/db"
    shown = redact_dsn(url)
    fragments = [w for w in password.replace("@", " ").replace(":", " ").split() if len(w) >= 2]
    assert "***" in shown and not any(f in shown for f in fragments), shown
    with pytest.raises(ConfigError) as e:
        require_dsn(url, "DATABASE_URL")
    assert not any(f in str(e.value) for f in fragments if len(f) >= 4), str(e.value)


def test_classification() -> None:
    with pytest.raises(ConfigError, match="not a valid PostgreSQL DSN"):
        require_dsn("host=h pass word=x", "DATABASE_URL")
    with pytest.raises(ConfigError, match="is not set"):
        require_dsn("", "DATABASE_URL")
    e = psycopg.OperationalError('connection to server at "h" failed: FATAL:  password authentication failed')
    assert isinstance(classify(e), ConfigError)
    assert isinstance(classify(psycopg.OperationalError("connection refused")), TransientError)


# -- every command, real clusters ---------------------------------------------------------------------


def test_no_dsn_exits_4_in_every_command(env: Env) -> None:
    for args in (["replicate", "--once"], ["poll", "--once"], ["load", str(REPO / "tests"), "--once"],
                 ["run", "--once"]):
        code, out, _ = _cli(env, *args, DATALAKE_DATABASE_URL="", DATABASE_URL="")
        assert code == 4 and "Traceback" not in out and ("is not set" in out or "set DATA" in out), (args, out)


@pytest.mark.parametrize("password", PASSWORDS)
def test_wrong_password_exits_4_at_once_and_never_shows(env: Env, pw_role: str, password: str) -> None:
    for dsn in (_url(env, pw_role, password, env.wh_db), _kv(env, pw_role, password, env.wh_db)):
        for args in (["replicate", "--once"], ["run", "--once"]):
            code, out, seconds = _cli(env, *args, DATABASE_URL=dsn)
            assert code == 4, (args, dsn, out)
            assert seconds < 30 and out.count("retrying") == 0, out  # permanent: no retry loop
            assert "Traceback" not in out and "password authentication failed" in out, out
            for form in (password, quote(password, safe=""), *[w for w in password.split() if len(w) >= 4]):
                assert form not in out, (form, out)


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_wrong_lake_password_never_reaches_the_logs_or_paynorm_runs(env: Env, lake_pw_role: str,
                                                                      password: str) -> None:
    """URL (encoded, and with the password pasted unencoded) and key=value forms: the output and
    the error stored in paynorm.runs carry no fragment of the password."""
    host = f"127.0.0.1:{env.lake.port}"
    dsns = [f"postgresql://{lake_pw_role}:{quote(password, safe='')}@{host}/{env.lake_db}",
            f"postgresql://{lake_pw_role}:{password}@{host}/{env.lake_db}",
            _kv(env, lake_pw_role, password, env.lake_db).replace(f"port={env.wh.port}", f"port={env.lake.port}")]
    forms = {password, quote(password, safe=""), *[w for w in password.replace("@", " ").replace(":", " ").split()
                                                  if len(w) >= 4]}
    with env.wh_conn() as conn:
        conn.execute("create schema if not exists paynorm")
        before = conn.execute("select coalesce(max(run_id), 0) from paynorm.runs").fetchone()[0] \
            if conn.execute("select to_regclass('paynorm.runs')").fetchone()[0] else 0
    for dsn in dsns:
        code, out, seconds = _cli(env, "run", "--once", "--retry-for", "2", DATALAKE_DATABASE_URL=dsn)
        assert code in (1, 4) and "Traceback" not in out and seconds < 60, (dsn, out)
        for form in forms:
            assert form not in out, (form, out)
    with env.wh_conn() as conn:
        stored = [r[0] or "" for r in conn.execute(
            "select coalesce(error, '') || ' ' || coalesce(stages::text, '') from paynorm.runs where run_id > %s",
            (before,))]
    # a DSN libpq cannot read (an unencoded % or @ in a URL) fails before the cycle is recorded
    assert stored and all(stored), stored
    for text in stored:
        for form in forms:
            assert form not in text, (form, text)


def test_unknown_role_and_database_exit_4(env: Env) -> None:
    bad_role = env.lake_dsn.replace("lake_reader@", "nobody_here@")
    code, out, seconds = _cli(env, "replicate", "--once", DATALAKE_DATABASE_URL=bad_role)
    assert code == 4 and 'role "nobody_here" does not exist' in out and seconds < 30, out
    code, out, _ = _cli(env, "poll", "--once", DATALAKE_DATABASE_URL=bad_role)
    assert code == 4 and "Traceback" not in out, out
    bad_db = env.wh_dsn.rsplit("/", 1)[0] + "/no_such_db"
    code, out, _ = _cli(env, "replicate", "--once", DATABASE_URL=bad_db)
    assert code == 4 and 'database "no_such_db" does not exist' in out, out


def test_unreachable_lake_retries_to_the_deadline_then_exits_1(env: Env) -> None:
    down = env.lake_dsn.replace(f":{env.lake.port}/", ":9/")
    code, out, seconds = _cli(env, "replicate", "--once", "--retry-for", "3", DATALAKE_DATABASE_URL=down)
    assert code == 1 and "retrying" in out and "gave up after retrying" in out, out
    assert seconds < 40, seconds


def test_missing_privilege_and_missing_table_exit_4(env: Env) -> None:
    with env.lake_conn() as lake:
        insert_rows(lake, 3)
        lake.execute("revoke select on public.raw_transactions from lake_reader")
    try:
        code, out, _ = _cli(env, "replicate", "--once")
        assert code == 4 and "permission denied" in out and "Traceback" not in out, out
    finally:
        with env.lake_conn() as lake:
            lake.execute("grant select on public.raw_transactions to lake_reader")
    code, out, _ = _cli(env, "replicate", "--once", PAYNORM_LAKE_TABLE="public.no_such_table")
    assert code == 4 and "no_such_table" in out and "Traceback" not in out, out
