#!/usr/bin/env python3
"""Radio benchmark: time to generate link states for many users, each case in a fresh process
(a cold start, as `draftnet channel` has), and what the links look like; the TR 38.901
large-scale calibration (coupling loss and geometry CDFs against 3GPP's published ones);
handovers against speed; ``draftnet channel``'s wall time against generation alone.

Prints figures for BENCHMARKS.md; asserts nothing.

    .venv/bin/python scripts/bench_channel.py [--users 100] [--duration 60] [--only SECTION]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from channel_models.calibration import PERCENTILES, REFERENCE

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
    ("1 ms slots, PF, NR, 7 omni sites", {"numerology": 0, "sites": 7}),
    ("1 ms slots, PF, NR, 7 sites x 3 sectors", {"numerology": 0, "sites": 7, "sectors": 3}),
    (
        "1 ms slots, RR, NR, 7 sites x 3 sectors",
        {"numerology": 0, "sites": 7, "sectors": 3, "scheduler": "rr"},
    ),
    (
        "1 ms slots, min-max, NR, 7 sites x 3 sectors",
        {"numerology": 0, "sites": 7, "sectors": 3, "scheduler": "minmax"},
    ),
    (
        "1 ms slots, PF, NR, 7 sites x 3 sectors, linear at 10 m/s (handovers)",
        {"numerology": 0, "sites": 7, "sectors": 3, "mobility": "linear", "speed_mps": 10.0},
    ),
    (
        "1 ms slots, PF, NR, 19 sites x 3 sectors",
        {"numerology": 0, "sites": 19, "sectors": 3},
    ),
]

SPEEDS_MPS = (1.0, 3.0, 8.3, 16.7, 33.3)  # 3.6, 11, 30, 60 and 120 km/h

CALIBRATE = """
import json, sys
import numpy as np
from channel_models.cell import generate
from channel_models.config import RadioConfig
from channel_models.calibration import calibration_config
scenario, pct = sys.argv[1], json.loads(sys.argv[2])
tr = generate(calibration_config(scenario), 57 * 60, 0.01, np.random.default_rng(0))
print(json.dumps({"coupling": np.percentile(-tr.coupling_loss_db[:, 0], pct).tolist(),
    "geometry": np.percentile(tr.geometry_db[:, 0], pct).tolist()}))
"""

HANDOVERS = """
import json, sys
import numpy as np
from channel_models.cell import generate
from channel_models.config import RadioConfig
speed, duration = float(sys.argv[1]), float(sys.argv[2])
cfg = RadioConfig(sites=7, sectors=3, mobility="linear", speed_mps=speed, numerology=0)
tr = generate(cfg, 42, duration, np.random.default_rng(0))
moves = 0
back = 0
for u in range(tr.cell.shape[0]):
    at = np.flatnonzero(np.diff(tr.cell[u])) + 1
    moves += at.size
    for a, b in zip(at[:-1], at[1:]):  # back to the cell it left within a second: ping-pong
        if tr.cell[u, b] == tr.cell[u, a - 1] and tr.t_s[b] - tr.t_s[a] < 1.0:
            back += 1
print(json.dumps({"per_user_minute": moves / 42 / duration * 60.0,
    "ping_pong": back / max(moves, 1), "outage": float((tr.down.rate_bps <= 1.0).mean())}))
"""

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


def _python(code: str, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return dict(json.loads(r.stdout))


def calibration() -> None:
    print("## TR 38.901 large-scale calibration at 6 GHz against 3GPP's companies' mean")
    print("(3420 users, 60 a sector; draftnet minus the reference at each percentile, dB)")
    print("| scenario | quantity | " + " | ".join(f"{p}%" for p in PERCENTILES) + " |")
    print("|---|---|" + "---|" * len(PERCENTILES))
    for scenario in REFERENCE:
        got = _python(CALIBRATE, scenario, json.dumps(PERCENTILES))
        for quantity in ("coupling", "geometry"):
            cells = [
                f"{g:.1f} ({g - r:+.1f})"
                for g, r in zip(got[quantity], REFERENCE[scenario][quantity], strict=True)
            ]
            print(f"| {scenario} | {quantity} | " + " | ".join(cells) + " |", flush=True)


def handovers(duration: float) -> None:
    print(f"## Handovers: 7 sites x 3 sectors, UMi 200 m, 42 users moving straight, {duration:g} s")
    print("| speed m/s | handovers a user a minute | ping-pong share | downlink outage ticks |")
    print("|---|---|---|---|")
    for v in SPEEDS_MPS:
        d = _python(HANDOVERS, str(v), str(duration))
        print(
            f"| {v:g} | {d['per_user_minute']:.2f} | {d['ping_pong']:.2f} | {d['outage']:.3f} |",
            flush=True,
        )


def channel_wall(users: int, duration: float) -> None:
    print(f"## draftnet channel, {users} users x {duration:g} s: wall against generation alone")
    print(
        "| case | generate s | in-process to summary.json s | process wall, plots included s "
        "| process / generate |"
    )
    print("|---|---|---|---|---|")
    for name, extra in (
        ("default cell", []),
        ("7 sites x 3 sectors", ["--set", "radio.sites=7", "--set", "radio.sectors=3"]),
    ):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = subprocess.run(
                [str(ROOT / ".venv/bin/draftnet"), "channel", "--users", str(users), "--duration",
                 str(duration), "--json", "--out", out, *extra],
                capture_output=True, text=True, cwd=ROOT, check=True,
            )  # fmt: skip
            total = time.perf_counter() - t0
        d = json.loads(r.stdout)
        print(
            f"| {name} | {d['generate_s']:.2f} | {d['wall_s']:.2f} | {total:.2f} | "
            f"{total / d['generate_s']:.2f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--only", choices=("generation", "calibration", "handovers", "channel"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()} python {platform.python_version()}")
    if args.only in (None, "calibration"):
        calibration()
    if args.only in (None, "handovers"):
        handovers(args.duration)
    if args.only in (None, "channel"):
        channel_wall(args.users, args.duration)
    if args.only not in (None, "generation"):
        return
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
