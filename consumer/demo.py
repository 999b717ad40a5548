"""A realistic generated lake for `make demo` and the benchmarks (`paynorm demo --generate N`).

Payload templates are the built-in rules' own fixtures (mappings/fixtures: one source of
truth for "what a provider sends"), varied per record (ids, amounts, merchants, times) and drawn
with a realistic outcome mix. Three shapes no rule knows (one JSON, one XML, one CSV) and a few
broken payloads are mixed in, so the LLM step and the quarantine have something to show.
"""

from __future__ import annotations

import io
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import psycopg

from .jsonutil import dumps_exact, loads_exact
from .resources import mappings_dir
from .samples import MERCHANTS as BRIEF_MERCHANTS

FIXTURES = mappings_dir() / "fixtures"

MERCHANTS = BRIEF_MERCHANTS + [
    {"id": "5b0c3f7e-1c55-4a4e-9a0e-3f1d2c4b5a61", "name": "Rappi", "country": "CO"},
    {"id": "8e2d4c6a-7b19-4f3e-8d2c-1a0b9c8d7e6f", "name": "Mercado Central", "country": "MX"},
    {"id": "c4a1e2b3-5d6f-4a7b-8c9d-0e1f2a3b4c5d", "name": "Loja Azul", "country": "BR"},
    {"id": "1f2e3d4c-5b6a-4978-8a6b-5c4d3e2f1a0b", "name": "Tienda Sur", "country": "CL"},
]

# Share of records per outcome: most payments are approved, a realistic tail is not.
OUTCOME_WEIGHTS = {"approved": 70, "declined": 18, "pending": 5, "error": 3, "cancelled": 2, "expired": 1,
                   "quarantine": 1, "pending_llm": 0}
UNKNOWN_SHARE = 0.03  # records in shapes no built-in rule knows
BROKEN_SHARE = 0.004  # payloads that cannot be decoded

_AMOUNT_KEYS = re.compile(r"^(amt|amount|value|total|transaction_amount|gross|mc_gross|ds_amount|totalamount|"
                          r"amount_in_cents|amountincents|price)$", re.I)
_ID_KEYS = re.compile(r"^(id|pspreference|transaction_?id|transactionid|reference|ds_order|order_?id|txn_id)$", re.I)


@dataclass(frozen=True)
class Template:
    rule: str
    status: str
    raw: Any


def load_templates(directory: Path = FIXTURES) -> list[Template]:
    out = []
    for path in sorted(directory.glob("*.json")):
        fx = loads_exact(path.read_text())
        exp = fx.get("expected") or {}
        status = exp.get("status") or ("quarantine" if exp.get("outcome") == "quarantine" else "pending_llm")
        out.append(Template(fx.get("rule") or path.stem.split("__")[0], status, fx["raw"]))
    if not out:
        raise FileNotFoundError(f"no payload templates under {directory} (run from a paynorm checkout)")
    return out


