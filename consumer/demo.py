"""A realistic generated lake for `make demo`, the benchmarks and the tests (`paynorm demo --generate N`).

The generator owns its payload templates (consumer/demo_templates/templates.json, package data): one
or more per payload shape the built-in rules know, written as the provider's text with placeholders
for what varies per record: ids (``{{pn:id:K}}``, unique per record and rule), times
(``{{pn:t:K}}``, rendered in the field's own format: ISO with its offset, epoch s/ms, compact,
dd/mm/yyyy, PayPal's "HH:MM:SS Mon D, YYYY PST") and the amount (``{{pn:amt}}``, kept in the
field's unit and number of decimals, so the currency's exponent holds). Each template records the
outcome its payload normalizes to, so a record's status is drawn first, per provider, with a
realistic approval rate, and its template second. Three shapes no rule knows (for the LLM step)
and a few broken payloads (for the quarantine) are mixed in.

Reproducible: ids, amounts and outcomes depend on the seed only; times on the seed, the window
(``days``) and a fixed ``anchor`` (never the clock), so a rerun upserts the same rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator

import psycopg

from .jsonutil import dumps_exact, loads_exact
from .samples import MERCHANTS as BRIEF_MERCHANTS

MERCHANTS = BRIEF_MERCHANTS + [
    {"id": "5b0c3f7e-1c55-4a4e-9a0e-3f1d2c4b5a61", "name": "Rappi", "country": "CO"},
    {"id": "8e2d4c6a-7b19-4f3e-8d2c-1a0b9c8d7e6f", "name": "Mercado Central", "country": "MX"},
    {"id": "c4a1e2b3-5d6f-4a7b-8c9d-0e1f2a3b4c5d", "name": "Loja Azul", "country": "BR"},
    {"id": "1f2e3d4c-5b6a-4978-8a6b-5c4d3e2f1a0b", "name": "Tienda Sur", "country": "CL"},
]

#: End of the generated window when none is given: fixed, so the same seed gives the same rows.
DEFAULT_ANCHOR = datetime(2026, 12, 1, tzinfo=timezone.utc)
DEFAULT_DAYS = 30

UNKNOWN_SHARE = 0.03  # records in shapes no built-in rule knows
BROKEN_SHARE = 0.004  # payloads that cannot be decoded
TEST_SHARE = 0.015  # sandbox events among the records of a provider that has test payloads
# Outcomes other than approved/declined, as shares of a provider's records.
TAIL = {"error": 0.025, "pending": 0.03, "cancelled": 0.008, "expired": 0.005}
QUARANTINE_SHARE = 0.003  # payloads a rule matches but cannot normalize (bad amount, unknown currency...)
# Payment attempts (the marts' macro paynorm_is_attempt): the approval rate is theirs.
ATTEMPT_TYPES = ("authorization", "sale", "unknown")
FOLLOWUP_SHARE = 0.2  # records that follow an attempt: captures, voids, refunds, chargebacks
REFUND_SHARE = 0.35  # of the follow-ups, where the provider has refund payloads
CHARGEBACK_SHARE = 0.03  # of the follow-ups, where the provider has chargeback payloads
COVERAGE_SHARE = 0.35  # while some rule has not been drawn yet, this share of records draws it
# Busier providers (traffic weight); the others get 1-4 from a hash of their name.
TRAFFIC = {"stripe": 12, "adyen": 10, "mercadopago": 9, "paypal": 8, "braintree": 6, "checkout": 6, "dlocal": 5,
           "ebanx": 4, "pagseguro": 4, "payu": 4, "razorpay": 4, "worldpay": 4, "mollie": 3, "cybersource": 3}
# Hour-of-day (UTC) and day-of-week (Mon=0) traffic shapes.
HOURLY = [0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.25, 0.45, 0.7, 0.9, 1.0, 1.05,
          1.1, 1.05, 1.0, 1.0, 1.05, 1.15, 1.25, 1.35, 1.3, 1.05, 0.75, 0.45]
WEEKDAY = [1.0, 0.98, 1.0, 1.02, 1.12, 0.92, 0.8]

_PLACEHOLDER = re.compile(r"\{\{pn:(id|t|amt)(?::(\d+))?\}\}")
_MIN_ID_SPACE = 10**10


@dataclass(frozen=True)
class Template:
    """A payload shape with placeholders and what its payload normalizes to."""

    name: str
    rule: str
    provider: str | None
    status: str
    event_type: str | None
    is_test: bool
    text: str
    ids: tuple[str, ...]
    times: tuple[dict[str, Any], ...]
    amount: dict[str, Any] | None
    source: str | None = None  # the lake row's `source` column, for rules that read it (row_match)
    tid: bool = False  # ids[0] is the transaction id the rule reads (else the payload has none to vary)


@lru_cache(maxsize=1)
def load_templates() -> tuple[Template, ...]:
    """The generator's templates, from the installed package (works from a wheel too)."""
    text = resources.files("consumer").joinpath("demo_templates/templates.json").read_text(encoding="utf-8")
    return tuple(Template(t["name"], t["rule"], t.get("provider"), t["status"], t.get("event_type"),
                          bool(t.get("is_test")), t["text"], tuple(t.get("ids") or ()), tuple(t.get("times") or ()),
                          t.get("amount"), t.get("source"), bool(t.get("tid"))) for t in json.loads(text))


