#!/usr/bin/env python3
"""Userspace shaper benchmark (root): the latency it adds and the packets per second it carries.

- Added latency: the median RTT user -> edge through an unshaped link (no delay, no rate) with
  the shaper in the path, against the same network with no shaper.
- Packets per second: a burst of small datagrams through an unlimited link; the far end's
  arrival rate (the probe's receiver is Python too, so this is a lower bound).

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

from emu.network import star_network, userspace_shaping
from emu.probe import IP_UDP_HEADERS


def _probe(nw, **kw: int) -> dict:
    flags = " ".join(f"--{k} {v}" for k, v in kw.items())
    out = nw.user(0).cmd(f"{sys.executable} -m emu.probe measure 10.0.0.2 9000 {flags}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, star_network(1) as nw:
        server = nw.edge.popen([sys.executable, "-m", "emu.probe", "serve", "9000"])
        time.sleep(0.5)
        bare = _probe(nw, packets=0, burst=2, echoes=200)
        spec = {"state": {}}
        with userspace_shaping(nw, [{"up": spec, "down": spec}], Path(tmp)):
            shaped = _probe(nw, packets=0, burst=2, echoes=200)
            burst = _probe(nw, packets=0, burst=20000, echoes=0)
        server.terminate()
    # Packets that arrived, over the arrival span (drops anywhere do not count).
    span_pps = burst["up_rate_bps"] / ((1200 + IP_UDP_HEADERS) * 8)
    got = burst["burst_received"] / burst["burst"]
    pps = span_pps * got
    print(f"median RTT without the shaper: {bare['rtt_ms']:.3f} ms")
    print(
        f"median RTT through the shaper (both ways, no delay configured): {shaped['rtt_ms']:.3f} ms"
    )
    print(f"added per direction: {(shaped['rtt_ms'] - bare['rtt_ms']) / 2:.3f} ms")
    mbps = pps * (1200 + IP_UDP_HEADERS) * 8 / 1e6
    print(f"unlimited link, 1228-byte packets: {pps:,.0f} packets/s ({mbps:.1f} Mbit/s)")
    print(f"  burst of {burst['burst']}: {100 * got:.1f}% arrived")


if __name__ == "__main__":
    main()