def _vary(obj: Any, rnd: random.Random, factor: Decimal, key: str = "") -> Any:
    """Same structure and types; amounts scaled (same number of decimals), ids made unique."""
    if isinstance(obj, dict):
        return {k: _vary(v, rnd, factor, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_vary(v, rnd, factor, key) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if _AMOUNT_KEYS.match(key):
        if isinstance(obj, int) and obj > 0:
            return max(1, int(obj * factor))
        if isinstance(obj, Decimal) and obj > 0:
            return (obj * factor).quantize(obj) if obj.as_tuple().exponent < 0 else Decimal(int(obj * factor))
        if isinstance(obj, str) and re.fullmatch(r"\d+(\.\d+)?", obj):
            d = Decimal(obj)
            return str((d * factor).quantize(d) if "." in obj else int(d * factor) or 1)
    if _ID_KEYS.match(key) and isinstance(obj, str) and len(obj) >= 4:
        return obj[: max(4, len(obj) - 8)] + f"{rnd.getrandbits(32):08x}"
    if _ID_KEYS.match(key) and isinstance(obj, int) and obj > 1000:
        return rnd.randint(10**9, 10**10)
    return obj


def _unknown(kind: int, rnd: random.Random, amount: Decimal, ok: bool, when: datetime) -> Any:
    ref = f"{rnd.getrandbits(40):010x}"
    if kind == 0:  # JSON: a gateway nobody wrote a rule for
        return {"gateway": "acmepay", "txn": {"ref": ref, "total_cents": int(amount * 100), "ccy": "BRL",
                                               "result": "OK" if ok else "KO", "reason": None if ok else "FUNDS",
                                               "ts": int(when.timestamp())}}
    if kind == 1:  # XML
        outcome = "ACCEPTED" if ok else "REJECTED"
        return {"type": "XML_BLOB", "content": f'<PaymentResult><Ref>{ref}</Ref><Amount currency="MXN">{amount}'
                                               f"</Amount><Outcome>{outcome}</Outcome><When>{when:%Y-%m-%dT%H:%M:%SZ}"
                                               "</When></PaymentResult>"}
    return (f"order_ref,charged,currency_code,result_text\n{ref},{amount},COP,"  # CSV
            f"{'approved' if ok else 'rejected'}\n")


BROKEN = [
    "<Tx><Val>12.50</Val><Stat>APPROVED",  # unterminated XML
    "id,amount,status\n1,10.00\n",  # ragged CSV
    '{"amount": 10.00, "status": ',  # truncated JSON text
]


def generate_records(n: int, *, seed: int = 7, days: int = 7, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """``n`` lake records (the lake's envelope), reproducible for a seed."""
    rnd = random.Random(seed)
    templates = load_templates()
    by_status: dict[str, list[Template]] = {}
    for t in templates:
        by_status.setdefault(t.status, []).append(t)
    outcomes = [s for s in OUTCOME_WEIGHTS if by_status.get(s) and OUTCOME_WEIGHTS[s]]
    weights = [OUTCOME_WEIGHTS[s] for s in outcomes]
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    for i in range(n):
        when = now - timedelta(seconds=rnd.randrange(days * 86400))
        r = rnd.random()
        if r < BROKEN_SHARE:
            data: Any = rnd.choice(BROKEN)
        elif r < BROKEN_SHARE + UNKNOWN_SHARE:
            amount = Decimal(rnd.randint(500, 50000)) / 100
            data = _unknown(i % 3, rnd, amount, rnd.random() < 0.8, when)
        else:
            template = rnd.choice(by_status[rnd.choices(outcomes, weights)[0]])
            factor = Decimal(rnd.randint(20, 400)) / 100
            data = _vary(template.raw, rnd, factor)
        yield {"id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)), "data": data,
               "merchant": rnd.choice(MERCHANTS), "transactional_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
               "created_at": when.isoformat()}


def insert_records(conn: psycopg.Connection, records: Iterator[dict[str, Any]], *, table: str = "public.raw_transactions",
                   chunk: int = 5000) -> int:
    """COPY records into the lake table in transactions of ``chunk`` rows; rows inserted."""
    schema, _, name = table.rpartition(".")
    ident = psycopg.sql.Identifier(schema or "public", name)
    # COPY into a staging table, then insert what is new: the same seed twice inserts nothing twice.
    conn.execute("create temp table if not exists _paynorm_demo (id uuid, data jsonb, merchant jsonb,"
                 " transactional_id uuid, created_at timestamptz)")
    insert_sql = psycopg.sql.SQL(
        "insert into {} (id, data, merchant, transactional_id, created_at)"
        " select id, data, merchant, transactional_id, created_at from _paynorm_demo on conflict (id) do nothing"
    ).format(ident)
    total = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal total
        with conn.transaction():
            with conn.cursor() as cur:
                with cur.copy("copy _paynorm_demo from stdin") as copy:
                    for r in batch:
                        copy.write_row((r["id"], dumps_exact(r["data"]), json.dumps(r["merchant"]),
                                        r["transactional_id"], r["created_at"]))
                total += cur.execute(insert_sql).rowcount
                cur.execute("truncate _paynorm_demo")
        batch.clear()

    for rec in records:
        batch.append(rec)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return total


def write_jsonl(records: Iterator[dict[str, Any]], out: io.TextIOBase) -> int:
    n = 0
    for r in records:
        out.write(dumps_exact(r) + "\n")
        n += 1
    return n
