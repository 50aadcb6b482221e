#!/usr/bin/env python3
"""Acceptance learned online (``hetnet.learn_alpha``): each task's own acceptance drawn in
``users.alpha`` +- ``--spread``, sampled, the planner told it or only the mean; the small cell
keeping the plan's lengths or learning the acceptance from the verdicts and choosing each
round's length from it. The measured mean latency in ``draftnet sim`` per seed, and each
setting's mean over the seeds against the plan told the truth. Asserts nothing.

    .venv/bin/python scripts/bench_hetnet_learned.py [--tasks 24] [--seeds 5] [--spread 0.2]
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

from emu.runners.sim_hetnet import simulate_hetnet
from emu.scenario import load_scenario

POLICIES = ("hetnet", "hetnet-max-batching")
SETTINGS = (("told", False), ("told", True), ("mean only", False), ("mean only", True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--spread", type=float, default=0.2)
    args = ap.parse_args()
    host = platform.node() if os.environ.get("BENCH_HOST") else "this machine"
    print(f"# {host}, {os.cpu_count()} cores; {args.tasks} tasks, seeds 1..{args.seeds}, "
          f"acceptance 0.75 +- {args.spread}, sampled")  # fmt: skip
    print("policy | planner | small cell | mean latency [s] per seed | mean | vs told, plan "
          "| mean draft len")  # fmt: skip
    t0 = time.perf_counter()
    for policy in POLICIES:
        base: list[float] = []
        for told, learn in SETTINGS:
            means: list[float] = []
            lengths: list[float] = []
            for seed in range(1, args.seeds + 1):
                over = {
                    "users.count": args.tasks,
                    "sim.seed": seed,
                    "hetnet.alpha_spread": args.spread,
                    "hetnet.alpha_known": told == "told",
                    "hetnet.learn_alpha": learn,
                }
                sc = load_scenario(None, preset="hetnet", overrides=over)
                r = simulate_hetnet(sc, [policy])["results"][policy]
                means.append(r["latency_ms"]["mean"] / 1e3)
                lengths.append(r["mean_draft_len"])
            base = base or means
            gain = [100.0 * (m / b - 1.0) for m, b in zip(means, base, strict=True)]
            shown = ", ".join(f"{m:.2f}" for m in means)
            cell = "learns" if learn else "plan"
            spread = f"{statistics.mean(gain):+.1f}% ({min(gain):+.1f}..{max(gain):+.1f})"
            print(f"{policy} | {told} | {cell} | {shown} | {statistics.mean(means):.2f} | "
                  f"{spread} | {statistics.mean(lengths):.2f}")  # fmt: skip
    print(f"# wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
