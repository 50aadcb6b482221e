#!/usr/bin/env python3
"""Main-job benchmark (root): the planner's policies measured against predicted on Mininet with
0, 5 and 20 ms of jitter on every user's links, and the main job's wall time.

The jitter cases: synthetic backends with profile timing (the paper's devices) over fixed 3 ms
links, so the figures isolate the network; each case is one `draftnet run` of every policy in
``--policies``. Then (unless ``--no-main``) the main job exactly as `make run` runs it (the
embedded default), for its figures and wall time.

    sudo .venv/bin/python scripts/bench_run.py [--users 4] [--duration 30]
        [--policies dipsd,jitter-aware] [--no-main]
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

ROOT = Path(__file__).parents[1]


def run(args: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(r.stdout), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--policies", default="dipsd", help="comma-separated (default: dipsd)")
    ap.add_argument("--no-main", action="store_true", help="skip the main job")
    args = ap.parse_args()
    policies = args.policies.split(",")
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    print(f"## on Mininet, {args.users} users, {args.duration:g} s, synthetic, profile timing")
    print(
        "| jitter ms | policy | measured tok/s | predicted tok/s | measured / predicted "
        "| late drafts | replans | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for jitter in (0.0, 5.0, 20.0):
            sc = Path(tmp) / f"j{jitter:g}.toml"
            sc.write_text(
                f'[network]\nmodel = "fixed"\njitter_ms = {jitter}\n[models]\nkind = "synthetic"\n'
            )
            doc, wall = run(
                [str(sc), "--users", str(args.users), "--duration", str(args.duration),
                 *[a for p in policies for a in ("--policy", p)],
                 "--out", str(Path(tmp) / f"run{jitter:g}")]
            )  # fmt: skip
            for policy in policies:
                r = doc["results"][policy]
                print(
                    f"| {jitter:g} | {policy} | {r['throughput_tok_s']:.2f} | "
                    f"{r['predicted_tok_s']:.2f} | "
                    f"{r['throughput_tok_s'] / r['predicted_tok_s']:.3f} | {r['late_drafts']} | "
                    f"{r['replans']} | {wall:.0f} |",
                    flush=True,
                )
        if args.no_main:
            return
        # The main job as `make run` runs it: the embedded default, nothing changed.
        doc, wall = run(["--out", str(Path(tmp) / "main")])
    print(
        f"## the main job (make run): {doc['users']} users in a UMi cell, {doc['models']} models, "
        f"{doc['shaping']} shaping, {doc['duration_s']:g} s per policy"
    )
    print(
        "| policy | tok/s | predicted | vs ad | acceptance | late | overruns | lossless (tokens) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ad = doc["results"].get("ad", {}).get("throughput_tok_s")
    for pol, r in doc["results"].items():
        acc = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        vs = f"{r['throughput_tok_s'] / ad:.2f}" if ad else "-"
        print(
            f"| {pol} | {r['throughput_tok_s']:.2f} | {r['predicted_tok_s']:.2f} | {vs} | {acc} | "
            f"{r['late_drafts']} | {sum(r['overruns'].values())} | {r['lossless']} "
            f"({r.get('lossless_checked', {}).get('tokens', 0)}) |"
        )
    print(
        "fidelity: "
        + ", ".join(f"{f['link']} {'ok' if f['ok'] else 'OUT'}" for f in doc["fidelity"])
    )
    print(f"wall time: {wall:.0f} s")


if __name__ == "__main__":
    main()
