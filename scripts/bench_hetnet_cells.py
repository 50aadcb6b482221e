#!/usr/bin/env python3
"""Several small cells under one macro cell (``[hetnet.radio]``): for 1, 2 and 4 small cells
with the same tasks, the planner's mean latency beside each baseline's, the simulation's error
against the evaluator (expected acceptance, so the rounds are the evaluator's), and what shared
spectrum (every small cell on one band, hearing the others' users) costs against orthogonal
bands. Asserts nothing.

    .venv/bin/python scripts/bench_hetnet_cells.py [--tasks 48] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.runners.sim_hetnet import simulate_hetnet
from emu.runners.solve import solve
from emu.scenario import Scenario, load_scenario

BASELINES = ("ad", "uniform_bandwidth", "max_batching", "fixed_length")


def _scenario(tasks: int, cells: int, seed: int, reuse: str, band_hz: float) -> Scenario:
    radio = {"small_cells": cells, "spacing_m": 150.0, "shadowing_db": 8.0, "reuse": reuse}
    return load_scenario(
        None,
        preset="hetnet",
        overrides={
            "users.count": tasks,
            "sim.seed": seed,
            "hetnet.radio": radio,
            "hetnet.acceptance": "expected",
            "hetnet.bandwidth_hz": band_hz,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--band", type=float, default=1e6, help="each small cell's band [Hz]")
    args = ap.parse_args()
    print(f"# {platform.node() if os.environ.get('BENCH_HOST') else 'this machine'}, "
          f"{os.cpu_count()} cores; {args.tasks} tasks, {args.seeds} seeds, "
          f"{args.band / 1e6:g} MHz a small cell, 8 dB shadowing")  # fmt: skip
    print("cells | reuse | planner mean [ms] | " + " | ".join(f"gain on {b}" for b in BASELINES)
          + " | sim error (planner) | cells used | wall [s]")  # fmt: skip
    for cells, reuse in ((1, "orthogonal"), (2, "orthogonal"), (4, "orthogonal"), (4, "shared")):
        means: list[float] = []
        errors: list[float] = []
        used: list[int] = []
        gains: dict[str, list[float]] = {b: [] for b in BASELINES}
        t0 = time.perf_counter()
        for seed in range(1, args.seeds + 1):
            sc = _scenario(args.tasks, cells, seed, reuse, args.band)
            out = solve(sc)
            means.append(out["latency_ms"]["mean"])
            used.append(out["small_cells"])
            for b in BASELINES:
                gains[b].append(out["gain_pct"][b])
            sim = simulate_hetnet(sc, ["hetnet"])
            errors.append(sim["results"]["hetnet"]["error_pct"])
        mean_gain = " | ".join(
            f"{sum(g) / len(g):.1f}% ({min(g):.1f}..{max(g):.1f})" for g in gains.values()
        )
        print(f"{cells} | {reuse} | {sum(means) / len(means):.0f} | {mean_gain} | "
              f"{min(errors):+.2f}..{max(errors):+.2f}% | {sorted(set(used))} | "
              f"{time.perf_counter() - t0:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
