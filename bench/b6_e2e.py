"""Benchmark 6: the whole pipeline on the demo's lake, wall time per stage.

Each stage is the real CLI in a subprocess (so interpreter and dbt start-up count, as they do for a
cron job): `replicate --once` (first run: slot + snapshot), `transform`, `llm` (against the scripted
stub, which answers "not a payment" for every unknown shape: the cost of asking, not of mapping) and
`transform` again. When `paynorm run --once` exists it is timed too, on a fresh warehouse.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.openai_stub import OpenAIStub, Reply

from .common import REPO, Bench, Figure, log, summary

STAGES = (("replicate", ("replicate", "--once")), ("transform", ("transform",)), ("llm", ("llm",)),
          ("transform again", ("transform",)))


def _has_run_command() -> bool:
    out = subprocess.run([sys.executable, "-m", "consumer", "run", "--help"], cwd=REPO, capture_output=True, text=True, check=False)
    return out.returncode == 0 and "--once" in out.stdout


def pipeline(b: Bench, n: int, runs: int) -> tuple[list[Figure], dict[str, Any]]:
    lake_db = f"lake_e2e_{n}"
    lake_dsn = b.new_lake(lake_db)
    b.fill_lake(lake_db, n, txn_rows=5000)  # as `make demo` loads it
    times: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    times["total"] = []
    run_once: list[float] = []
    has_run = _has_run_command() and not b.quick  # quick mode: < 3 minutes
    with OpenAIStub() as stub:
        stub.script = lambda _req, _n: Reply.not_payment("benchmark: not mapped")
        for r in range(runs):
            wh_db = f"wh_e2e_{n}_{r}"
            wh_dsn = b.new_warehouse(wh_db)
            env = b.consumer_env(lake_dsn, wh_dsn, f"e2e_{r}", OPENAI_API_KEY="sk-bench-not-a-key",
                                 OPENAI_BASE_URL=stub.url, PAYNORM_LLM_MODEL="stub-bench")
            env["PAYNORM_HOME"] = str(b.base / f"home-e2e-{r}")
            total = 0.0
            for name, argv in STAGES:
                t = b.paynorm(*argv, env=env, label=f"e2e-{n}-{r}-{name.replace(' ', '-')}")
                times[name].append(t.seconds)
                total += t.seconds
            times["total"].append(total)
            log(f"e2e {n:,} run {r}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
            b.cluster.drop_database(wh_db)
            if has_run:
                wh_dsn = b.new_warehouse(wh_db)
                env.update({"DATABASE_URL": wh_dsn, "PAYNORM_SLOT": f"e2e_run_{r}"})
                t = b.paynorm("run", "--once", env=env, label=f"e2e-{n}-{r}-run-once")
                run_once.append(t.seconds)
                b.cluster.drop_database(wh_db)
    b.drop_lake(lake_db)
    figures = [Figure("6 e2e", f"{n:,}-row demo lake: {name}", "s", summary(v),
                      note="sum of the stages" if name == "total" else "") for name, v in times.items()]
    if has_run:
        figures.append(Figure("6 e2e", f"{n:,}-row demo lake: paynorm run --once", "s", summary(run_once)))
    else:
        figures.append(Figure("6 e2e", f"{n:,}-row demo lake: paynorm run --once", "s", summary([]),
                              note="not timed in quick mode" if b.quick else
                              "`paynorm run` does not exist yet: stages timed separately"))
    return figures, {"run_command": has_run}


def run(b: Bench) -> tuple[list[Figure], dict[str, Any]]:
    s = b.sizes
    figures, extra = pipeline(b, s.e2e_small, runs=1)
    if s.e2e_large:
        f, e = pipeline(b, s.e2e_large, runs=1)
        figures += f
        extra["large"] = e
    return figures, extra
