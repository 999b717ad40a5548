"""`paynorm status`: where the consumer stands, from the warehouse and (when reachable) the lake."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from .sources.postgres import lake as lakemod
from .settings import Settings

log = logging.getLogger(__name__)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"


def collect(settings: Settings) -> dict[str, Any]:
    """Everything status shows, as plain data (for --json and for the metrics exporter)."""
    info: dict[str, Any] = {"slot": settings.slot}
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        if conn.execute("select to_regclass('paynorm.replication_state')").fetchone()[0] is None:  # type: ignore[index]
            info["state"] = None
            info["landing"] = None
            return info
        row = conn.execute(
            "select lake_table, applied_lsn::text, confirmed_lsn::text, snapshot_done, snapshot_rows, snapshot_total,"
            " rows_applied, last_commit_at, updated_at, extract(epoch from now() - last_commit_at)::bigint"
            " from paynorm.replication_state where slot_name = %s", (settings.slot,)).fetchone()
        if row:
            keys = ["lake_table", "applied_lsn", "confirmed_lsn", "snapshot_done", "snapshot_rows", "snapshot_total",
                    "rows_applied", "last_commit_at", "updated_at", "seconds_since_last_commit"]
            info["state"] = dict(zip(keys, row))
        else:
            info["state"] = None
        landing = conn.execute(
            "select count(*), count(*) filter (where not deleted), count(*) filter (where deleted),"
            " count(*) filter (where decode_error is not null and not deleted), max(loaded_at)"
            " from raw.lake_transactions").fetchone()
        assert landing is not None
        info["landing"] = dict(zip(["rows", "live", "deleted", "decode_errors", "last_loaded_at"], landing))
        info["landing"]["by_format"] = dict(conn.execute(
            "select payload_format, count(*) from raw.lake_transactions where not deleted"
            " group by 1 order by 2 desc").fetchall())
        info["layers"] = _layers(conn)
        info["llm"] = _llm(conn)
        info["runs"] = _runs(conn)
    if settings.lake_dsn:
        try:
            with lakemod.connect(settings.lake_dsn) as lconn:
                slot = lakemod.slot_info(lconn, settings.slot)
                info["lake_lsn"] = lakemod.current_lsn(lconn)
            info["lake_slot"] = slot
        except psycopg.Error as e:
            info["lake_error"] = str(e).strip().splitlines()[0]
    state, slot = info.get("state"), info.get("lake_slot")
    if state and slot:
        caught_up = (slot["lag_bytes"] or 0) <= 0
        info["lag_seconds"] = 0 if caught_up else state["seconds_since_last_commit"]
    return info


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]  # type: ignore[index]


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


def _runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    if not _exists(conn, "paynorm.runs"):
        return []
    rows = conn.execute("select run_id, source, started_at, ended_at, outcome, error from paynorm.runs"
                        " order by run_id desc limit 5").fetchall()
    return [dict(zip(["run_id", "source", "started_at", "ended_at", "outcome", "error"], r)) for r in rows]


def render(info: dict[str, Any]) -> str:
    lines = [f"slot            {info['slot']}"]
    state = info.get("state")
    if state is None:
        lines.append("state           none yet (run `paynorm replicate`)")
    else:
        lines.append(f"lake table      {state['lake_table']}")
        lines.append(f"applied up to   {state['applied_lsn']}  (confirmed to lake {state['confirmed_lsn'] or '-'})")
        snap = "done" if state["snapshot_done"] else "in progress"
        total = f"/{state['snapshot_total']:,}" if state["snapshot_total"] else ""
        lines.append(f"snapshot        {snap}, {state['snapshot_rows']:,}{total} rows")
        lines.append(f"rows applied    {state['rows_applied']:,} from the stream")
        lines.append(f"last commit     {state['last_commit_at'] or '-'}")
    slot = info.get("lake_slot")
    if "lake_error" in info:
        lines.append(f"lake            unreachable: {info['lake_error']}")
    elif slot is None and "lake_lsn" in info:
        lines.append("lake slot       MISSING (run `paynorm replicate --resnapshot`)")
    elif slot:
        lines.append(f"lake position   {info['lake_lsn']}, slot {slot['wal_status']}, "
                     f"{'active' if slot['active'] else 'inactive'}")
        lag_s = info.get("lag_seconds")
        lines.append(f"lag             {_human_bytes(slot['lag_bytes'])} of lake WAL past the confirmed position"
                     + (f", {lag_s} s since the last applied commit" if lag_s else ""))
        lines.append(f"WAL retained    {_human_bytes(slot['retained_bytes'])}")
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
    for run in info.get("runs") or []:
        took = f"{(run['ended_at'] - run['started_at']).total_seconds():.1f}s" if run["ended_at"] else "running"
        lines.append(f"run {run['run_id']:<11} {run['started_at']:%Y-%m-%d %H:%M:%S} {run['source']} {run['outcome']}"
                     f" {took}{(': ' + run['error'][:80]) if run['error'] else ''}")
    return "\n".join(lines)
