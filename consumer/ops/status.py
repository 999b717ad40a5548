"""Where the warehouse stands, per source: the CDC slots it consumes (position, lag, snapshot), the
poll watermarks, the files loaded and failed, the layers, the LLM spend and the last cycles.

One function, :func:`collect`, reads it all as plain data (``paynorm status --json`` and the
metrics refresher use it); :func:`render` turns it into the text ``paynorm status`` prints.
Every query runs under a statement and lock timeout, so a locked table makes status answer late
and say what it could not read, never hang.

Lag that means lag: "seconds behind" is the age of the oldest committed lake change not yet
applied, 0 when every committed change is in the warehouse (an idle table on a busy instance
included). When nobody streams the slot, it is read from the slot itself (a peek, nothing
consumed); while a consumer streams it, from what that consumer last published in
``paynorm.replication_state`` (``behind_since``, ``lag_checked_at``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import conninfo

from ..settings import Settings
from ..sources.postgres import lake as lakemod
from .progress import human_bytes

__all__ = ["collect", "render", "STALE_REPORT_SECONDS"]

log = logging.getLogger(__name__)

#: A streaming consumer publishes its lag every status interval (10 s); older than this, it is not
#: believed (the consumer may be stuck) and the lag is unknown.
STALE_REPORT_SECONDS = 60.0


def _bounded(dsn: str, timeout: float, *, lake: bool = False) -> psycopg.Connection:
    """A connection whose every statement gives up after ``timeout`` (and never waits that long
    for a lock): status and metrics must answer, even about a locked table."""
    params = conninfo.conninfo_to_dict(lakemod.lake_conninfo(dsn) if lake else dsn)
    ms = int(timeout * 1000)
    params["options"] = (f"{params.get('options') or ''} -c statement_timeout={ms}"
                         f" -c lock_timeout={max(ms // 2, 1)} -c idle_in_transaction_session_timeout={ms * 2}").strip()
    params["connect_timeout"] = str(max(int(timeout), 2))
    params.setdefault("application_name", "paynorm-status")
    return psycopg.connect(conninfo.make_conninfo("", **params), autocommit=True)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def collect(settings: Settings, *, timeout: float = 10.0) -> dict[str, Any]:
    """Everything status shows, as plain data. Raises psycopg.Error only when the warehouse cannot
    be reached at all; a part that times out is reported in ``errors`` and left out."""
    info: dict[str, Any] = {"collected_at": datetime.now(timezone.utc), "warehouse_up": False, "errors": []}
    with _bounded(settings.warehouse_dsn, timeout) as conn:
        info["warehouse_up"] = True
        if not _exists(conn, "paynorm.replication_state"):
            info["initialized"] = False
            return info
        info["initialized"] = True
        for key, part in (("cdc", _cdc_state), ("poll", _poll_state), ("files", _files_state),
                          ("landing", _landing), ("layers", _layers), ("llm", _llm), ("runs", _runs)):
            try:
                info[key] = part(conn)
            except psycopg.Error as e:
                info["errors"].append(f"{key}: {_first_line(e)}")
                info[key] = None
    if settings.lake_dsn:
        _lake(settings, info, timeout)
    for slot in info.get("cdc") or []:
        slot["lag"] = _lag(slot, info["collected_at"])
    return info


# -- the warehouse ---------------------------------------------------------------------------------


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]  # type: ignore[index]


def _dicts(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _cdc_state(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """One entry per slot this warehouse consumes (never another consumer's slot)."""
    return _dicts(conn.execute(
        "select slot_name, lake_table, applied_lsn::text, confirmed_lsn::text, snapshot_done, snapshot_rows,"
        " snapshot_total, rows_applied, last_commit_at, behind_since, lag_checked_at, updated_at"
        " from paynorm.replication_state order by slot_name"))


def _poll_state(conn: psycopg.Connection) -> list[dict[str, Any]]:
    if not _exists(conn, "paynorm.poll_state"):
        return []
    return _dicts(conn.execute("select lake_table, watermark, rows_landed, polls, updated_at"
                               " from paynorm.poll_state order by lake_table"))


def _files_state(conn: psycopg.Connection) -> dict[str, Any]:
    by_status = {"processing": 0, "completed": 0, "failed": 0}
    by_status.update(dict(conn.execute("select status, count(*) from paynorm.processed_files group by 1").fetchall()))
    failed = _dicts(conn.execute(
        "select key, error_code, error, attempts, finished_at from paynorm.processed_files where status = 'failed'"
        " order by finished_at desc nulls last limit 5"))
    last = conn.execute("select max(finished_at) from paynorm.processed_files").fetchone()
    return {"by_status": by_status, "failed": failed, "last_finished_at": last[0] if last else None}


def _landing(conn: psycopg.Connection) -> dict[str, Any]:
    cur = conn.execute(
        "select count(*) as rows, count(*) filter (where not deleted) as live, count(*) filter (where deleted) as deleted,"
        " count(*) filter (where decode_error is not null and not deleted) as decode_errors,"
        " max(loaded_at) as last_loaded_at from raw.lake_transactions")
    landing = _dicts(cur)[0]
    landing["by_format"] = dict(conn.execute(
        "select payload_format, count(*) from raw.lake_transactions where not deleted"
        " group by 1 order by 2 desc").fetchall())
    return landing


def _layers(conn: psycopg.Connection) -> dict[str, Any]:
    """Rows per layer of the marts (when dbt has built them)."""
    if not _exists(conn, "paynorm_marts.normalized_payment_events"):
        return {}
    events = dict(conn.execute("select status, count(*) from paynorm_marts.normalized_payment_events"
                               " group by 1 order by 2 desc").fetchall())
    quarantine = dict(conn.execute("select reason, count(*) from paynorm_marts.normalization_quarantine"
                                   " group by 1 order by 2 desc").fetchall())
    pending = conn.execute("select count(*), count(distinct shape_key) from paynorm_marts.normalization_pending"
                           ).fetchone()
    assert pending is not None
    return {"events": sum(events.values()), "events_by_status": events, "quarantine": sum(quarantine.values()),
            "quarantine_by_reason": quarantine, "pending": pending[0], "pending_shapes": pending[1]}


def _llm(conn: psycopg.Connection) -> dict[str, Any]:
    """LLM calls and tokens of the last 7 days."""
    if not _exists(conn, "paynorm.llm_calls"):
        return {}
    row = conn.execute("select count(*), coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0)"
                       " from paynorm.llm_calls where called_at > now() - interval '7 days'").fetchone()
    assert row is not None
    by_outcome = dict(conn.execute("select outcome, count(*) from paynorm.llm_calls"
                                   " where called_at > now() - interval '7 days' group by 1").fetchall())
    return {"calls": row[0], "tokens_in": int(row[1]), "tokens_out": int(row[2]), "by_outcome": by_outcome}


def _runs(conn: psycopg.Connection) -> dict[str, Any]:
    """The last cycles, and the last successful one (the stale-cycle alert's clock)."""
    if not _exists(conn, "paynorm.runs"):
        return {"last": [], "last_ok_at": None, "last_failed": None}
    last = _dicts(conn.execute("select run_id, source, started_at, ended_at, outcome, error from paynorm.runs"
                               " order by run_id desc limit 5"))
    ok = conn.execute("select max(ended_at) from paynorm.runs where outcome = 'ok'").fetchone()
    ended = conn.execute("select outcome from paynorm.runs where ended_at is not null"
                         " order by run_id desc limit 1").fetchone()
    return {"last": last, "last_ok_at": ok[0] if ok else None,
            "last_failed": None if ended is None else ended[0] == "failed"}


# -- the lake ----------------------------------------------------------------------------------------


def _lake(settings: Settings, info: dict[str, Any], timeout: float) -> None:
    """The lake's side of each slot this warehouse consumes: pg_replication_slots, and when nobody
    streams the slot, the oldest change it still holds for us."""
    try:
        with _bounded(settings.lake_dsn, timeout, lake=True) as lconn:
            info["lake_up"] = True
            info["lake_lsn"] = lakemod.current_lsn(lconn)
            for slot in info.get("cdc") or []:
                slot["lake_slot"] = lakemod.slot_info(lconn, slot["slot_name"])
                if slot["lake_slot"] and not slot["lake_slot"]["active"] and slot["lake_slot"]["wal_status"] != "lost":
                    try:
                        schema, name = lakemod.split_table_name(slot["lake_table"])
                        slot["oldest_unconfirmed_change"] = lakemod.oldest_unconfirmed_change(
                            lconn, slot["slot_name"], schema, name)
                        slot["peeked"] = True
                    except psycopg.Error as e:  # streamed meanwhile, no privilege, timed out
                        slot["peek_error"] = _first_line(e)
    except psycopg.Error as e:
        info["lake_up"] = False
        info["lake_error"] = _first_line(e)


def _lag(slot: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Seconds behind for one slot, with how it was known: ``seconds`` is None when unknown."""
    lake_slot = slot.get("lake_slot")
    if lake_slot is None and "lake_slot" in slot:
        return {"seconds": None, "caught_up": None, "basis": "slot missing on the lake"}
    if slot.get("peeked"):
        oldest = slot.get("oldest_unconfirmed_change")
        if oldest is None:
            return {"seconds": 0.0, "caught_up": True, "basis": "slot peeked: no change of ours unconfirmed"}
        return {"seconds": max((now - oldest).total_seconds(), 0.0), "caught_up": False,
                "basis": "slot peeked: oldest unconfirmed change", "oldest_change_at": oldest}
    checked = slot.get("lag_checked_at")
    if checked is None or (now - checked).total_seconds() > STALE_REPORT_SECONDS:
        reason = slot.get("peek_error") or "the consumer has not reported its lag recently"
        return {"seconds": None, "caught_up": None, "basis": f"unknown: {reason}", "reported_at": checked}
    behind = slot.get("behind_since")
    if behind is None:
        return {"seconds": 0.0, "caught_up": True, "basis": "reported by the streaming consumer", "reported_at": checked}
    return {"seconds": max((now - behind).total_seconds(), 0.0), "caught_up": False,
            "basis": "reported by the streaming consumer", "reported_at": checked, "oldest_change_at": behind}


# -- text ----------------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    return "?" if n is None else human_bytes(n)  # a lost slot has no restart_lsn


def _human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _lag_line(lag: dict[str, Any]) -> str:
    if lag["seconds"] is None:
        return lag["basis"]
    if lag["caught_up"]:
        return "caught up (0 s behind)"
    return f"{_human_seconds(lag['seconds'])} behind (oldest unapplied change committed {lag['oldest_change_at']:%Y-%m-%d %H:%M:%S%z})"


def render(info: dict[str, Any]) -> str:
    lines: list[str] = []
    if not info.get("initialized"):
        return "warehouse       not initialized (run `paynorm init` or `paynorm run --once`)"
    if "lake_error" in info:
        lines.append(f"lake            unreachable: {info['lake_error']}")
    for slot in info.get("cdc") or []:
        lines.append(f"slot            {slot['slot_name']} (CDC from {slot['lake_table']})")
        snap = "done" if slot["snapshot_done"] else "in progress"
        total = f"/{slot['snapshot_total']:,}" if slot["snapshot_total"] else ""
        lines.append(f"  snapshot      {snap}, {slot['snapshot_rows']:,}{total} rows")
        lines.append(f"  applied       to {slot['applied_lsn']} (end of the last lake transaction landed); "
                     f"confirmed to the lake {slot['confirmed_lsn'] or '-'}")
        lines.append(f"  rows applied  {slot['rows_applied']:,} from the stream, last lake commit "
                     f"{slot['last_commit_at'] or '-'}")
        lake_slot = slot.get("lake_slot")
        if lake_slot is None and "lake_slot" in slot:
            lines.append("  lake slot     MISSING (run `paynorm replicate --resnapshot`)")
        elif lake_slot:
            lines.append(f"  lake slot     {'active' if lake_slot['active'] else 'inactive'}, wal_status "
                         f"{lake_slot['wal_status']}, confirmed {lake_slot['confirmed_flush_lsn']}")
            lines.append(f"  WAL           {_bytes(lake_slot['lag_bytes'])} of instance WAL past the confirmed"
                         f" position, {_bytes(lake_slot['retained_bytes'])} retained")
        lines.append(f"  lag           {_lag_line(slot['lag'])}")
    for poll in info.get("poll") or []:
        lines.append(f"poll            {poll['lake_table']}: watermark {poll['watermark'] or '-'}, "
                     f"{poll['rows_landed']:,} rows landed in {poll['polls']:,} passes, last {poll['updated_at']:%Y-%m-%d %H:%M:%S}")
    files = info.get("files")
    if files and any(files["by_status"].values()):
        counts = ", ".join(f"{v:,} {k}" for k, v in files["by_status"].items())
        lines.append(f"files           {counts}; last finished {files['last_finished_at'] or '-'}")
        for f in files["failed"]:
            lines.append(f"  failed        {f['key']}: {f['error_code'] or ''} {(f['error'] or '')[:100]}")
    if not (info.get("cdc") or info.get("poll") or (files and any(files["by_status"].values()))):
        lines.append("sources         nothing landed yet")
    landing = info.get("landing")
    if landing:
        fmts = ", ".join(f"{k} {v:,}" for k, v in landing["by_format"].items()) or "-"
        lines.append(f"landed rows     {landing['rows']:,} ({landing['live']:,} live, {landing['deleted']:,} deleted,"
                     f" {landing['decode_errors']:,} with decode errors)")
        lines.append(f"formats         {fmts}")
        lines.append(f"last landed     {landing['last_loaded_at'] or '-'}")
    layers = info.get("layers")
    if layers:
        statuses = ", ".join(f"{k} {v:,}" for k, v in layers["events_by_status"].items()) or "-"
        lines.append(f"events          {layers['events']:,} ({statuses})")
        reasons = ", ".join(f"{k} {v:,}" for k, v in layers["quarantine_by_reason"].items()) or "-"
        lines.append(f"quarantine      {layers['quarantine']:,} ({reasons})")
        lines.append(f"pending LLM     {layers['pending']:,} rows in {layers['pending_shapes']:,} shapes")
    llm = info.get("llm")
    if llm:
        lines.append(f"LLM this week   {llm['calls']:,} calls, {llm['tokens_in']:,} tokens in, "
                     f"{llm['tokens_out']:,} out")
    runs = info.get("runs") or {}
    for run in runs.get("last") or []:
        took = f"{(run['ended_at'] - run['started_at']).total_seconds():.1f}s" if run["ended_at"] else "running"
        lines.append(f"run {run['run_id']:<11} {run['started_at']:%Y-%m-%d %H:%M:%S} {run['source']} {run['outcome']}"
                     f" {took}{(': ' + run['error'][:80]) if run['error'] else ''}")
    for error in info.get("errors") or []:
        lines.append(f"not read        {error}")
    return "\n".join(lines)
