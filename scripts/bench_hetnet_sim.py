"""The heterogeneous edge's nodes against its evaluator: `draftnet sim` of each policy, the
measured mean latency's error from the prediction, rounds against predicted rounds, and the
simulation's wall time (BENCHMARKS.md, "hetnet nodes").

    .venv/bin/python scripts/bench_hetnet_sim.py [--tasks 16,100] [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from emu.runners.sim_hetnet import simulate_hetnet
from emu.scenario import load_scenario

POLICIES = ["hetnet", "hetnet-dp", "hetnet-ad", "hetnet-uniform", "hetnet-max-batching",
            "hetnet-fixed"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="16,100")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print("tasks acceptance policy: error % (mean over seeds, min..max), rounds/predicted, wall s")
    for k in (int(x) for x in args.tasks.split(",")):
        for acceptance in ("expected", "sampled"):
            errors: dict[str, list[float]] = {p: [] for p in POLICIES}
            rounds: dict[str, list[float]] = {p: [] for p in POLICIES}
            walls: dict[str, list[float]] = {p: [] for p in POLICIES}
            for seed in range(args.seeds):
                sc = load_scenario(
                    None,
                    preset="hetnet",
                    overrides={"users.count": k, "hetnet.acceptance": acceptance, "sim.seed": seed},
                )
                out = simulate_hetnet(sc, POLICIES)
                for p, r in out["results"].items():
                    assert r["finished"] == k, (p, r["finished"])
                    errors[p].append(r["error_pct"])
                    rounds[p].append(r["rounds"] / r["predicted_rounds"])
                    walls[p].append(r["wall_s"])
            for p in POLICIES:
                e = np.array(errors[p])
                spread = f"({e.min():+.2f}..{e.max():+.2f})"
                print(
                    f"{k:4d} {acceptance:8s} {p:20s} {e.mean():+6.2f} {spread}"
                    f"  {np.mean(rounds[p]):.3f}  {np.mean(walls[p]):.1f}"
                )


if __name__ == "__main__":
    main()
