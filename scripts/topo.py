#!/usr/bin/env python3
"""Run a registered topology with every user link shaped alike, and probe it (root).

    sudo .venv/bin/python scripts/topo.py star --users 3 --delay-ms 20 --rate-bps 5e6 --loss 0.01
    sudo .venv/bin/python scripts/topo.py star --users 2 --cli      # Mininet's prompt
    sudo .venv/bin/python scripts/topo.py star --users 4 --servers edge0,edge1,router --cli

Each user's link is shaped both ways by the userspace shaper; without --cli, each user probes
the first server (RTT, one-way delay, rate, loss) and a JSON line per user is printed. The
network is torn down on every exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.errors import DraftnetError
from emu.runners.network import star_network, userspace_shaping
from emu.shaping.spec import LinkPair, LinkSpec
from topologies.registry import TOPOLOGIES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topology", choices=TOPOLOGIES)
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--rate-bps", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument(
        "--servers",
        default="edge",
        help="the server hosts, comma-separated (a deployment's verifiers and router)",
    )
    ap.add_argument("--cli", action="store_true", help="open Mininet's prompt instead of probing")
    args = ap.parse_args()
    state = {
        "delay_ms": args.delay_ms,
        "jitter_ms": args.jitter_ms,
        "rate_bps": args.rate_bps,
        "loss": args.loss,
    }
    spec = LinkSpec.fixed(**state)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            star_network(args.users, servers=args.servers.split(",")) as nw,
            userspace_shaping(nw, [LinkPair.both(spec)] * args.users, Path(tmp)),
        ):
            if args.cli:
                nw.prompt()
                return 0
            server = nw.edge.popen([sys.executable, "-m", "emu.shaping.probe", "serve", "9000"])
            time.sleep(0.5)
            for i in range(args.users):
                out = nw.user(i).cmd(
                    f"{sys.executable} -m emu.shaping.probe measure {nw.edge_ip} 9000"
                )
                print(json.dumps({"user": i, "configured": state, **json.loads(out)}))
            server.terminate()
    except DraftnetError as exc:
        print(f"topo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
