#!/usr/bin/env python3
"""The heterogeneous-edge planner measured: the DP's solve time at 100 and 1000 tasks, its gap
to the exact plan over contiguous batches of the sorted order, the planner's gap to the exact
plan over every batching (three lengths, by enumeration; every length, by branch and bound),
and the planner under each discipline at 100 tasks (random instances, the evaluator's score).
Prints figures for BENCHMARKS.md; asserts nothing.

    .venv/bin/python scripts/bench_hetnet.py [--instances 200] [--tasks 5] [--lengths 2,4,6]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.planner.hetnet.baselines import exact_any, exact_contiguous
from emu.planner.hetnet.dp import dp_plan
from emu.planner.hetnet.evaluate import evaluate
from emu.planner.hetnet.exact import exact_plan
from emu.planner.hetnet.refine import planned, refined_plan
from emu.planner.hetnet.workload import random_problem, random_tasks


def _gaps(what: str, gaps: list[float]) -> None:
    g = sorted(gaps)
    print(
        f"{what}: mean gap {100 * sum(g) / len(g):.3f}%, median {100 * g[len(g) // 2]:.3f}%, "
        f"worst {100 * g[-1]:.3f}%, at the optimum in {sum(x < 1e-9 for x in g)} of {len(g)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--lengths", default="2,4,6", help="the lengths both may choose")
    ap.add_argument("--any-instances", type=int, default=200)
    ap.add_argument("--full-instances", type=int, default=10, help="against every length")
    ap.add_argument("--any-tasks", type=int, default=4, help="tasks against every batching")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    rng = np.random.default_rng(1)
    for k in (100, 1000):
        p = random_problem(rng, k)
        t0 = time.perf_counter()
        plan = dp_plan(p)
        solve = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = evaluate(p, plan)
        score = time.perf_counter() - t0
        print(
            f"{k} tasks: DP {solve:.3f} s, {len(plan.batches)} batches, evaluated in "
            f"{score:.3f} s; mean latency {ev.total_ms / k / 1000:.2f} s"
        )
    lengths = tuple(int(x) for x in args.lengths.split(","))
    gaps, refined = [], []
    t0 = time.perf_counter()
    for _ in range(args.instances):
        tasks = random_tasks(rng, args.tasks, output_len=(16, 64))  # short: quick to enumerate
        p = random_problem(
            rng, args.tasks, tasks=tasks, bandwidth_hz=float(rng.choice([0.2e6, 1e6, 10e6]))
        )
        best = evaluate(p, exact_contiguous(p, lengths=lengths)).total_ms
        got = evaluate(p, dp_plan(p, lengths=lengths)).total_ms
        gaps.append((got - best) / best)
        better = evaluate(p, refined_plan(p, lengths=lengths)).total_ms
        refined.append((better - best) / best)
    gaps.sort()
    refined.sort()
    print(
        f"DP against exact over contiguous batches ({args.instances} instances of "
        f"{args.tasks} tasks, lengths {lengths}; {time.perf_counter() - t0:.0f} s): "
        f"mean gap {100 * sum(gaps) / len(gaps):.3f}%, median {100 * gaps[len(gaps) // 2]:.3f}%, "
        f"worst {100 * gaps[-1]:.3f}%, never better: {min(gaps) >= -1e-12}"
    )
    print(
        f"DP refined by local search on the evaluator: mean gap "
        f"{100 * sum(refined) / len(refined):.3f}%, "
        f"median {100 * refined[len(refined) // 2]:.3f}%, "
        f"worst {100 * refined[-1]:.3f}%, at the optimum in "
        f"{sum(g < 1e-9 for g in refined)} of {len(refined)}"
    )
    any_gaps = []
    t0 = time.perf_counter()
    for _ in range(args.any_instances):
        tasks = random_tasks(rng, args.any_tasks, output_len=(16, 64))
        band = float(rng.choice([0.2e6, 1e6, 10e6]))
        p = random_problem(rng, args.any_tasks, tasks=tasks, bandwidth_hz=band)
        best = evaluate(p, exact_any(p, lengths=lengths)).total_ms
        got = evaluate(p, planned(p, lengths=lengths)).total_ms
        any_gaps.append((got - best) / best)
    _gaps(
        f"planner against exact over every batching ({args.any_instances} instances of "
        f"{args.any_tasks} tasks, lengths {lengths}; {time.perf_counter() - t0:.0f} s)",
        any_gaps,
    )
    full_gaps, spent = [], []
    for _ in range(args.full_instances):
        tasks = random_tasks(rng, 4, output_len=(16, 64))
        band = float(rng.choice([0.2e6, 1e6, 10e6]))
        p = random_problem(rng, 4, tasks=tasks, bandwidth_hz=band)
        mine = planned(p)
        t0 = time.perf_counter()
        best = evaluate(p, exact_plan(p, incumbent=mine)).total_ms
        spent.append(time.perf_counter() - t0)
        full_gaps.append((evaluate(p, mine).total_ms - best) / best)
    _gaps(
        f"planner against exact over every batching and every length 0..8 (branch and bound; "
        f"{args.full_instances} instances of 4 tasks, {min(spent):.0f}-{max(spent):.0f} s each)",
        full_gaps,
    )
    for discipline in ("fifo", "priority"):
        p = random_problem(np.random.default_rng(2), 100, discipline=discipline)
        t0 = time.perf_counter()
        plan = planned(p)
        spent_s = time.perf_counter() - t0
        dp = evaluate(p, dp_plan(p)).total_ms
        got = evaluate(p, plan).total_ms
        print(
            f"100 tasks, {discipline}: planner {spent_s:.1f} s, mean latency "
            f"{got / 100 / 1000:.2f} s; the DP's {dp / 100 / 1000:.2f} s "
            f"({100 * (dp / got - 1):.1f}% above)"
        )
    p = random_problem(rng, 1000)
    t0 = time.perf_counter()
    plan = planned(p)
    print(
        f"1000 tasks planned: {time.perf_counter() - t0:.1f} s, total latency "
        f"{evaluate(p, plan).total_ms / evaluate(p, dp_plan(p)).total_ms:.4f} of the DP's"
    )


if __name__ == "__main__":
    main()
