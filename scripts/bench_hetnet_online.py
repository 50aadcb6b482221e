#!/usr/bin/env python3
"""Tasks that arrive over time (``[hetnet.arrivals]``, Poisson), planned a window at a time:
for each arrival rate and window, every policy's mean latency on the evaluator (from each
task's arrival) beside the offline plan of the same tasks all there at the start; and the
simulation's error against the evaluator at one rate, with expected and with sampled
acceptance. Asserts nothing.

    .venv/bin/python scripts/bench_hetnet_online.py [--tasks 24] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.planner import get_policy
from emu.planner.hetnet.evaluate import evaluate
from emu.runners.sim_hetnet import simulate_hetnet
from emu.scenario import Scenario, load_scenario

POLICIES = ("hetnet", "hetnet-dp", "hetnet-uniform", "hetnet-max-batching", "hetnet-fixed")


def _scenario(tasks: int, seed: int, rate: float, window_s: float, acceptance: str) -> Scenario:
    arrivals = {"process": "poisson", "rate_per_s": rate, "window_s": window_s}
    return load_scenario(
        None,
        preset="hetnet",
        overrides={
            "users.count": tasks,
            "sim.seed": seed,
            "hetnet.arrivals": arrivals,
            "hetnet.acceptance": acceptance,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    host = platform.node() if os.environ.get("BENCH_HOST") else "this machine"
    print(f"# {host}, {os.cpu_count()} cores; {args.tasks} tasks, {args.seeds} seeds, hetnet")
    print("rate [1/s] | window [s] | " + " | ".join(POLICIES) + " | planner offline | wall [s]")
    for rate, window in ((0.25, 2.0), (0.5, 0.0), (0.5, 2.0), (0.5, 8.0), (1.0, 2.0)):
        means: dict[str, list[float]] = {p: [] for p in POLICIES}
        offline: list[float] = []
        t0 = time.perf_counter()
        for seed in range(1, args.seeds + 1):
            problem = _scenario(args.tasks, seed, rate, window, "expected").hetnet_problem()
            for p in POLICIES:
                plan = get_policy(p).plan(problem)
                means[p].append(evaluate(problem, plan).summary_ms()["mean"])
            over = {"users.count": args.tasks, "sim.seed": seed}  # the same tasks at once
            still = load_scenario(None, preset="hetnet", overrides=over).hetnet_problem()
            offline.append(evaluate(still, get_policy("hetnet").plan(still)).summary_ms()["mean"])
        cells = " | ".join(f"{statistics.mean(v) / 1e3:.2f}" for v in means.values())
        print(f"{rate:g} | {window:g} | {cells} | {statistics.mean(offline) / 1e3:.2f} | "
              f"{time.perf_counter() - t0:.0f}")  # fmt: skip
    print("\n# draftnet sim against the evaluator, 0.5 tasks/s, a 2 s window")
    print("acceptance | policy | error % (per seed) | finished")
    for acceptance in ("expected", "sampled"):
        errors: dict[str, list[float]] = {}
        finished: dict[str, int] = {}
        for seed in range(1, args.seeds + 1):
            sc = _scenario(args.tasks, seed, 0.5, 2.0, acceptance)
            out = simulate_hetnet(sc, ["hetnet", "hetnet-max-batching"])
            for p, r in out["results"].items():
                errors.setdefault(p, []).append(r["error_pct"])
                finished[p] = finished.get(p, 0) + r["finished"]
        for p, e in errors.items():
            shown = ", ".join(f"{x:+.2f}" for x in e)
            print(f"{acceptance} | {p} | {shown} | {finished[p]}/{args.tasks * args.seeds}")


if __name__ == "__main__":
    main()
