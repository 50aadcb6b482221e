#!/usr/bin/env python3
"""The heterogeneous-edge planner measured: the DP's solve time at 100 and 1000 tasks, and
its gap to the exact plan over contiguous batches of the sorted order (random small
instances, the evaluator's score). Prints figures for BENCHMARKS.md; asserts nothing.

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
from emu.planner.hetnet.refine import refined_plan
from emu.planner.hetnet.workload import random_problem, random_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--lengths", default="2,4,6", help="the lengths both may choose")
    ap.add_argument("--any-instances", type=int, default=100)
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
        got = evaluate(p, refined_plan(p, lengths=lengths)).total_ms
        any_gaps.append((got - best) / best)
    any_gaps.sort()
    print(
        f"refined against exact over every batching ({args.any_instances} instances of "
        f"{args.any_tasks} tasks; {time.perf_counter() - t0:.0f} s): mean gap "
        f"{100 * sum(any_gaps) / len(any_gaps):.3f}%, worst {100 * any_gaps[-1]:.3f}%, at the "
        f"optimum in {sum(g < 1e-9 for g in any_gaps)} of {len(any_gaps)}"
    )
    p = random_problem(rng, 1000)
    t0 = time.perf_counter()
    plan = refined_plan(p)
    print(
        f"1000 tasks refined: {time.perf_counter() - t0:.1f} s, total latency "
        f"{evaluate(p, plan).total_ms / evaluate(p, dp_plan(p)).total_ms:.4f} of the DP's"
    )


if __name__ == "__main__":
    main()
