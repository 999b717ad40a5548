"""`paynorm status`: where the consumer stands, from the warehouse and (when reachable) the lake."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from . import lake as lakemod
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
        lines.append(f"lag             {_human_bytes(slot['lag_bytes'])}"
                     + (f", {lag_s} s since the last applied commit" if lag_s else ", caught up"))
        lines.append(f"WAL retained    {_human_bytes(slot['retained_bytes'])}")
    landing = info.get("landing")
    if landing:
        fmts = ", ".join(f"{k} {v:,}" for k, v in landing["by_format"].items()) or "-"
        lines.append(f"landed rows     {landing['rows']:,} ({landing['live']:,} live, {landing['deleted']:,} deleted,"
                     f" {landing['decode_errors']:,} with decode errors)")
        lines.append(f"formats         {fmts}")
        lines.append(f"last landed     {landing['last_loaded_at'] or '-'}")
    return "\n".join(lines)
