"""Benchmark 6: the whole job, `paynorm run --once`, on the demo's lake — wall time per stage.

`python -m consumer run --once` runs as a subprocess on a fresh warehouse (so interpreter and dbt
start-up count, as they do for a cron job): land (first run: slot + snapshot of the lake), transform
(staging + intermediate), llm (against the scripted stub, which answers "not a payment" for every
unknown shape: the cost of asking, not of mapping) and marts. The stage times are the ones the run
itself records in ``paynorm.runs.stages``; "total" is the subprocess's wall time.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.openai_stub import OpenAIStub, Reply

from .common import Bench, Figure, log, summary

STAGES = ("land", "transform", "llm", "marts")


def pipeline(b: Bench, n: int, runs: int) -> tuple[list[Figure], dict[str, Any]]:
    lake_db = f"lake_e2e_{n}"
    lake_dsn = b.new_lake(lake_db)
    b.fill_lake(lake_db, n, txn_rows=5000)  # as `make demo` loads it
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    outcomes: list[dict[str, Any]] = []
    with OpenAIStub() as stub:
        stub.script = lambda _req, _n: Reply.not_payment("benchmark: not mapped")
        for r in range(runs):
            wh_db = f"wh_e2e_{n}_{r}"
            wh_dsn = b.new_warehouse(wh_db)
            env = b.consumer_env(lake_dsn, wh_dsn, f"e2e_{r}", OPENAI_API_KEY="sk-bench-not-a-key",
                                 OPENAI_BASE_URL=stub.url, PAYNORM_LLM_MODEL="stub-bench")
            env["PAYNORM_HOME"] = str(b.base / f"home-e2e-{n}-{r}")
            t = b.paynorm("run", "--once", env=env, label=f"e2e-{n}-{r}-run-once")
            times["total"].append(t.seconds)
            with psycopg.connect(wh_dsn) as conn:
                stages, events = conn.execute(
                    "select (select stages from paynorm.runs order by started_at desc limit 1),"
                    " (select count(*) from paynorm_marts.normalized_payment_events)").fetchone()  # type: ignore[misc]
            for stage in stages:
                if stage["name"] in times:
                    times[stage["name"]].append(stage["seconds"])
            outcomes.append({"stages": stages, "events": events})
            log(f"e2e {n:,} run {r}: run --once {t.seconds:.1f}s; " +
                ", ".join(f"{s['name']} {s['seconds']:.1f}s ({s['outcome']})" for s in stages) + f"; {events:,} events")
            b.cluster.drop_database(wh_db)
    b.drop_lake(lake_db)
    figures = [Figure("6 e2e", f"{n:,}-row demo lake, paynorm run --once: {name}", "s", summary(v),
                      note="wall time of the process" if name == "total" else "as recorded in paynorm.runs")
               for name, v in times.items()]
    return figures, {"runs": outcomes}


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    figures, extra = pipeline(b, s.e2e_small, runs=1)
    if s.e2e_large:
        f, e = pipeline(b, s.e2e_large, runs=1)
        figures += f
        extra["large"] = e
    return figures, extra
