#!/usr/bin/env python3
"""Simulation benchmark: wall time of `draftnet sim` and events per second, and the
simulation's accuracy against the planner.

Prints figures for BENCHMARKS.md; asserts nothing. Synthetic backends, the paper's model pair
and 3 ms links (the dipsd-paper preset), one policy per run.

    .venv/bin/python scripts/bench_sim.py [--case 14:120:dipsd] [--case 1000:60:dipsd]
    .venv/bin/python scripts/bench_sim.py --accuracy [--seeds 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.runners.sim import simulate
from emu.scenario import load_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="USERS:SECONDS:POLICY")
    ap.add_argument("--accuracy", action="store_true", help="measured against predicted")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the accuracy table")
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args.seeds)
        return
    cases = args.case or ["14:120:dipsd", "1000:60:dipsd"]
    print(f"machine: {platform.machine()} python {platform.python_version()}")
    print("| users | virtual s | policy | wall s | events | events/s | tok/s sim | predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        users, secs, policy = case.split(":")
        sc = load_scenario(
            preset="dipsd-paper",
            overrides={"users.count": int(users), "sim.duration_s": float(secs)},
        )
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = simulate(sc, [policy], out_dir=Path(tmp))
            wall = time.perf_counter() - t0
            events = sum(1 for _ in (Path(tmp) / "events.jsonl").open())
        r = out["results"][policy]
        print(
            f"| {users} | {secs} | {policy} | {wall:.1f} | {events} | {events / wall:.0f} | "
            f"{r['throughput_tok_s']:.1f} | {r['predicted_tok_s']:.1f} |",
            flush=True,
        )


def accuracy(seeds: int) -> None:
    """Each policy of the paper's setting (6 users, 120 virtual s) measured against its
    prediction, per seed and on average (as ``tests/test_sim.py`` judges it)."""
    policies = ["dipsd", "ad", "ad-batch", "fixed"]
    print(f"machine: {platform.machine()} python {platform.python_version()}")
    seeds_head = " | ".join(f"seed {s}" for s in range(seeds))
    print(f"| policy | predicted tok/s | {seeds_head} | mean error |")
    print("|---" * (seeds + 3) + "|")
    rows: dict[str, list[str]] = {p: [] for p in policies}
    predicted: dict[str, float] = {}
    ratios: dict[str, list[float]] = {p: [] for p in policies}
    for seed in range(seeds):
        sc = load_scenario(
            preset="dipsd-paper", overrides={"sim.duration_s": 120.0, "sim.seed": seed}
        )
        out = simulate(sc, policies)["results"]
        for p in policies:
            r = out[p]
            predicted[p] = r["predicted_tok_s"]
            ratios[p].append(r["throughput_tok_s"] / r["predicted_tok_s"])
            rows[p].append(f"{r['throughput_tok_s']:.2f} ({100 * (ratios[p][-1] - 1):+.2f}%)")
    for p in policies:
        mean = 100 * (sum(ratios[p]) / seeds - 1)
        print(f"| {p} | {predicted[p]:.2f} | " + " | ".join(rows[p]) + f" | {mean:+.2f}% |")


if __name__ == "__main__":
    main()