def _h(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def approval_target(provider: str) -> float:
    """Share approved of approved+declined for a provider: 75-92 %, fixed per provider name."""
    return 0.75 + (_h("approval", provider) % 1000) / 1000 * 0.17


# -- rendering ------------------------------------------------------------------------------------

_CLASSES = {"n": "123456789", "d": "0123456789", "l": "abcdefghijklmnopqrstuvwxyz",
            "u": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "h": "0123456789abcdef", "H": "0123456789ABCDEF"}


@lru_cache(maxsize=4096)
def _id_pattern(orig: str) -> tuple[str, tuple[str, ...]]:
    """Kept prefix (``ch_``, ``ORD-``) and per-character classes of the varying part."""
    prefix = re.match(r"^(?:[A-Za-z]+[_\-])*(?:[A-Za-z]{2,}(?=\d))?", orig).group(0)  # type: ignore[union-attr]
    body = orig[len(prefix):]
    alnum = re.sub(r"[^0-9A-Za-z]", "", body)
    if re.fullmatch(r"[0-9a-f]*[a-f][0-9a-f]*", alnum) and re.search(r"\d", alnum):
        classes = ["h" if c.isalnum() else "=" + c for c in body]
    elif re.fullmatch(r"[0-9A-F]*[A-F][0-9A-F]*", alnum) and re.search(r"\d", alnum) and len(alnum) >= 8:
        classes = ["H" if c.isalnum() else "=" + c for c in body]
    else:
        classes = ["d" if c.isdigit() else "l" if c.islower() and c.isascii() else "u" if c.isupper() and c.isascii()
                   else "=" + c for c in body]
    if classes and all(c == "d" for c in classes):
        classes[0] = "n"  # no leading zero: the id may be a bare JSON number
    space = math.prod(len(_CLASSES[c]) for c in classes if c[0] != "=")
    while space < _MIN_ID_SPACE:
        lead = "n" if not classes or classes[0] in ("n", "d") else classes[0] if classes[0][0] != "=" else "d"
        if classes and classes[0] == "n":
            classes[0] = "d"
        classes.insert(0, lead)
        space = math.prod(len(_CLASSES[c]) for c in classes if c[0] != "=")
    return prefix, tuple(classes)


@lru_cache(maxsize=1024)
def _multiplier(space: int) -> int:
    """A multiplier coprime with ``space`` near its golden section: consecutive records get distant ids."""
    m = space * 6180339887498948482 // 10**19 | 1
    while math.gcd(m, space) != 1:
        m += 2
    return m


def render_id(orig: str, index: int, salt: int) -> str:
    """An id shaped like ``orig``, distinct for every ``index`` below the id space (same ``salt``):
    index -> index * m + salt (mod space) is one-to-one when m and the space are coprime."""
    prefix, classes = _id_pattern(orig)
    space = math.prod(len(_CLASSES[c]) for c in classes if c[0] != "=")
    v = (index * _multiplier(space) + salt) % space
    out = []
    for c in reversed(classes):
        if c[0] == "=":
            out.append(c[1:])
            continue
        alphabet = _CLASSES[c]
        v, r = divmod(v, len(alphabet))
        out.append(alphabet[r])
    return prefix + "".join(reversed(out))


_MON = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def render_time(spec: dict[str, Any], when: datetime) -> str:
    """``when`` shifted by the field's offset, in the field's own format."""
    dt = when + timedelta(seconds=spec.get("o", 0))
    k = spec["k"]
    if k == "epoch_s":
        return str(int(dt.timestamp()))
    if k == "epoch_ms":
        return str(int(dt.timestamp() * 1000))
    if k == "compact":
        return dt.strftime("%Y%m%d%H%M%S")
    if k == "date":
        return dt.strftime("%Y-%m-%d")
    if k == "iso":
        local = dt + timedelta(minutes=spec.get("off", 0))
        c, ds = spec["c"], spec["ds"]
        out = f"{local.year:04d}{ds}{local.month:02d}{ds}{local.day:02d}{spec['ts']}{local.hour:02d}{c}{local.minute:02d}"
        if spec.get("sec"):
            out += f"{c}{local.second:02d}"
            if spec.get("frac"):
                out += spec.get("fsep", ".") + f"{local.microsecond:06d}".ljust(spec["frac"], "0")[: spec["frac"]]
        return out + spec.get("tz", "")
    if k in ("dmy", "mdy"):
        a, b = (dt.day, dt.month) if k == "dmy" else (dt.month, dt.day)
        fmt = "{:02d}" if spec.get("pad") else "{}"
        s = spec["s"]
        out = f"{fmt.format(a)}{s}{fmt.format(b)}{s}{dt.year:04d}"
        if spec.get("time"):
            c = spec["c"]
            out += f"{spec['ts']}{dt.hour:02d}{c}{dt.minute:02d}" + (f"{c}{dt.second:02d}" if spec.get("sec") else "")
        return out
    if k == "paypal":
        local = dt + timedelta(hours=-8 if spec["tz"] == "PST" else -7)
        c, sp = spec["c"], spec["sp"]
        return (f"{local.hour:02d}{c}{local.minute:02d}{c}{local.second:02d}{sp}{_MON[local.month - 1]}{sp}"
                f"{local.day}{spec['comma']}{sp}{local.year}{sp}{spec['tz']}")
    raise ValueError(f"unknown time format {k!r}")


def render_amount(spec: dict[str, Any], rnd: random.Random) -> str:
    """A new amount in the field's unit: minor units, or major units with the field's decimals."""
    exp, d = int(spec["exp"]), int(spec["d"])
    factor = min(25.0, max(0.05, math.exp(rnd.gauss(0, 0.9))))
    minor = max(1, round(max(spec["orig_minor"], 1) * factor))
    # In the literal's own unit (its last digit); `step` keeps e.g. Stripe's ISK or Adyen's CLP whole.
    units = minor if spec["minor"] else round(Decimal(minor).scaleb(d - exp))
    step = int(spec.get("step", 1))
    units = max(step, round(units / step) * step)
    if spec["minor"] or not d:
        return str(units)
    text = f"{Decimal(units).scaleb(-d):f}"
    return text.replace(".", spec.get("sep", "."))


def render(template: Template, *, index: int, seed: int, when: datetime, rnd: random.Random) -> Any:
    """The template's payload for record ``index`` at ``when``."""
    def sub(m: re.Match[str]) -> str:
        kind, k = m.group(1), m.group(2)
        if kind == "id":
            return render_id(template.ids[int(k)], index, _h(seed, template.rule, k))
        if kind == "t":
            return render_time(template.times[int(k)], when)
        return render_amount(template.amount or {}, rnd)

    return loads_exact(_PLACEHOLDER.sub(sub, template.text))


# -- the lake -------------------------------------------------------------------------------------


def _unknown(kind: int, ref: str, amount: Decimal, ok: bool, when: datetime) -> Any:
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


class _Catalog:
    """Templates grouped by provider and outcome, with per-provider traffic weights."""

    def __init__(self, templates: tuple[Template, ...]) -> None:
        self.live: dict[str, dict[str, list[Template]]] = {}
        self.test: dict[str, list[Template]] = {}
        self.quarantine = [t for t in templates if t.status == "quarantine"]
        for t in templates:
            p = t.provider or t.rule
            if t.status == "quarantine":
                continue
            if t.is_test:
                self.test.setdefault(p, []).append(t)
            else:
                self.live.setdefault(p, {}).setdefault(t.status, []).append(t)
        self.providers = sorted(set(self.live) | set(self.test))
        self.weights = [TRAFFIC.get(p, 1 + _h("traffic", p) % 4) for p in self.providers]
        by_rule: dict[str, list[Template]] = {}
        for t in templates:
            by_rule.setdefault(t.rule, []).append(t)
        # One template per rule, for coverage: a live approved one when there is one.
        self.coverage = [min(ts, key=lambda t: (t.is_test, t.status != "approved", t.name))
                         for _, ts in sorted(by_rule.items())]

    def pick(self, provider: str, rnd: random.Random) -> Template:
        live = self.live.get(provider, {})
        if (self.test.get(provider) and rnd.random() < TEST_SHARE) or not live:
            return rnd.choice(self.test[provider])
        u = rnd.random()
        for status, share in TAIL.items():
            if u < share:
                if live.get(status):
                    return rnd.choice(live[status])
                break
            u -= share
        approved, declined = live.get("approved", []), live.get("declined", [])
        attempts_ok = [t for t in approved if t.event_type in ATTEMPT_TYPES]
        attempts_ko = [t for t in declined if t.event_type in ATTEMPT_TYPES]
        follow_ok = [t for t in approved if t.event_type not in ATTEMPT_TYPES]
        follow_ko = [t for t in declined if t.event_type not in ATTEMPT_TYPES]
        if follow_ok and (rnd.random() < FOLLOWUP_SHARE or not (attempts_ok or attempts_ko)):
            if follow_ko and rnd.random() < 0.05:
                return rnd.choice(follow_ko)
            chargebacks = [t for t in follow_ok if t.event_type == "chargeback"]
            refunds = [t for t in follow_ok if t.event_type == "refund"]
            others = [t for t in follow_ok if t.event_type not in ("refund", "chargeback")] or follow_ok
            v = rnd.random()
            return rnd.choice(chargebacks if chargebacks and v < CHARGEBACK_SHARE else
                              refunds if refunds and v < CHARGEBACK_SHARE + REFUND_SHARE else others)
        if attempts_ko and (not attempts_ok or rnd.random() >= approval_target(provider)):
            return rnd.choice(attempts_ko)
        pool = attempts_ok or approved or declined or next(iter(live.values()))
        return rnd.choice(pool)


def _moment(trnd: random.Random, start: datetime, days: int, day_weights: list[float]) -> datetime:
    day = trnd.choices(range(days), day_weights)[0]
    hour = trnd.choices(range(24), HOURLY)[0]
    return start + timedelta(days=day, hours=hour, seconds=trnd.randrange(3600))


def generate_planned(n: int, *, seed: int = 7, days: int = DEFAULT_DAYS, anchor: datetime | None = None
                     ) -> Iterator[tuple[dict[str, Any], Template | None]]:
    """Like :func:`generate_records`, each record with the template it came from (None: unknown/broken)."""
    rnd = random.Random(f"paynorm-demo:{seed}")  # ids, amounts, outcomes: independent of the window
    trnd = random.Random(f"paynorm-demo-time:{seed}")
    anchor = (anchor or DEFAULT_ANCHOR).astimezone(timezone.utc)
    days = max(1, days)
    start = anchor - timedelta(days=days)
    day_weights = [WEEKDAY[(start + timedelta(days=d)).weekday()] * (1 + 0.01 * d) for d in range(days)]
    catalog = _Catalog(load_templates())
    coverage = list(catalog.coverage)
    rnd.shuffle(coverage)
    for i in range(n):
        when = _moment(trnd, start, days, day_weights)
        created = when + timedelta(seconds=trnd.randrange(1, 180))
        template: Template | None = None
        r = rnd.random()
        if coverage and rnd.random() < COVERAGE_SHARE:
            template = coverage.pop()
        elif r < BROKEN_SHARE:
            data: Any = rnd.choice(BROKEN)
        elif r < BROKEN_SHARE + QUARANTINE_SHARE:
            template = rnd.choice(catalog.quarantine)
        elif r < BROKEN_SHARE + QUARANTINE_SHARE + UNKNOWN_SHARE:
            amount = Decimal(rnd.randint(500, 50000)) / 100
            data = _unknown(i % 3, f"{i:07d}{rnd.getrandbits(24):06x}", amount, rnd.random() < 0.8, when)
        else:
            template = catalog.pick(rnd.choices(catalog.providers, catalog.weights)[0], rnd)
        if template is not None:
            data = render(template, index=i, seed=seed, when=when, rnd=rnd)
        record = {"id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)), "data": data,
                  "merchant": rnd.choice(MERCHANTS),
                  "transactional_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                  "created_at": created.isoformat(), "source": template.source if template else None}
        yield record, template


def generate_records(n: int, *, seed: int = 7, days: int = DEFAULT_DAYS, anchor: datetime | None = None
                     ) -> Iterator[dict[str, Any]]:
    """``n`` lake records (the lake's envelope) over the ``days`` before ``anchor``, reproducible for a seed."""
    for record, _ in generate_planned(n, seed=seed, days=days, anchor=anchor):
        yield record


def insert_records(conn: psycopg.Connection, records: Iterator[dict[str, Any]], *, table: str = "public.raw_transactions",
                   chunk: int = 5000) -> int:
    """COPY records into the lake table in transactions of ``chunk`` rows; rows inserted."""
    schema, _, name = table.rpartition(".")
    ident = psycopg.sql.Identifier(schema or "public", name)
    # COPY into a staging table, then insert what is new: the same seed twice inserts nothing twice.
    conn.execute("create temp table if not exists _paynorm_demo (id uuid, data jsonb, merchant jsonb,"
                 " transactional_id uuid, created_at timestamptz, source text)")
    insert_sql = psycopg.sql.SQL(
        "insert into {} (id, data, merchant, transactional_id, created_at, source)"
        " select id, data, merchant, transactional_id, created_at, source from _paynorm_demo"
        " on conflict (id) do nothing"
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
                                        r["transactional_id"], r["created_at"], r.get("source")))
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
