"""DSD's trained AWC against the other window policies and every constant window, over seeds:
throughput and TPOT with 95% confidence intervals (Student's t over seeds), and AWC's paired
difference from each (issue 18: "AWC with shipped weights beats constant windows").

Each seed draws the deployment (capabilities, each pair's round trip) and the run alike. The
constants are ``static`` at each allowed window; a window of 1 runs fused (the presets' hybrid
mode). ``--drafters`` repeats the table at other loads (5 verifiers in the ``dsd`` preset).

    python scripts/bench_dsd_awc.py [--preset dsd] [--seeds 10] [--duration 60]
                                    [--drafters 20,60,100] [--rtt-scale 1] [--awc FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from emu.planner import get_policy
from emu.planner.dsd.awc import ALLOWED_WINDOWS, Awc, AwcNetwork
from emu.planner.dsd.windows import AwcPolicy, Static, WindowPolicy
from emu.runners.sim_dsd import simulate_dsd_policy
from emu.scenario import load_scenario

T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 8: 2.36, 10: 2.26, 15: 2.14, 20: 2.09}


def _t95(n: int) -> float:
    return T95.get(n, T95[max(k for k in T95 if k <= n)] if n > 2 else 12.71)


def _ci(xs: list[float]) -> str:
    a = np.asarray(xs)
    half = _t95(len(a)) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return f"{a.mean():.1f} ± {half:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="dsd")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--drafters", default="", help="loads to repeat at (default: the preset's)")
    ap.add_argument("--rtt-scale", type=float, default=1.0)
    ap.add_argument("--awc", default="", help="AWC's weights (default: draftnet's trained)")
    a = ap.parse_args()
    settings = {"dsd.rtt_scale": a.rtt_scale, "dsd.awc_weights": a.awc}
    base = load_scenario(preset=a.preset, overrides=settings)
    loads = [int(x) for x in a.drafters.split(",")] if a.drafters else [base.dsd.drafters]
    for drafters in loads:
        print(f"\n{a.preset}, {drafters} drafters, round trips x{a.rtt_scale:g}, mode "
              f"{base.dsd.mode}, {a.seeds} seeds of {a.duration:g} simulated s")  # fmt: skip
        print("| policy | tok/s | TPOT mean ms | TPOT p95 ms | mean window | AWC's tok/s "
              "gain | seeds AWC ahead |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        rows: dict[str, list[dict[str, float]]] = {}
        for seed in range(a.seeds):
            sc = load_scenario(preset=a.preset, overrides={
                **settings, "dsd.drafters": drafters, "sim.seed": seed})  # fmt: skip
            problem = sc.dsd_problem()
            makers: dict[str, Callable[[], WindowPolicy]] = {
                p: get_policy(p).plan(problem) for p in ("awc", "static", "backoff", "specpp")
            }
            hand = replace(problem, awc=AwcNetwork.hand_set())
            makers["awc hand-set"] = lambda: AwcPolicy(Awc(network=hand.awc))  # noqa: B023
            for g in ALLOWED_WINDOWS:
                makers[f"constant {g}"] = lambda g=g: Static(default=g)  # type: ignore[misc]
            for name, make in makers.items():
                s = simulate_dsd_policy(problem, make, duration_s=a.duration, seed=seed).summary()
                rows.setdefault(name, []).append({
                    "tok_s": s["throughput_tok_s"], "tpot": s["tpot_ms"]["mean"],
                    "tpot95": s["tpot_ms"]["p95"], "window": s["mean_window"]})  # fmt: skip
        awc = [r["tok_s"] for r in rows["awc"]]
        for name, rs in rows.items():
            tok = [r["tok_s"] for r in rs]
            gain = [100 * (x / y - 1) for x, y in zip(awc, tok, strict=True)]
            ahead = sum(x > y for x, y in zip(awc, tok, strict=True))
            print(f"| {name} | {_ci(tok)} | {_ci([r['tpot'] for r in rs])} | "
                  f"{_ci([r['tpot95'] for r in rs])} | {np.mean([r['window'] for r in rs]):.2f} "
                  f"| {_ci(gain)}% | {ahead}/{len(rs)} |")  # fmt: skip


if __name__ == "__main__":
    main()
