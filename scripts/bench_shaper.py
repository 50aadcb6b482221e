#!/usr/bin/env python3
"""Shaper benchmark (root): the latency each backend adds and the packets per second it carries.

For the userspace shaper (TUN) and the tc backend (HTB alone: this kernel has no netem):
- Added latency: the median RTT user -> edge through an unshaped link (no delay, no rate) with
  the shaper in the path, against the same network with no shaper.
- Packets per second: a burst of 1228-byte datagrams through an unlimited link; the far end's
  arrival rate (the probe's receiver is Python too, so this is a lower bound).
- Rate accuracy: a 5 Mbit/s uplink measured by the probe's burst.

    sudo .venv/bin/python scripts/bench_shaper.py
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.runners.network import star_network
from emu.runners.shapers import SHAPERS
from emu.shaping.probe import IP_UDP_HEADERS
from emu.shaping.spec import LinkPair, LinkSpec


def _probe(nw, **kw: int) -> dict:
    flags = " ".join(f"--{k} {v}" for k, v in kw.items())
    out = nw.user(0).cmd(f"{sys.executable} -m emu.shaping.probe measure 10.0.0.2 9000 {flags}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, star_network(1) as nw:
        server = nw.edge.popen([sys.executable, "-m", "emu.shaping.probe", "serve", "9000"])
        time.sleep(0.5)
        bare = _probe(nw, packets=0, burst=2, echoes=200)
        print(f"median RTT without a shaper: {bare['rtt_ms']:.3f} ms")
        print("| backend | RTT ms | added per direction ms | packets/s (Mbit/s) | burst arrived "
              "| 5 Mbit/s measured |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for backend in ("userspace", "tc"):
            spec = LinkSpec.fixed()
            with SHAPERS[backend].running(nw, [LinkPair.both(spec)], Path(tmp), seed=0):
                shaped = _probe(nw, packets=0, burst=2, echoes=200)
                burst = _probe(nw, packets=0, burst=20000, echoes=0)
            slow = LinkSpec.fixed(rate_bps=5e6)
            with SHAPERS[backend].running(nw, [LinkPair(slow, spec)], Path(tmp), seed=0):
                rate = _probe(nw, packets=0, burst=300, echoes=0)
            # Packets that arrived, over the span of their arrivals (drops do not count).
            got = burst["burst_received"] / burst["burst"]
            pps = (burst["burst_received"] - 1) / burst["burst_span_s"]
            mbps = pps * (1200 + IP_UDP_HEADERS) * 8 / 1e6
            print(
                f"| {backend} | {shaped['rtt_ms']:.3f} | "
                f"{(shaped['rtt_ms'] - bare['rtt_ms']) / 2:.3f} | {pps:,.0f} ({mbps:.0f}) | "
                f"{100 * got:.1f}% of {burst['burst']} | {rate['up_rate_bps'] / 1e6:.3f} |",
                flush=True,
            )
        server.terminate()


if __name__ == "__main__":
    main()
