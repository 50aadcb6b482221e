#!/usr/bin/env python3
"""Main-job benchmark (root): the planner's policies measured against predicted on Mininet with
0, 5 and 20 ms of jitter on every user's links (or the cases asked for), and the main job's wall
time.

The jitter cases: synthetic backends with profile timing (the paper's devices) over fixed 3 ms
links, so the figures isolate the network; each case is one `draftnet run` of every policy in
``--policies``. Then (unless ``--no-main``) the main job exactly as `make run` runs it (the
embedded default), for its figures and wall time.

    sudo .venv/bin/python scripts/bench_run.py [--users 4] [--duration 30]
        [--policies dipsd,jitter-aware] [--cases 0,5,20,mixed,loss] [--seeds 1] [--no-main]
        [--out DIR]

Cases: a jitter level in ms on every user's links; ``mixed``, users whose links differ (0, 5,
10 and 20 ms of jitter in turn); ``loss``, links that retransmit 3% of messages 200 ms late
(1 ms of jitter). Each seed is its own run (its own draws of every link).

``--out DIR`` keeps every run's scenario and run directory (its records, summary and node logs)
under DIR, ``<case>-<seed>.toml`` and ``run-<case>-<seed>/``, to explain a run that measured
apart from the others; without it they go to a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
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


def case_toml(case: str, users: int, seed: int) -> str:
    """The scenario of one case (see the module docstring)."""
    head = f'[sim]\nseed = {seed}\n[models]\nkind = "synthetic"\n[network]\nmodel = "fixed"\n'
    if case == "mixed":
        levels = (0.0, 5.0, 10.0, 20.0)
        each = "".join(f"[[users.each]]\njitter_ms = {levels[i % 4]}\n" for i in range(users))
        return head + each
    if case == "loss":
        return head + "jitter_ms = 1.0\nloss = 0.03\nrto_ms = 200.0\n"
    return head + f"jitter_ms = {float(case)}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--policies", default="dipsd", help="comma-separated (default: dipsd)")
    ap.add_argument("--cases", default="0,5,20", help="comma-separated (see above)")
    ap.add_argument("--seeds", type=int, default=1, help="runs of each case, seeds 0..n-1")
    ap.add_argument("--no-main", action="store_true", help="skip the main job")
    ap.add_argument("--out", type=Path, help="keep every run's scenario and records here")
    args = ap.parse_args()
    policies = args.policies.split(",")
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    print(f"## on Mininet, {args.users} users, {args.duration:g} s, synthetic, profile timing")
    print(
        "| case | seed | policy | measured tok/s | predicted tok/s | measured / predicted "
        "| late drafts | replans | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:
        if args.out is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            tmp = str(args.out)
            print(f"runs kept in {args.out}")
        for case in args.cases.split(","):
            for seed in range(args.seeds):
                sc = Path(tmp) / f"{case}-{seed}.toml"
                sc.write_text(case_toml(case, args.users, seed))
                doc, wall = run(
                    [str(sc), "--users", str(args.users), "--duration", str(args.duration),
                     *[a for p in policies for a in ("--policy", p)],
                     "--out", str(Path(tmp) / f"run-{case}-{seed}")]
                )  # fmt: skip
                for policy in policies:
                    r = doc["results"][policy]
                    print(
                        f"| {case} | {seed} | {policy} | {r['throughput_tok_s']:.2f} | "
                        f"{r['predicted_tok_s']:.2f} | "
                        f"{r['throughput_tok_s'] / r['predicted_tok_s']:.3f} | "
                        f"{r['late_drafts']} | {r['replans']} | {wall:.0f} |",
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
