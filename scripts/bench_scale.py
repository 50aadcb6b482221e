#!/usr/bin/env python3
"""Emulation scale benchmark (root): how many users one host emulates while each policy's
measured throughput stays within 10% of its prediction, and what each user costs.

Each case is one ``draftnet run`` with synthetic backends and profile timing (the paper's
devices), on fixed 3 ms links or on the default radio cell, for a given user count and time
scale. "predicted" is the run's (the planner's on the scenario's priors); "own plans" is what
the verifiers' own plans predicted over the steady window, made from what they measured of the
links and devices: the gap between the two is what the host adds that the scenario does not
say, the gap from own plans to measured is what the plans do not expect (late drafts, stalls).
While it runs, every node process is sampled once a second from /proc: the CPU time and the
resident memory of the user processes (per user) and of the verifier.

    sudo .venv/bin/python scripts/bench_scale.py [--users 8,24,48,100] [--scale 1,auto]
        [--links fixed,radio] [--policy dipsd --policy ad-batch] [--duration 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
TICK_S = os.sysconf("SC_CLK_TCK")


def _nodes() -> dict[int, tuple[str, str, float, float]]:
    """Every live node process: its policy, its role, CPU seconds so far and resident MB."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().split(b"\0")
            if b"emu.runners.node" not in cmd:
                continue
            args = [a.decode() for a in cmd]
            at = args.index("emu.runners.node")
            policy, role = Path(args[at + 1]).parent.name, args[at + 2]
            stat = (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / TICK_S
            rss = next(
                int(line.split()[1]) / 1024
                for line in (Path("/proc") / pid / "status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (OSError, ValueError, StopIteration, IndexError):
            continue
        out[int(pid)] = (policy, role, cpu, rss)
    return out


class Sampler(threading.Thread):
    """The node processes' last CPU reading and largest memory, by pid, while a run goes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, tuple[str, str, float, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for pid, (policy, role, cpu, rss) in _nodes().items():
                old = self.seen.get(pid)
                self.seen[pid] = (policy, role, cpu, max(rss, old[3] if old else 0.0))

    def per_role(self, policy: str, role: str) -> tuple[int, float, float]:
        """One policy's processes of ``role``: how many, their CPU seconds and MB in all."""
        rows = [v for v in self.seen.values() if v[:2] == (policy, role)]
        return len(rows), sum(r[2] for r in rows), sum(r[3] for r in rows)


def own_plans_tok_s(run: Path, window: tuple[float, float]) -> float | None:
    """What the verifiers' own plans predicted over the steady window, time-weighted: the
    plans they made from what they measured, not the scenario's priors."""
    total = 0.0
    for f in run.glob("events-*.jsonl"):
        plans = [
            (r["t"], r["predicted_tok_s"])
            for r in map(json.loads, f.read_text().splitlines())
            if r.get("ev") == "plan"
        ]
        if not plans:
            continue
        t0, t1 = window
        acc = 0.0
        for k, (t, tok_s) in enumerate(plans):
            start = max(t, t0)
            end = min(plans[k + 1][0] if k + 1 < len(plans) else t1, t1)
            acc += tok_s * max(0.0, end - start)
        total += acc / max(t1 - t0, 1e-9)
    return total or None


def case(users: int, scale: str, links: str, policies: list[str], duration: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sc = Path(tmp) / "s.toml"
        net = '[network]\nmodel = "fixed"\n' if links == "fixed" else ""
        sc.write_text(f'{net}[models]\nkind = "synthetic"\n')
        args = [str(sc), "--users", str(users), "--duration", str(duration), "--json"]
        args += ["--time-scale", scale, "--out", str(Path(tmp) / "run")]
        for p in policies:
            args += ["--policy", p]
        sampler = Sampler()
        sampler.start()
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "emu.cli", "run", *args],
            capture_output=True, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        if r.returncode != 0:
            print(f"| {users} | {links} | {scale} | failed: {r.stderr.strip()[-300:]} |")
            return
        doc = json.loads(r.stdout)
        own = {
            p: own_plans_tok_s(Path(tmp) / "run" / p, tuple(res["steady_window_s"]))
            for p, res in doc["results"].items()
        }
    for policy, res in doc["results"].items():
        n_users, user_cpu, user_mb = sampler.per_role(policy, "user")
        _, edge_cpu, edge_mb = sampler.per_role(policy, "edge")
        span = res.get("span_s", 0.0)
        ratio = res["throughput_tok_s"] / res["predicted_tok_s"]
        mine = own[policy]
        own_ratio = f"{res['throughput_tok_s'] / mine:.3f}" if mine else "-"
        print(
            f"| {users} | {links} | {doc['time_scale']:g} | {policy} "
            f"| {res['throughput_tok_s']:.1f} | {res['predicted_tok_s']:.1f} | {ratio:.3f} "
            f"| {own_ratio} "
            f"| {res['late_drafts']} "
            f"| {sum(res['overruns'].values())} | {res['replans']} "
            f"| {user_cpu / max(n_users, 1) / max(span, 1e-9) * 100:.1f} "
            f"| {user_mb / max(n_users, 1):.0f} | {edge_cpu / max(span, 1e-9) * 100:.0f} "
            f"| {edge_mb:.0f} | {wall:.0f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="8,24,48,100")
    ap.add_argument("--scale", default="1,auto")
    ap.add_argument("--links", default="fixed,radio")
    ap.add_argument("--policy", action="append", dest="policies")
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    policies = args.policies or ["dipsd", "ad-batch"]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")  # fmt: skip
    print(
        "| users | links | time scale | policy | tok/s | predicted | measured / predicted "
        "| measured / own plans | late drafts | overruns | replans "
        "| CPU % of a core per user (wall) | MB per user "
        "| verifier CPU % (wall) | verifier MB | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for links in args.links.split(","):
        for users in (int(u) for u in args.users.split(",")):
            for scale in args.scale.split(","):
                case(users, scale, links, policies, args.duration)


if __name__ == "__main__":
    main()
