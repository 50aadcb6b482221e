#!/usr/bin/env python3
"""The heterogeneous-edge exact reference measured, and the planners against it: random
instances of K tasks, each solved by branch and bound over every batching, every order of
the batches and every allowed length (``hetnet-exact``), by the planner (``hetnet``) and by the
reconstructed DP alone (``hetnet-dp``); prints each one's gap to the exact plan (the
evaluator's total latency) and the exact search's solve times. Asserts nothing.

    .venv/bin/python scripts/bench_hetnet_exact.py [--instances 200] [--tasks 4] [--lengths all]
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

from emu.planner.hetnet.dp import dp_plan
from emu.planner.hetnet.evaluate import evaluate
from emu.planner.hetnet.exact import exact_search, plans_over_every_batching
from emu.planner.hetnet.refine import planned
from emu.planner.hetnet.workload import random_problem, random_tasks

BANDS_HZ = (0.2e6, 1e6, 10e6)  # a starved, a narrow and the preset's band, as bench_hetnet


def _gaps(what: str, gaps: list[float]) -> None:
    g = sorted(gaps)
    print(
        f"{what:>10}: mean gap {100 * sum(g) / len(g):.3f}%, median {100 * g[len(g) // 2]:.3f}%, "
        f"worst {100 * g[-1]:.3f}%, optimal in {sum(x < 1e-9 for x in g)} of {len(g)}, "
        f"never better than exact: {g[0] >= -1e-12}"
    )


def _times(what: str, seconds: list[float]) -> None:
    s = sorted(seconds)
    print(
        f"{what:>10}: mean {sum(s) / len(s):.2f} s, median {s[len(s) // 2]:.2f} s, "
        f"max {s[-1]:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--lengths", default="all", help="e.g. 2,4,6; all: 0..max_draft_len")
    ap.add_argument("--outputs", default="16,64", help="output lengths' range (short: quick)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="a line per instance")
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.outputs.split(","))
    lengths = None if args.lengths == "all" else tuple(int(x) for x in args.lengths.split(","))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    rng = np.random.default_rng(args.seed)
    gaps: dict[str, list[float]] = {"hetnet": [], "hetnet-dp": []}
    spent: dict[str, list[float]] = {"exact": [], "hetnet": []}
    nodes, scored = [], []
    worst: tuple[float, int] = (-1.0, -1)
    t_all = time.perf_counter()
    for i in range(args.instances):
        tasks = random_tasks(rng, args.tasks, output_len=(lo, hi))
        band = float(rng.choice(BANDS_HZ))
        p = random_problem(rng, args.tasks, tasks=tasks, bandwidth_hz=band)
        t0 = time.perf_counter()
        mine = planned(p, lengths=lengths)
        spent["hetnet"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        best, stats = exact_search(p, lengths=lengths, incumbent=mine)
        spent["exact"].append(time.perf_counter() - t0)
        nodes.append(stats.nodes)
        scored.append(stats.scored)
        best_ms = evaluate(p, best).total_ms
        for name, plan in (("hetnet", mine), ("hetnet-dp", dp_plan(p, lengths=lengths))):
            gaps[name].append(evaluate(p, plan).total_ms / best_ms - 1)
        worst = max(worst, (gaps["hetnet"][-1], i))
        if args.verbose:
            print(
                f"#{i}: band {band / 1e6:g} MHz, exact {spent['exact'][-1]:.1f} s "
                f"({stats.scored} plans scored), {len(best.batches)} batches {best.spec_len}; "
                f"hetnet +{100 * gaps['hetnet'][-1]:.3f}%, dp +{100 * gaps['hetnet-dp'][-1]:.3f}%",
                flush=True,
            )
    count = len(lengths) if lengths else p.max_draft_len + 1
    print(
        f"{args.instances} instances of {args.tasks} tasks (outputs U[{lo}, {hi}], band "
        f"{'/'.join(f'{b / 1e6:g}' for b in BANDS_HZ)} MHz), lengths "
        f"{args.lengths} ({plans_over_every_batching(args.tasks, count):,} plans each); "
        f"{time.perf_counter() - t_all:.0f} s in all"
    )
    for name, g in gaps.items():
        _gaps(name, g)
    _times("exact", spent["exact"])
    _times("hetnet", spent["hetnet"])
    print(
        f"{'search':>10}: mean {sum(nodes) / len(nodes):,.0f} partial plans, "
        f"{sum(scored) / len(scored):,.0f} plans scored; planner's worst gap on instance "
        f"#{worst[1]} (seed {args.seed})"
    )


if __name__ == "__main__":
    main()
