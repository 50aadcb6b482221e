#!/usr/bin/env python3
"""How long the deployment takes to recover from each fault, and what it committed before and
after: ``draftnet run`` with a ``[faults]`` section (root, Mininet), synthetic backends paced to
the default profile.

    sudo .venv/bin/python scripts/bench_faults.py [--users 4] [--duration 36]

Faults (modelled seconds from the workload's start): user 0's link cut at 6 s for 3 s; user 1
killed at 14 s and started again 1 s later; the edge killed at 24 s and started again 1 s
later. Recovery: from the end of the fault (the link restored, the process started again) to
the first round a user commits after it (for the edge, to every user's first round). The rate
is every user's committed tokens a second over the 5 s before the fault and the 5 s after its
recovery.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """
[network]
model = "fixed"
[models]
kind = "synthetic"
[sim]
max_new_tokens = 80
[faults]
outages = [{user = 0, at_s = 6.0, for_s = 3.0}]
kills = [{node = "u1", at_s = 14.0, restart_after_s = 1.0},
         {node = "edge", at_s = 24.0, restart_after_s = 1.0}]
"""


def _rounds(pdir: Path, users: int, t0: float) -> dict[int, list[tuple[float, int]]]:
    out = {}
    for i in range(users):
        lines = (pdir / f"events-u{i}.jsonl").read_text().splitlines()
        out[i] = sorted((r["t"] - t0, r["committed"]) for r in map(json.loads, lines)
                        if r["ev"] == "round")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--duration", type=float, default=36.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "s.toml").write_text(SCENARIO)
        out = d / "run"
        cmd = [sys.executable, "-m", "emu.cli", "run", str(d / "s.toml"), "--users",
               str(args.users), "--duration", str(args.duration), "--policy", "dipsd", "--json",
               "--out", str(out)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        res = json.loads(r.stdout)["results"]["dipsd"]
        pdir = out / "dipsd"
        plans = [json.loads(x) for x in (pdir / "events-edge.jsonl").read_text().splitlines()]
        t0 = min(p["t"] for p in plans if p["ev"] == "plan")  # the workload's clock, ~0
        rounds = _rounds(pdir, args.users, t0)
    done = res["faults_injected"]

    def ended(kind: str, target: str) -> dict[str, float]:
        return next(f for f in done if f["kind"] == kind and f["target"] == target)

    ends = {("outage", "u0"): ended("restore", "u0"), ("restart", "u1"): ended("restart", "u1"),
            ("restart", "edge"): ended("restart", "edge")}  # fmt: skip
    starts = {("outage", "u0"): 6.0, ("restart", "u1"): 14.0, ("restart", "edge"): 24.0}
    rows = []
    for (kind, target), end in ends.items():
        back = end["t_s"]
        whom = range(args.users) if target == "edge" else [int(target[1:])]
        firsts = [next((t for t, _ in rounds[i] if t > back), float("nan")) for i in whom]
        recovered = max(firsts)
        before = sum(c for i in rounds for t, c in rounds[i] if starts[(kind, target)] - 5 <= t
                     < starts[(kind, target)]) / 5  # fmt: skip
        after = sum(c for i in rounds for t, c in rounds[i] if recovered <= t < recovered + 5) / 5
        rows.append((f"{kind} {target}", back, recovered - back, before, after))
    print(f"{args.users} users, {args.duration:g} s, synthetic backends; deaths {res['deaths']}")
    print("| fault | over at (s) | recovery (s) | tok/s 5 s before | tok/s 5 s after recovery |")
    print("|---|---|---|---|---|")
    for name, back, rec, before, after in rows:
        print(f"| {name} | {back:.1f} | {rec:.2f} | {before:.1f} | {after:.1f} |")
    committed = {i: sum(c for _, c in rounds[i]) for i in rounds}
    tok_s, predicted = res["throughput_tok_s"], res["predicted_tok_s"]
    print(
        f"committed tokens by user: {committed}; the run's throughput {tok_s:.1f} tok/s "
        f"(predicted {predicted:.1f})"
    )


if __name__ == "__main__":
    main()
