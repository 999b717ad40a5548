"""Benchmark 5: LLM economy — N rows across K payload shapes no rule knows, against the scripted
OpenAI-compatible server of the tests (tests/openai_stub.py, real HTTP).

The lake rows are demo records (consumer.demo envelopes: ids, merchants, times) whose payload is
replaced by one of K variants of an unknown gateway (``{"gateway": "acmepay", "txn<k>": {...}}``),
replicated into the warehouse by the consumer and built once (the step reads the rows the build
could not place from normalization_pending). The stub answers every request with a valid rule for
the variant it finds in the samples. Figures: calls (must equal K), tokens sent, wall time of
`run_llm_step` (sampling, the request, validation of the rule against every row of its shape,
storing it); then a second run, which must make 0 calls.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from consumer import llm, rules
from consumer.settings import Settings
from tests.openai_stub import OpenAIStub, Recorded, Reply

from .common import Bench, Figure, log, summary


def payload(k: int, i: int, rec: dict[str, Any]) -> dict[str, Any]:
    ok = i % 5 != 0
    return {"gateway": "acmepay", f"txn{k}": {"ref": f"AP{k}-{i:08d}", "total_cents": 500 + (i * 37) % 50000,
                                             "ccy": "BRL", "result": "OK" if ok else "KO",
                                             "reason": None if ok else "FUNDS", "created": rec["created_at"]}}


def rule(k: int) -> dict[str, Any]:
    p = f"$.txn{k}"
    return {"description": f"AcmePay variant {k}", "provider": {"const": "acmepay"},
            "match": f"$ ? (exists(@.gateway) && exists(@.txn{k}.result))",
            "fields": {"transaction_id": {"path": f"{p}.ref"},
                       "status": {"path": f"{p}.result", "map": {"OK": "approved", "KO": "declined"}},
                       "amount": {"path": f"{p}.total_cents", "unit": "minor"}, "currency": {"path": f"{p}.ccy"},
                       "event_at": {"path": f"{p}.created", "format": "iso"}}}


def script(req: Recorded, _n: int) -> Reply:
    m = re.search(r"txn(\d+)", req.raw.decode("utf-8", "replace"))
    if not m:
        return Reply.not_payment("no acmepay variant in the samples")
    return Reply.rule(rule(int(m.group(1))))


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    n, k = s.llm_rows, s.llm_shapes
    lake_db, wh_db = "lake_llm", "wh_llm"
    lake_dsn, wh_dsn = b.new_lake(lake_db), b.new_warehouse(wh_db)
    recs = [{**r, "data": payload(i % k, i, r)} for i, r in enumerate(b.records(n, seed=7))]
    with b.admin(lake_db) as conn:
        from consumer.demo import insert_records
        insert_records(conn, iter(recs), chunk=5000)
    b.paynorm("replicate", "--once", env=b.consumer_env(lake_dsn, wh_dsn, "llm"), label="replicate-llm")
    # the step asks about the rows the build could not place (normalization_pending): build once
    b.transform(wh_dsn, b.base / "home-llm", "transform-llm")
    calls, tokens, secs, again, activated = [], [], [], [], []
    with OpenAIStub() as stub:
        stub.script = script
        settings = Settings(warehouse_dsn=wh_dsn, openai_api_key="sk-bench-not-a-key", openai_base_url=stub.url,
                            llm_model="stub-bench", llm_timeout=30, llm_max_retries=1, llm_backoff=0.01,
                            llm_max_calls=10 * k, llm_max_tokens=10_000_000)
        with psycopg.connect(wh_dsn, autocommit=True) as conn:  # as the warehouse owner, like paynorm
            rules.ensure_schema(conn)
            rules.sync(conn, rules.DEFAULT_DIR)
        for r in range(s.llm_runs):
            with psycopg.connect(wh_dsn, autocommit=True) as conn:  # forget what the previous run learned
                conn.execute("delete from paynorm.llm_calls; delete from paynorm.llm_shapes;"
                             " delete from paynorm.mappings where origin = 'llm'")
            stub.reset()
            t0 = time.perf_counter()
            res = llm.run_llm_step(wh_dsn, settings)
            secs.append(time.perf_counter() - t0)
            calls.append(res.calls)
            tokens.append(res.tokens_in)
            activated.append(len(res.activated))
            t0 = time.perf_counter()
            res2 = llm.run_llm_step(wh_dsn, settings)
            again.append(res2.calls)
            log(f"llm run {r}: {res.calls} calls for {res.shapes_waiting} shapes / {res.rows_waiting:,} rows, "
                f"{res.tokens_in:,} tokens sent, {secs[-1]:.1f}s, {len(res.activated)} rules active; second run "
                f"{res2.calls} calls in {time.perf_counter() - t0:.1f}s")
    b.drop_lake(lake_db)
    b.cluster.drop_database(wh_db)
    figures = [
        Figure("5 llm", f"calls for {n:,} rows in {k} unknown shapes", "calls", summary(calls), target=f"= {k}",
               met=all(c == k for c in calls), note=f"rules activated: {summary(activated)['median']:.0f}"),
        Figure("5 llm", "tokens sent (prompt)", "tokens", summary(tokens), note="per run, all shapes"),
        Figure("5 llm", "wall time of the step", "s", summary(secs), note="stub answers at once: this is paynorm's own cost"),
        Figure("5 llm", "second run: calls", "calls", summary(again), target="= 0", met=all(c == 0 for c in again)),
    ]
    return figures, {}
