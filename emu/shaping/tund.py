"""The userspace shaper: a TUN forwarder, one process in the access point's namespace.

Layer: emu (a process; I/O). Run as ``python -m emu.shaping.tund CONFIG.json`` inside the
namespace that routes between the users and the edge. For each link direction it opens a TUN
device, and the access point's policy routing (``emu.shaping.routes``) sends that direction's
packets into it. The process reads each packet, asks the link's ``LinkSchedule`` when it may
leave (or whether it is lost), and writes it back into the same TUN device at that time; the
kernel then forwards it on (packets coming out of a TUN device match no shaping rule).

CONFIG: ``{"seed": int, "queue_bytes": int, "stats": path, "links": [{"tun": name,
"state": {LinkState fields} | "series": {"npz": path, "prefix": "up"|"down", "user": i},
"trace": path (Mahimahi, optional), "gilbert_elliott": {p, r, loss_bad, loss_good}}]}``.
It prints ``ready`` on stdout once every device is up, writes per-link counters to ``stats``
every second and at exit (with ``origin_s``: when the links' time 0 was, on the machine's
monotonic clock, the clock the nodes' records share), and stops on SIGTERM or SIGINT; its TUN
devices vanish with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from channel_models.trace import from_mahimahi
from emu.files import write_atomic
from emu.shaping.schedule import GilbertElliott, LinkSchedule
from emu.shaping.sources import state_source
from nodes.pacing import REAL_CLOCK_LEAD_S, sleep_until

__all__ = ["main", "open_tun"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536
TUN_QUEUE_PACKETS = 10_000


def open_tun(name: str) -> int:
    """A non-blocking TUN device (layer 3, no packet information header); its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(slots=True)
class _Link:
    name: str
    fd: int
    schedule: LinkSchedule
    out: deque[tuple[float, bytes]] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    received: int = 0
    written: int = 0


async def _reader(link: _Link, t0: float) -> None:
    while True:
        await trio.lowlevel.wait_readable(link.fd)
        while True:
            try:
                pkt = os.read(link.fd, MAX_PACKET)
            except BlockingIOError:
                break
            link.received += 1
            now = trio.current_time() - t0
            verdict = link.schedule.arrive(now, len(pkt))
            if verdict.deliver_at is not None:
                link.out.append((t0 + verdict.deliver_at, pkt))
                link.wake.set()
            # Let the writers run between packets: draining a long burst in one go would hold
            # back every packet due meanwhile (on every link), bunching their deliveries.
            await trio.lowlevel.checkpoint()


async def _writer(link: _Link) -> None:
    while True:
        if not link.out:
            link.wake = trio.Event()
            await link.wake.wait()
            continue
        at, pkt = link.out[0]
        await sleep_until(at, lead_s=REAL_CLOCK_LEAD_S)
        link.out.popleft()
        try:
            os.write(link.fd, pkt)
            link.written += 1
        except BlockingIOError:
            pass  # the kernel's queue is full: the packet is dropped, as a wire would


def _stats(links: list[_Link]) -> dict[str, Any]:
    return {
        lk.name: {
            "received": lk.received,
            "sent": lk.written,
            "lost": lk.schedule.lost,
            "dropped_queue": lk.schedule.dropped_queue,
            "waiting": len(lk.out),
        }
        for lk in links
    }


async def _run(config: dict[str, Any]) -> None:
    rng = np.random.default_rng(int(config.get("seed", 0)))
    links = []
    for spec in config["links"]:
        ge = spec.get("gilbert_elliott")
        trace = Path(spec["trace"]).read_text() if spec.get("trace") else None
        schedule = LinkSchedule(
            state_source(spec),
            rng.spawn(1)[0],
            queue_bytes=int(config.get("queue_bytes", 1_000_000)),
            burst_loss=GilbertElliott(**ge) if ge else None,
            trace_ms=from_mahimahi(trace, where=spec["trace"]) if trace else None,
            trace_scale=float(spec.get("time_scale", 1.0)),  # a slowed run's trace is too
        )
        links.append(_Link(spec["tun"], open_tun(spec["tun"]), schedule))
    _bring_up([lk.name for lk in links])
    stats_path = Path(config["stats"]) if config.get("stats") else None
    t0, origin = trio.current_time(), time.monotonic()
    print("ready", flush=True)
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for lk in links:
                    nursery.start_soon(_reader, lk, t0)
                    nursery.start_soon(_writer, lk)
                if stats_path is not None:
                    nursery.start_soon(_stats_loop, links, stats_path, origin)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        if stats_path is not None:
            _write_stats(links, stats_path, origin)
        for lk in links:
            os.close(lk.fd)


async def _stats_loop(links: list[_Link], path: Path, origin: float) -> None:
    while True:
        await trio.sleep(1.0)
        _write_stats(links, path, origin)


def _write_stats(links: list[_Link], path: Path, origin: float) -> None:
    doc = {"t": time.time(), "origin_s": origin, "links": _stats(links)}
    write_atomic(path, json.dumps(doc))


def _bring_up(names: list[str]) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        for name in names:
            idx = ip.link_lookup(ifname=name)[0]
            # The kernel's queue into the device must not drop what the link's own queue
            # (``queue_bytes``) would keep: 500 packets by default, 10,000 here.
            ip.link("set", index=idx, state="up", txqlen=TUN_QUEUE_PACKETS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m emu.shaping.tund CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(args[0]).read_text())
    trio.run(_run, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
