"""The ``tc`` shaper: kernel queueing disciplines driven on a tick, one process in the access
point's namespace.

Layer: emu (a process; netlink through pyroute2). Run as ``python -m emu.shaping.tcd
CONFIG.json`` inside the namespace that routes between the users and the edge. Each link
direction is an HTB class on the interface its packets leave by (the edge's interface for the
uplinks, the user's for its downlink), picked by a u32 filter on the user's subnet, with a
netem qdisc beneath it for delay, jitter and loss where the link has any. Every tick the
link's state is read and what changed is changed in place (``change-class``, netem's
``change``): nothing is deleted and re-added, which would drop the queued packets.

netem's jitter (with no distribution table, which pyroute2 cannot load) is uniform in
``delay +- J``; a LinkState's jitter is a half-normal extra delay of scale sigma, so the
netem delay is ``delay + sigma sqrt(2/pi)`` (the same mean) and ``J = sigma sqrt(3 (1 - 2/pi))``
(the same spread). netem reorders jittered packets unless it also paces them: a link with
jitter gets netem's own rate too (the link's, or 10 Gbit/s when unlimited), so a packet never
leaves before the one ahead of it.

CONFIG: ``{"stats": path, "tick_s": float, "links": [{"name": str, "dev": interface,
"minor": int, "match": "src"|"dst", "subnet": "a.b.c.d/nn", "state" | "series": ...}]}``
(link specs as ``emu.shaping.sources`` reads them). It prints ``ready`` once every class is
in place, writes per-link counters to ``stats`` every second and at exit (with ``origin_s``:
when the links' time 0 was, on the machine's monotonic clock), stops on SIGTERM or SIGINT, and
removes its qdiscs as it goes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from channel_models.link import LinkState
from emu.files import write_atomic
from emu.shaping.sources import needs_netem, state_source

__all__ = ["UNLIMITED_BPS", "htb_params", "main", "netem_params"]

UNLIMITED_BPS = 10e9  # what an unlimited link is given (HTB needs a rate)
MTU = 1514
NETEM_LIMIT = 1000  # packets
ROOT = 0x10000  # 1:
ETH_P_IP = 0x0800


def htb_params(state: LinkState) -> dict[str, Any]:
    """The HTB class for a state: rate and ceiling the link's, a burst of 2 ms at that rate
    (two MTUs at least) so the rate holds over short windows."""
    bps = state.rate_bps or UNLIMITED_BPS
    burst = max(2 * MTU, int(bps / 8 * 0.002))
    rate = f"{int(bps)}bit"
    return {"rate": rate, "ceil": rate, "burst": burst, "cburst": burst, "quantum": MTU}


def netem_params(state: LinkState) -> dict[str, Any]:
    """netem's delay, uniform jitter and loss for a state (times in microseconds, loss in %)."""
    sigma = state.jitter_ms
    out: dict[str, Any] = {
        "delay": round(1000 * (state.delay_ms + sigma * math.sqrt(2 / math.pi))),
        "jitter": round(1000 * sigma * math.sqrt(3 * (1 - 2 / math.pi))),
        "loss": 100.0 * state.loss,
        "limit": NETEM_LIMIT,
    }
    if sigma > 0:  # pace in netem too, so jittered packets keep their order
        out["rate"] = f"{int(state.rate_bps or UNLIMITED_BPS)}bit"
    return out


@dataclass(slots=True)
class _Link:
    name: str
    index: int  # the interface's
    classid: int
    netem: int | None  # the netem qdisc's handle, where the link has one
    source: Callable[[float], LinkState]
    last: LinkState | None = None
    changes: int = 0


def _key(match: str, subnet: str) -> str:
    net = ipaddress.ip_network(subnet)
    offset = 12 if match == "src" else 16  # in the IPv4 header
    return f"0x{int(net.network_address):08x}/0x{int(net.netmask):08x}+{offset}"


def _setup(ip: Any, specs: list[dict[str, Any]]) -> list[_Link]:
    links = []
    devices: dict[str, int] = {}
    for spec in specs:
        dev = spec["dev"]
        if dev not in devices:
            idx = ip.link_lookup(ifname=dev)[0]
            _remove_root(ip, idx)  # left by a shaper that was killed
            ip.tc("add", "htb", idx, ROOT, default=0)  # unmatched traffic (ARP) goes unshaped
            devices[dev] = idx
        idx = devices[dev]
        source = state_source(spec)
        first = source(0.0)
        classid = ROOT | int(spec["minor"])
        ip.tc("add-class", "htb", idx, classid, parent=ROOT, **htb_params(first))
        netem = None
        if needs_netem(spec):
            netem = (0x100 + int(spec["minor"])) << 16
            ip.tc("add", "netem", idx, netem, parent=classid, **netem_params(first))
        ip.tc(
            "add-filter",
            "u32",
            idx,
            parent=ROOT,
            prio=1,
            protocol=ETH_P_IP,
            target=classid,
            keys=[_key(spec["match"], spec["subnet"])],
        )
        links.append(_Link(spec["name"], idx, classid, netem, source, first))
    return links


def _remove_root(ip: Any, index: int) -> None:
    from pyroute2 import NetlinkError

    with contextlib.suppress(NetlinkError):  # none there
        ip.tc("del", index=index, root=True)


def _tick(ip: Any, links: list[_Link], t: float) -> None:
    for lk in links:
        state = lk.source(t)
        if state == lk.last:
            continue
        ip.tc("change-class", "htb", lk.index, lk.classid, parent=ROOT, **htb_params(state))
        if lk.netem is not None:
            ip.tc("change", "netem", lk.index, lk.netem, parent=lk.classid, **netem_params(state))
        lk.last = state
        lk.changes += 1


def _stats(ip: Any, links: list[_Link]) -> dict[str, Any]:
    by_class: dict[tuple[int, int], dict[str, int]] = {}
    for idx in {lk.index for lk in links}:
        for msg in ip.get_classes(idx):
            basic = msg.get_nested("TCA_STATS2", "TCA_STATS_BASIC") or {}
            queue = msg.get_nested("TCA_STATS2", "TCA_STATS_QUEUE") or {}
            by_class[(idx, msg["handle"])] = {
                "sent": int(basic.get("packets", 0)),
                "bytes": int(basic.get("bytes", 0)),
                "dropped_queue": int(queue.get("drops", 0)),
            }
    return {
        lk.name: {**by_class.get((lk.index, lk.classid), {}), "changes": lk.changes} for lk in links
    }


def _write_stats(ip: Any, links: list[_Link], path: Path, origin: float) -> None:
    doc = {"t": time.time(), "origin_s": origin, "links": _stats(ip, links)}
    write_atomic(path, json.dumps(doc))


def run(config: dict[str, Any]) -> None:
    from pyroute2 import IPRoute

    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tick = float(config.get("tick_s", 0.01))
    stats_path = Path(config["stats"]) if config.get("stats") else None
    with IPRoute() as ip:
        links = _setup(ip, config["links"])
        t0 = time.monotonic()
        print("ready", flush=True)
        try:
            k, next_stats = 0, 1.0
            while not stop:
                k += 1
                time.sleep(max(0.0, t0 + k * tick - time.monotonic()))
                t = time.monotonic() - t0
                _tick(ip, links, t)
                if stats_path is not None and t >= next_stats:
                    _write_stats(ip, links, stats_path, t0)
                    next_stats += 1.0
        finally:
            if stats_path is not None:
                _write_stats(ip, links, stats_path, t0)
            for idx in {lk.index for lk in links}:
                _remove_root(ip, idx)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m emu.shaping.tcd CONFIG.json", file=sys.stderr)
        return 2
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
