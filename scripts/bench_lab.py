#!/usr/bin/env python3
"""What lab mode's security and clocks cost, in emulation (root, Mininet):

- the handshake: time to a usable connection, plain TCP against TLS 1.3 (mutual, and the edge's
  certificate alone as token mode has it), dialled from a user's host over a shaped link;
- per round: the same scenario served by ``draftnet edge`` and ``draftnet user`` processes in
  Mininet hosts, insecure, token and mTLS; throughput and mean round time from the edge's
  summary;
- clocks: a user's clock skewed by ``--skew-ms``; the offset the user measured, its error and
  its stated uncertainty.

    sudo .venv/bin/python scripts/bench_lab.py [--seconds 20] [--delay-ms 5] [--skew-ms 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.lab.certs import init_lab  # noqa: E402
from emu.runners.network import star_network, userspace_shaping  # noqa: E402
from emu.scenario import load_scenario, scenario_toml  # noqa: E402
from emu.shaping.spec import LinkPair, LinkSpec  # noqa: E402

DRAFTNET = [sys.executable, "-m", "emu.cli"]
HANDSHAKE_PROBE = """
import sys, time, trio
from pathlib import Path
sys.path.insert(0, {root!r})
from emu.lab.tls import credentials, dial
lab = {lab!r}
cred = credentials(Path(lab) if lab else None, "u0", {auth!r}, serves=False)
async def main():
    out = []
    for _ in range({n}):
        t0 = time.perf_counter()
        s = await dial("10.0.0.2", 7100, cred)
        out.append((time.perf_counter() - t0) * 1e3)
        await s.aclose()
        await trio.sleep(0.06)
    print(sorted(out)[len(out) // 2])
trio.run(main)
"""


def _serve(nw: Any, scenario: Path, creds: Path, auth: str, *, out: Path, seconds: float,
           skew_ms: float) -> dict[str, Any]:  # fmt: skip
    how = ["--insecure"] if auth == "insecure" else ["--lab", str(creds), "--auth", auth]
    edge = nw.edge.popen(
        [*DRAFTNET, "edge", str(scenario), "--listen", "0.0.0.0:7100", *how,
         "--duration", str(seconds), "--out", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    users = [
        nw.user(i).popen(
            [
                *DRAFTNET,
                "user",
                str(scenario),
                "--connect",
                "10.0.0.2:7100",
                *how,
                "--id",
                str(i),
                "--json",
                "--clock-skew-ms",
                str(skew_ms if i == 1 else 0.0),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(nw.users)
    ]
    outs = [p.communicate(timeout=seconds + 60) for p in [edge, *users]]
    if any(p.returncode for p in [edge, *users]):
        raise SystemExit(f"{auth}: a node failed: {[o[1][-500:] for o in outs]}")
    return json.loads(outs[0][0].splitlines()[-1])


def _handshake_ms(nw: Any, creds: Path, auth: str, n: int) -> float:
    """The median time to a usable connection, dialled from user 0's host to a listening edge."""
    how = ["--insecure"] if auth == "insecure" else ["--lab", str(creds), "--auth", auth]
    scenario = creds.parent / "scenario.toml"
    edge = nw.edge.popen(
        [*DRAFTNET, "edge", str(scenario), "--listen", "0.0.0.0:7100", *how,
         "--set", "limits.handshake_timeout_s=5", "--out", str(creds.parent / f"hs-{auth}")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    try:
        lab = "" if auth == "insecure" else str(creds)
        code = HANDSHAKE_PROBE.format(root=str(ROOT), lab=lab, auth=auth, n=n)
        probe = nw.user(0).popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        out, _ = probe.communicate(timeout=60)
        return float(out.strip().splitlines()[-1])
    finally:
        edge.terminate()
        edge.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--delay-ms", type=float, default=5.0, help="each way, every user's link")
    ap.add_argument("--skew-ms", type=float, default=2000.0, help="user 1's clock skew")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--dials", type=int, default=30)
    args = ap.parse_args()
    sc = load_scenario(
        overrides={"users.count": args.users, "models.kind": "synthetic", "network.model": "fixed"}
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "scenario.toml").write_text(scenario_toml(sc))
        creds = d / "creds"
        init_lab(creds, ["edge", *(f"u{i}" for i in range(args.users))])
        link = LinkSpec.fixed(delay_ms=args.delay_ms, rate_bps=50e6)
        with (
            star_network(args.users) as nw,
            userspace_shaping(nw, [LinkPair.both(link)] * args.users, d),
        ):
            for auth in ("insecure", "token", "mtls"):
                hs = _handshake_ms(nw, creds, auth, args.dials)
                doc = _serve(nw, d / "scenario.toml", creds, auth, out=d / auth,
                             seconds=args.seconds, skew_ms=args.skew_ms)  # fmt: skip
                r = doc["results"][doc["policy"]]
                clocks = doc["clock_offset_ms"]
                err = [abs(c["offset_ms"] - (-args.skew_ms if n == "u1" else 0.0))
                       for n, c in clocks.items()]  # fmt: skip
                rows.append({
                    "auth": auth,
                    "handshake_ms": hs,
                    "tok_s": r["throughput_tok_s"],
                    "predicted_tok_s": r["predicted_tok_s"],
                    "tpot_p50_ms": r["tpot_ms"]["p50"],
                    "rounds": r["rounds"],
                    "clock_error_ms_max": max(err),
                    "clock_uncertainty_ms_max": max(c["uncertainty_ms"] for c in clocks.values()),
                    "u1_offset_ms": clocks["u1"]["offset_ms"],
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"\n{args.users} users, {args.delay_ms:g} ms each way, {args.seconds:g} s each; "
          f"user 1's clock {args.skew_ms:+g} ms")  # fmt: skip
    print("| auth | handshake (ms, median) | tok/s | vs insecure | TPOT p50 (ms) | "
          "clock error max (ms) | stated uncertainty max (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['auth']} | {r['handshake_ms']:.2f} | {r['tok_s']:.1f} | "
              f"{r['tok_s'] / base['tok_s']:.3f} | {r['tpot_p50_ms']:.2f} | "
              f"{r['clock_error_ms_max']:.3f} | {r['clock_uncertainty_ms_max']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
