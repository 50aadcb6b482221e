#!/usr/bin/env python3
"""Planner benchmark: solve time of dipsd, and its optimality gap against exact.

Prints figures for BENCHMARKS.md; asserts nothing. Instances are random and heterogeneous
(acceptance 0.5-0.95, prefix 256-2048, link 1-30 ms, device 0.5-2x the paper's phone), on the
paper's model pair, seeded so that a rerun measures the same instances.

    .venv/bin/python scripts/bench_planner.py [--instances 200] [--max-users 8]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.planner import evaluate, plan_for
from emu.planner.exact import exact
from tests.planner.conftest import random_problem


def solve_times(sizes: list[int], repeats: int) -> None:
    print("## dipsd solve time (heterogeneous users, median of repeats)")
    print("| M | dipsd | dipsd-published | batches |")
    print("|---|---|---|---|")
    for M in sizes:
        p = random_problem(np.random.default_rng(M), M)
        row = []
        for pol in ("dipsd", "dipsd-published"):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                plan = plan_for(pol, p)
                ts.append(time.perf_counter() - t0)
            row.append(statistics.median(ts))
            if pol == "dipsd":
                n = len(plan.batches)
        print(f"| {M} | {row[0] * 1000:.0f} ms | {row[1] * 1000:.0f} ms | {n} |", flush=True)


def gaps(instances: int, max_users: int) -> None:
    rng = np.random.default_rng(2026)
    res: dict[str, list[float]] = {"dipsd": [], "dipsd-published": []}
    t_exact = []
    for i in range(instances):
        M = int(rng.integers(2, max_users + 1))
        p = random_problem(rng, M)
        t0 = time.perf_counter()
        best = evaluate(p, exact(p)).throughput_tok_s
        t_exact.append(time.perf_counter() - t0)
        for pol, out in res.items():
            out.append(100 * (best - evaluate(p, plan_for(pol, p)).throughput_tok_s) / best)
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{instances} instances", file=sys.stderr, flush=True)
    print(f"## optimality gap against exact ({instances} instances, 2 <= M <= {max_users})")
    print("| policy | mean gap | worst gap | instances at optimum (gap < 0.01%) |")
    print("|---|---|---|---|")
    for pol, g in res.items():
        at_opt = sum(x < 0.01 for x in g)
        print(f"| {pol} | {statistics.mean(g):.3f}% | {max(g):.3f}% | {at_opt}/{len(g)} |")
    print(
        f"exact (HiGHS MILP + Dinkelbach): mean {statistics.mean(t_exact):.2f} s, "
        f"max {max(t_exact):.1f} s per instance"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--max-users", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="*", default=[14, 50, 200])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    solve_times(args.sizes, args.repeats)
    if args.instances:
        gaps(args.instances, args.max_users)


if __name__ == "__main__":
    main()
