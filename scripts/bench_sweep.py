#!/usr/bin/env python3
"""A sweep at scale, end to end: ``--cases`` simulation cases (``--users`` users for
``--duration`` virtual s each, dipsd and ad-batch, synthetic models, a seed each) through
``run_study`` on a local Dask cluster of ``--workers`` workers, against a sample of the same
cases run one after another in this process.

Prints, for BENCHMARKS.md: the time a case takes alone (the sample), the sweep's wall, its
speed-up over one worker (the sample's time a case x the cases / the wall) and the engine's
overhead (the share of the wall beyond the ideal of one worker's time / the workers: start-up,
scheduling, bringing each case's files back, writing the tables, and the workers' contention
for the machine). Asserts nothing.

    .venv/bin/python scripts/bench_sweep.py                      # 1000 cases of 14 users x 60 s
    .venv/bin/python scripts/bench_sweep.py --cases 100 --sample 10
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from emu.sweep import DaskEngine, InProcess, run_study
from emu.sweep.spec import Study


def _study(cases: int, users: int, duration: float, first_seed: int = 1) -> Study:
    return Study(
        name="scale",
        level="sim",
        policies=("dipsd", "ad-batch"),
        seeds=tuple(range(first_seed, first_seed + cases)),
        preset="dipsd-paper",
        scenario=None,
        base_set={
            "models.kind": "synthetic",
            "network.model": "fixed",
            "users.count": users,
            "sim.duration_s": duration,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=40, help="cases run alone for the baseline")
    ap.add_argument("--users", type=int, default=14)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        out = Path(tmp)
        # the baseline: seeds the sweep does not share (no case is reused)
        sample = _study(args.sample, args.users, args.duration, first_seed=10**6)
        t0 = time.perf_counter()
        run_study(sample, out / "alone", engine=InProcess())
        alone = (time.perf_counter() - t0) / args.sample
        print(
            f"one worker: {args.sample} cases of {args.users} users x {args.duration:g} virtual s, "
            f"{alone:.2f} s a case"
        )
        study = _study(args.cases, args.users, args.duration)
        t0 = time.perf_counter()
        with DaskEngine(workers=args.workers) as engine:
            result = run_study(study, out / "sweep", engine=engine)
        wall = time.perf_counter() - t0
        ideal = alone * args.cases / args.workers
        print(
            f"| cases | workers | s a case alone | sweep wall s | speed-up over one worker | "
            f"overhead | failed |\n|---|---|---|---|---|---|---|\n"
            f"| {args.cases} | {args.workers} | {alone:.2f} | {wall:.0f} | "
            f"{alone * args.cases / wall:.2f} | {max(0.0, wall - ideal) / wall:.1%} | "
            f"{result['failed']} |"
        )


if __name__ == "__main__":
    main()
