"""The jitter-aware policy against dipsd in ``draftnet sim`` (synthetic models): throughput and
each policy's error against its own prediction, at 0, 5, 10 and 20 ms of half-normal jitter
each way on fixed links, on users whose links differ (0, 5, 10 and 20 ms in turn), on links
that retransmit 3% of messages 200 ms or 1 s late (later than a batch's turn), and on the
default radio cell with users walking (waypoint, 1.5 m/s); then solve times at 14 and 200
heterogeneous users and 1000 identical ones, with 10 ms of jitter and the edge's deadline.

    python scripts/bench_jitter_policy.py [--seeds 10] [--duration 60] [--users 6]
        [--plot docs/jitter-aware.png] [--no-sim] [--no-solve] [--cases "3% loss,20 ms"]
        [--workers 2]

The gain is the mean over seeds of jitter-aware's throughput over dipsd's on the same seed
(the same links), with a 95% confidence interval (Student's t over the paired seeds).
Prints markdown rows for BENCHMARKS.md; asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.planner import plan_for
from emu.planner.lattice import LinkNoise
from emu.planner.model import CloseRule
from emu.planner.stochastic import with_noise
from emu.runners.sim import simulate
from emu.scenario import load_scenario
from tests.planner.conftest import paper_problem, random_problem

POLICIES = ("dipsd", "jitter-aware")


def cases(users: int) -> dict[str, dict[str, Any]]:
    fixed: dict[str, Any] = {"network.model": "fixed", "users.count": users}
    out = {f"{j:g} ms": {**fixed, "network.jitter_ms": j} for j in (0.0, 5.0, 10.0, 20.0)}
    levels = (0.0, 5.0, 10.0, 20.0)
    out["mixed 0-20 ms"] = {
        **fixed,
        "users.each": [{"jitter_ms": levels[i % 4]} for i in range(users)],
    }
    out["3% loss"] = {
        **fixed,
        "network.jitter_ms": 1.0,
        "network.loss": 0.03,
        "network.rto_ms": 200.0,
    }
    # A retransmission later than a batch's turn: its draft misses several turns.
    out["3% loss (RTO 1 s)"] = {**out["3% loss"], "network.rto_ms": 1000.0}
    out["radio, walking"] = {
        "network.model": "radio",
        "users.count": users,
        "radio.mobility": "waypoint",
        "radio.speed_mps": 1.5,
    }
    return out


def ci95(xs: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    return float(scipy.stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: each case's throughput of both policies (means over seeds); right: jitter-aware's
    gain over dipsd on the same seeds, with its 95% confidence interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(rows))
    names = [r["links"] for r in rows]
    for k, p in enumerate(POLICIES):
        left.bar(x + (k - 0.5) * 0.38, [r[p] for r in rows], 0.38, label=p)
    left.set_xticks(x, names, rotation=20)
    left.set_ylabel("throughput (tok/s)")
    left.legend(loc="lower left")
    right.bar(x, [r["gain"] for r in rows], 0.6, yerr=[r["gain ci"] for r in rows], capsize=4)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(x, names, rotation=20)
    right.set_ylabel("jitter-aware over dipsd (%)")
    fig.suptitle("draftnet sim, 6 users, paired seeds of 60 s (95% confidence intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _one_seed(over: dict[str, Any], duration: float, seed: int) -> dict[str, Any]:
    """Both policies' results on one seed of one case."""
    sc = load_scenario(
        overrides={"models.kind": "synthetic", "sim.duration_s": duration, "sim.seed": seed, **over}
    )
    return simulate(sc, list(POLICIES))["results"]


def sims(
    seeds: int, duration: float, users: int, only: list[str] | None = None, workers: int = 2
) -> list[dict[str, Any]]:
    """Every case's seeds, ``workers`` simulations at a time (each a process; the results are
    the same as one after another)."""
    rows: list[dict[str, Any]] = []
    print("| links | dipsd tok/s | error | jitter-aware tok/s | error | gain (95% CI) |")
    print("|---|---|---|---|---|---|")
    chosen = {n: o for n, o in cases(users).items() if only is None or n in only}
    t = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        runs = {
            name: [pool.submit(_one_seed, over, duration, seed) for seed in range(seeds)]
            for name, over in chosen.items()
        }
        for name, futures in runs.items():
            thr: dict[str, list[float]] = {p: [] for p in POLICIES}
            err: dict[str, list[float]] = {p: [] for p in POLICIES}
            for future in futures:
                res = future.result()
                for p in POLICIES:
                    thr[p].append(res[p]["throughput_tok_s"])
                    err[p].append(
                        100 * (res[p]["throughput_tok_s"] / res[p]["predicted_tok_s"] - 1)
                    )
            gain = [
                100 * (a / b - 1) for a, b in zip(thr["jitter-aware"], thr["dipsd"], strict=True)
            ]
            cells = [f"{np.mean(thr[p]):.2f} | {np.mean(err[p]):+.1f}%" for p in POLICIES]
            ci = f"{np.mean(gain):+.1f}% (+-{ci95(gain):.1f})"
            print(f"| {name} | {cells[0]} | {cells[1]} | {ci} |", flush=True)
            rows.append(
                {"links": name, **{p: float(np.mean(thr[p])) for p in POLICIES}}
                | {"gain": float(np.mean(gain)), "gain ci": ci95(gain)}
            )
    print(f"<!-- {time.perf_counter() - t:.0f} s, {workers} at a time -->", flush=True)
    return rows


def solve_times() -> None:
    print("| users | dipsd s | jitter-aware s | ratio |")
    print("|---|---|---|---|")
    for users in (14, 200, 1000):
        # Heterogeneous users; at 1000 the paper's identical users, as dipsd's own benchmark
        # (scripts/bench_planner.py) measures it.
        base = (
            paper_problem(users=users)
            if users >= 1000
            else random_problem(np.random.default_rng(users), users)
        )
        # The edge's deadline, as the runners' instances have it (jitter-aware chooses each
        # batch's).
        noisy = with_noise(base, LinkNoise(10.0))
        p = dataclasses.replace(noisy, edge=dataclasses.replace(noisy.edge, close=CloseRule()))
        took = {}
        for pol in POLICIES:
            t = time.perf_counter()
            plan_for(pol, p)
            took[pol] = time.perf_counter() - t
        ratio = took["jitter-aware"] / took["dipsd"]
        print(f"| {users} | {took['dipsd']:.2f} | {took['jitter-aware']:.2f} | {ratio:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--no-solve", action="store_true", help="skip the solve times")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulations")
    ap.add_argument("--plot", type=Path, help="write the throughput plot (PNG) here")
    ap.add_argument("--cases", help="only these cases, comma-separated (the table's names)")
    ap.add_argument("--workers", type=int, default=2, help="simulations at a time")
    args = ap.parse_args()
    if not args.no_sim:
        only = args.cases.split(",") if args.cases else None
        rows = sims(args.seeds, args.duration, args.users, only, args.workers)
        if args.plot:
            plot(rows, args.plot)
    if not args.no_solve:
        solve_times()


if __name__ == "__main__":
    main()
