"""Profile the CDC consumer (or the snapshot) on demo rows: where does a row's time go?

    .venv/bin/python -m bench.profile_cdc --rows 20000 --transport stream
    .venv/bin/python -m bench.profile_cdc --rows 20000 --snapshot
    .venv/bin/python -m bench.profile_cdc --rows 20000 --py-spy    # pip install py-spy first
    .venv/bin/python -m bench.profile_cdc --rows 100000 --cpu      # CPU time per row, per process

Starts its own cluster (like bench/run.py), creates the consumer's slot and state with a first
`replicate --once` on the empty lake (or, with ``--snapshot``, fills the lake first), then runs
`python -m cProfile -m consumer replicate --once` and prints the most expensive functions by
cumulative and by own time. cProfile sees the main thread only; ``--py-spy`` samples every thread
instead (``py-spy record --threads``, 200 Hz) and prints each thread's share and, for the main
thread, where it waits — the way to check that decoding and warehouse writes overlap. ``--cpu``
runs the consumer unprofiled and reports the CPU time per landed row of the consumer process, the
walsender and the warehouse backends (from /proc): how much of the machine one row costs, and so
what rate the cores can sustain at best.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from .common import Bench, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--txn-rows", type=int, default=1_000)
    ap.add_argument("--transport", choices=("stream", "sql"), default="stream")
    ap.add_argument("--snapshot", action="store_true", help="profile the first-run snapshot instead")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--py-spy", action="store_true", help="sample all threads with py-spy instead of cProfile")
    ap.add_argument("--cpu", action="store_true", help="CPU time per row of each process, no profiler")
    args = ap.parse_args()
    b = Bench(quick=True)
    try:
        lake_dsn = b.new_lake("lake_prof")
        wh_dsn = b.new_warehouse("wh_prof")
        env = b.consumer_env(lake_dsn, wh_dsn, "prof", PAYNORM_LOG_LEVEL="WARNING")
        if not args.snapshot:
            b.paynorm("replicate", "--once", "--transport", args.transport, env=env, label="init")
        b.fill_lake("lake_prof", args.rows, txn_rows=args.txn_rows)
        consumer = ["-m", "consumer", "replicate", "--once", "--transport", args.transport]
        if args.cpu:
            _cpu_split(b, [sys.executable, *consumer], env, args.rows)
            return
        if args.py_spy:
            raw = b.base / "py-spy.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            timed = b.run([spy, "record", "-r", "200", "-f", "raw", "--threads", "--idle", "-o", str(raw), "--",
                           sys.executable, *consumer], env=env, label="sampled")
            log(f"{b.count('wh_prof'):,} rows landed in {timed.seconds:.1f}s under py-spy")
            _print_samples(raw, args.top)
            return
        prof = b.base / "consumer.prof"
        timed = b.run([sys.executable, "-m", "cProfile", "-o", str(prof), *consumer], env=env, label="profiled")
        landed = b.count("wh_prof")
        log(f"{landed:,} rows landed in {timed.seconds:.1f}s under cProfile ({landed / timed.seconds:,.0f} rows/s)")
        stats = pstats.Stats(str(prof))
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        b.close()


def _postgres_cpu(postmaster: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of the cluster's processes (children of ``postmaster``), by pid."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # ppid
            out[int(pid)] = (title, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cpu_split(b: Bench, argv: list[str], env: dict[str, str], rows: int) -> None:
    seen: dict[int, tuple[str, float]] = {}
    done = threading.Event()
    postmaster = int((b.cluster.datadir / "postmaster.pid").read_text().split()[0])

    def sample() -> None:  # backends exit with the consumer: keep their last reading
        while not done.is_set():
            seen.update(_postgres_cpu(postmaster))
            done.wait(0.1)

    before = _postgres_cpu(postmaster)
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=b.base)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the consumer failed")
    kinds: Counter[str] = Counter()
    for pid, (title, cpu) in seen.items():
        used = cpu - before.get(pid, (title, 0.0))[1]
        kind = "walsender" if "walsender" in title else "warehouse backends" if " wh_prof " in title \
            else "other postgres (checkpointer, wal writer, ...)"
        kinds[kind] += used
    # wait4 counts the children the consumer reaped: its decode worker too
    kinds["consumer (python, all threads, decode worker)"] = usage.ru_utime + usage.ru_stime
    total = sum(kinds.values())
    print(f"{rows:,} rows in {wall:.2f}s wall = {rows / wall:,.0f} rows/s; {total / wall:.2f} cores busy on average")
    for kind, cpu in kinds.most_common():
        print(f"  {cpu * 1e6 / rows:7.1f} µs CPU per row  {kind}")
    print(f"  {total * 1e6 / rows:7.1f} µs CPU per row  in all: at best {os.cpu_count()} cores sustain "
          f"{os.cpu_count() * rows / total:,.0f} rows/s")


def _print_samples(raw: Path, top: int) -> None:
    """Per-thread share, the main thread's hottest frames (own and inclusive) and where it waits."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    main = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].split("_")[0]
        threads[thread] += n
        if "MainThread" not in frames[0]:
            continue
        main += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            inclusive[f] += n
        if any(w in frames[-1] for w in ("wait", "select", "acquire")):
            waits[" <- ".join(f.split(" (")[0] for f in reversed(frames[-5:]))] += n
    total = sum(threads.values())
    print("samples per thread (--idle: waiting threads are sampled too):")
    for t, n in threads.most_common():
        print(f"  {100 * n / total:5.1f}%  {t}")
    for title, counter in (("main thread, own time", own), ("main thread, inclusive", inclusive),
                           ("main thread, waiting", waits)):
        print(f"\n{title} (% of the main thread's samples):")
        for f, n in counter.most_common(top):
            print(f"  {100 * n / main:5.1f}%  {f[:140]}")


if __name__ == "__main__":
    main()
