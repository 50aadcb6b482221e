"""DSD's simulation at the authors' baseline size: each window policy's wall time and figures
for ``dsd-full`` (80 drafters, 20 verifiers) over 10 simulated minutes (issue 18's goal: under
a minute a policy), and for each router under ``specpp``.

    python scripts/bench_dsd_sim.py [--preset dsd-full] [--duration 600] [--routers]
"""

from __future__ import annotations

import argparse
import time

from emu.planner import get_policy
from emu.runners.sim_dsd import simulate_dsd_policy
from emu.scenario import load_scenario

POLICIES = ("static", "backoff", "specpp", "awc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="dsd-full")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--routers", action="store_true", help="also every router under specpp")
    a = ap.parse_args()
    sc = load_scenario(preset=a.preset)
    problem = sc.dsd_problem()
    print(f"{a.preset}: {len(problem.drafters)} drafters, {len(problem.verifiers)} verifiers, "
          f"{a.duration:g} simulated s, router {problem.router}")  # fmt: skip
    print("| policy | router | wall s | tok/s | conversations | rounds | acceptance | mean "
          "window | TTFT p50 / p95 ms | TPOT p50 / p95 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = [(p, problem.router) for p in POLICIES]
    if a.routers:
        from emu.planner.dsd.routing import ROUTERS

        cases += [("specpp", r) for r in ROUTERS if r != problem.router]
    from dataclasses import replace

    for policy, router in cases:
        prob = replace(problem, router=router)
        t = time.perf_counter()
        run = simulate_dsd_policy(
            prob, get_policy(policy).plan(prob), duration_s=a.duration, seed=sc.sim.seed
        )
        wall = time.perf_counter() - t
        s = run.summary()
        print(
            f"| {policy} | {router} | {wall:.1f} | {s['throughput_tok_s']:.0f} | "
            f"{s['conversations']} | {s['rounds']} | {s['acceptance_rate']:.3f} | "
            f"{s['mean_window']:.2f} | {s['ttft_ms']['p50']:.0f} / {s['ttft_ms']['p95']:.0f} | "
            f"{s['tpot_ms']['p50']:.1f} / {s['tpot_ms']['p95']:.1f} |"
        )


if __name__ == "__main__":
    main()
