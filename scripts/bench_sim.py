#!/usr/bin/env python3
"""Simulation benchmark: wall time of `draftnet sim` and events per second.

Prints figures for BENCHMARKS.md; asserts nothing. Synthetic backends, the paper's model pair
and 3 ms links (the dipsd-paper preset), one policy per run.

    .venv/bin/python scripts/bench_sim.py [--case 14:120:dipsd] [--case 1000:60:dipsd]
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
    args = ap.parse_args()
    cases = args.case or ["14:120:dipsd", "1000:60:dipsd"]
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
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


if __name__ == "__main__":
    main()
