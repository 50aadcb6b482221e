#!/usr/bin/env python3
"""Radio benchmark: time to generate link states for many users, each case in a fresh process
(a cold start, as `draftnet channel` has), and what the links look like.

Prints figures for BENCHMARKS.md; asserts nothing.

    .venv/bin/python scripts/bench_channel.py [--users 100] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
CASES = [
    ("1 ms slots (mu 0), PF, NR", {"numerology": 0}),
    ("1 ms slots (mu 0), RR, NR", {"numerology": 0, "scheduler": "rr"}),
    ("1 ms slots (mu 0), min-max, NR", {"numerology": 0, "scheduler": "minmax"}),
    ("1 ms slots (mu 0), PF, Shannon", {"numerology": 0, "link": "shannon"}),
    ("0.5 ms slots (mu 1, the default), PF, NR", {}),
    (
        "1 ms slots, PF, NR, random waypoint at 3 m/s",
        {"numerology": 0, "mobility": "waypoint", "speed_mps": 3.0},
    ),
    ("1 ms slots, PF, NR, 7 cells", {"numerology": 0, "cells": 7}),
]

ONE = """
import json, sys, time
import numpy as np
from channel_models.cell import generate
from channel_models.config import RadioConfig
users, duration, kw = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
t0 = time.perf_counter()
tr = generate(RadioConfig(**kw), users, duration, np.random.default_rng(0))
s = time.perf_counter() - t0
print(json.dumps({"s": s, "up_mbps": float(tr.up.rate_bps.mean() / 1e6),
    "down_mbps": float(tr.down.rate_bps.mean() / 1e6), "up_ms": float(tr.up.delay_ms.mean()),
    "down_ms": float(tr.down.delay_ms.mean()), "loss": float(tr.up.loss.mean()),
    "sinr": float(tr.sinr_down_db.mean())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    print(f"## {args.users} users x {args.duration:g} s of link states, a fresh process per case")
    print(
        "| case | generate s | mean up / down Mbit/s per user | mean delay up / down ms "
        "| uplink loss | mean DL SINR dB |"
    )
    print("|---|---|---|---|---|---|")
    for name, kw in CASES:
        r = subprocess.run(
            [sys.executable, "-c", ONE, str(args.users), str(args.duration), json.dumps(kw)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        d = json.loads(r.stdout)
        print(
            f"| {name} | {d['s']:.2f} | {d['up_mbps']:.2f} / {d['down_mbps']:.2f} | "
            f"{d['up_ms']:.1f} / {d['down_ms']:.1f} | {d['loss']:.4f} | {d['sinr']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
