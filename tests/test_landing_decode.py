"""Hostile and broken payloads travel through the real consumer: each lands visibly, none stops it."""

from __future__ import annotations

import json

import pytest

from consumer.sources.postgres.replicate import EXIT_OK, replicate

from .conftest import Env

BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
        + "]><lolz>&lol9;</lolz>")
XXE = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>'

# name -> (json text stored in the lake's json column, expected payload_format, substring of decode_error or None)
CASES = {
    "billion_laughs": (json.dumps(BOMB), "xml", "DOCTYPE"),
    "xxe": (json.dumps({"type": "XML_BLOB", "content": XXE}), "xml", "DOCTYPE"),
    "unterminated_xml": (json.dumps("<Tx><Val>12.5</Val><Stat>OK"), "xml", "XML"),
    "nul_byte": ('{"status": "approved", "note": "a\\u0000b"}', "json", "NUL"),
    "ten_mb_text": (json.dumps("x" * (10 * 1024 * 1024)), "text", "too large"),
    "ragged_csv": (json.dumps("id,amount,status\n1,10.00,ok\n2,5.00\n"), "csv", "CSV"),
    "deep_json": ("[" * 3000 + "]" * 3000, "json", "nesting"),
    "fine_xml": (json.dumps("<Tx><Val>129.97</Val><Stat>APPROVED</Stat></Tx>"), "xml", None),
    "fine_nvp": (json.dumps("response=2&responsetext=DECLINE&amount=10.00"), "nvp", None),
}


@pytest.mark.parametrize("transport", ["stream", "sql"])
def test_hostile_payloads_land_with_reasons(env: Env, transport: str) -> None:
    with env.lake_conn() as lake:
        lake.execute("create table public.hostile (id text primary key, data json)")  # json keeps \\u0000
        lake.execute("grant select on public.hostile to lake_reader")
        for name, (text, _, _) in CASES.items():
            lake.execute("insert into public.hostile values (%s, %s::json)", (f"snap_{name}", text))
    settings = dict(table="public.hostile", transport=transport, batch_size=3)
    assert replicate(env.settings(**settings), once=True).exit_code == EXIT_OK  # snapshot path
    with env.lake_conn() as lake:
        for name, (text, _, _) in CASES.items():
            lake.execute("insert into public.hostile values (%s, %s::json)", (f"cdc_{name}", text))
    assert replicate(env.settings(**settings), once=True).exit_code == EXIT_OK  # stream path
    with env.wh_conn() as wh:
        got = {r[0]: r[1:] for r in wh.execute(
            "select lake_key, payload_format, decode_error, payload is not null, shape_key is not null"
            " from raw.lake_transactions")}
        passwd = wh.execute("select count(*) from raw.lake_transactions where row_data::text like '%%root:%%'"
                            " or payload::text like '%%root:%%'").fetchone()[0]
    assert passwd == 0
    for path in ("snap", "cdc"):
        for name, (_, fmt, err) in CASES.items():
            row = got[f"{path}_{name}"]
            assert row[0] == fmt, (path, name, row)
            if err is None:
                assert row[1] is None and row[2] and row[3], (path, name, row)
            else:
                assert row[1] and err.lower() in row[1].lower(), (path, name, row)
    assert got["cdc_nul_byte"][2], "the NUL row keeps its (cleaned) payload"
