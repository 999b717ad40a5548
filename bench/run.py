"""`make bench` / `make bench-quick`: run every benchmark on a private cluster, write
bench/results/<date>.json and append a markdown table to bench/README.md.

    python bench/run.py --quick            # < 3 minutes, small sizes
    python bench/run.py --full             # the target sizes (see README for what is reduced)
    python bench/run.py --full --only cdc  # one or more benchmarks: cdc snapshot latency transform llm e2e
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import b1_cdc, b2_snapshot, b3_latency, b4_transform, b5_llm, b6_e2e
from bench.common import BENCH, Bench, Figure, log, machine_info

BENCHMARKS: dict[str, Callable[[Bench], tuple[list[Figure], dict[str, Any]]]] = {
    "cdc": b1_cdc.run,
    "snapshot": b2_snapshot.run,  # uses the large CDC lake when it is there
    "transform": b4_transform.run,
    "llm": b5_llm.run,
    "latency": b3_latency.run,
    "e2e": b6_e2e.run,
}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("rows/s", "calls", "tokens"):
        return f"{v:,.0f}"
    if unit in ("s", "ms"):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    if unit == "MB":
        return f"{v:,.0f}"
    return f"{v:,.4g}" if isinstance(v, float) else str(v)


def markdown(mode: str, machine: dict[str, Any], figures: list[Figure], started: str, seconds: float,
             errors: dict[str, str]) -> str:
    m = machine
    lines = [
        f"### Run {started} ({mode}, {seconds / 60:.1f} min)",
        "",
        f"Machine: {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu']}; PostgreSQL {m['postgresql']}, "
        f"wal2json {m['wal2json']}; Python {m['python']}, psycopg {m['psycopg']}, dbt-core {m['dbt_core']} "
        f"(dbt-postgres {m['dbt_postgres']}). Code: {m['git_head']}"
        + (f" + uncommitted changes in {len(m['git_dirty'])} file(s) of consumer/models/macros/mappings." if m['git_dirty'] else "."),
        "",
        "| # | figure | unit | median (min–max, runs) | baseline, same run: median (min–max) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        v = f.value
        val = f"{fmt(v['median'], f.unit)} ({fmt(v['min'], f.unit)}–{fmt(v['max'], f.unit)}, {v['runs']})" \
            if v.get("runs") else "-"
        base = "-"
        if f.baseline and f.baseline.get("runs"):
            b = f.baseline
            base = f"{f.baseline_name}: {fmt(b['median'], f.unit)} ({fmt(b['min'], f.unit)}–{fmt(b['max'], f.unit)})"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x" if f.ratio >= 0.1 else f"{f.ratio:.2g}x"
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        name = f.name + (f" ({f.note})" if f.note else "")
        lines.append(f"| {f.bench} | {name} | {f.unit} | {val} | {base} | {ratio} | {f.target} | {met} |")
    for name, err in errors.items():
        lines.append(f"\n**{name} failed**: `{err.strip().splitlines()[-1][:300]}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    g.add_argument("--full", action="store_true", help="the target sizes (well under an hour on 2 cores)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    ap.add_argument("--no-readme", action="store_true", help="write the JSON only, leave README.md alone")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    b = Bench(quick=args.quick)
    figures: list[Figure] = []
    extras: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        machine = machine_info(b.cluster)
        log(f"{mode} run on {machine['cores']} cores, PostgreSQL {machine['postgresql']}; cluster {b.base}")
        for name in args.only or list(BENCHMARKS):
            log(f"== {name}")
            t = time.perf_counter()
            try:
                f, e = BENCHMARKS[name](b)
                figures += f
                extras[name] = {**e, "seconds": round(time.perf_counter() - t, 1)}
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
                errors[name] = traceback.format_exc()
                log(f"{name} FAILED:\n{errors[name]}")
    finally:
        seconds = time.perf_counter() - t0
        b.close()
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = results / f"{stamp}-{mode}.json"
    out.write_text(json.dumps({"started": started, "mode": mode, "seconds": round(seconds, 1), "machine": machine,
                               "sizes": b.sizes.__dict__, "figures": [f.as_dict() for f in figures],
                               "details": extras, "errors": errors}, indent=2, default=str) + "\n")
    table = markdown(mode, machine, figures, started, seconds, errors)
    print(table)
    if not args.no_readme:
        readme = BENCH / "README.md"
        text = readme.read_text() if readme.exists() else "# Benchmarks\n"
        if "## Results" not in text:
            text = text.rstrip("\n") + "\n\n## Results (appended by every run, newest last)\n"
        readme.write_text(text.rstrip("\n") + "\n\n" + table)
    log(f"wrote {out.relative_to(BENCH.parent)}{'' if args.no_readme else ' and appended to bench/README.md'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
