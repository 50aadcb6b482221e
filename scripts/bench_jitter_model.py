"""How well the cost models predict DiP-SD's throughput under jitter: ``draftnet sim`` of
dipsd's plan on fixed links with half-normal jitter (the default scenario, synthetic models),
against the published mean model's prediction and the stochastic model's
(``emu.planner.stochastic``: the expected cycle when each batch waits for all its members).

    python scripts/bench_jitter_model.py [--seeds 3] [--duration 30] [--users 6]

Prints one row per jitter level: the measured throughput (mean over seeds, and its range), each
model's prediction and its error against the measurement.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emu.planner import evaluate, plan_for
from emu.planner.stochastic import stochastic_evaluate
from emu.runners.sim import simulate
from emu.scenario import load_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--users", type=int, default=6)
    args = ap.parse_args()
    print("| jitter (ms) | measured tok/s | mean model | error | stochastic model | error |")
    print("|---|---|---|---|---|---|")
    for jitter in (0.0, 5.0, 10.0, 20.0):
        measured = []
        t = time.perf_counter()
        for seed in range(args.seeds):
            sc = load_scenario(overrides={
                "models.kind": "synthetic", "network.model": "fixed",
                "network.jitter_ms": jitter, "sim.duration_s": args.duration,
                "users.count": args.users, "sim.seed": seed,
            })  # fmt: skip
            measured.append(simulate(sc, ["dipsd"])["results"]["dipsd"]["throughput_tok_s"])
        p = sc.problem()
        plan = plan_for("dipsd", p)
        mean_model = evaluate(p, plan).throughput_tok_s
        stochastic = stochastic_evaluate(p, plan).throughput_tok_s  # the scenario's link noise
        m = float(np.mean(measured))
        print(
            f"| {jitter:g} | {m:.2f} ({min(measured):.2f}-{max(measured):.2f}) | "
            f"{mean_model:.2f} | {100 * (mean_model / m - 1):+.1f}% | {stochastic:.2f} | "
            f"{100 * (stochastic / m - 1):+.1f}% |",
            flush=True,
        )
        print(f"<!-- {time.perf_counter() - t:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
