"""Link probes for the fidelity check: RTT, one-way delay, rate and loss, over UDP.

Layer: emu (a process; sockets). ``python -m emu.shaping.probe serve PORT`` runs in the far
host (the edge); ``python -m emu.shaping.probe measure HOST PORT [--packets N] [--burst N]`` runs
in the near one (a user) and prints one JSON object. Every host of the emulation shares the
machine's monotonic clock, so the far end's arrival timestamps give one-way delays directly.

- ``rtt_ms`` and ``up_ms``/``down_ms``: ``echo`` datagrams 50 ms apart, medians.
- ``up_rate_bps``: a back-to-back burst of 1200-byte datagrams; the bits on the wire of one
  datagram over the far end's arrival time per sequence number (a robust slope: see
  ``_per_sequence_step``).
- ``up_loss``: N paced datagrams (1 ms apart) counted at the far end; ``reordered``: arrivals
  out of sequence.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import statistics
import struct
import sys
import time
from typing import Any

import numpy as np

__all__ = ["main", "measure", "serve"]

IP_UDP_HEADERS = 28
HEADER = struct.Struct("!cIQd")  # kind, sequence, session, send time
REPLY = struct.Struct("!cIQdd")  # ... and the far end's arrival time


# Linux's kernel receive timestamps (asm-generic/socket.h); Python's socket module lacks them.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
TIMESPEC = struct.Struct("@qq")


def _receive(sock: socket.socket) -> tuple[bytes, Any, float]:
    """A datagram, its sender, and when the kernel received it on the monotonic clock. The
    kernel's stamp is taken as the packet reaches the socket, not when this process gets round
    to reading it: a receiver descheduled mid-burst would otherwise stamp the packets it then
    drains all at once (a 37 Mbit/s link read as 321 Mbit/s, once in a few runs)."""
    data, anc, _flags, addr = sock.recvmsg(65535, socket.CMSG_SPACE(TIMESPEC.size))
    now_mono, now_real = time.monotonic(), time.time()
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            sec, nsec = TIMESPEC.unpack_from(raw)
            return data, addr, now_mono - (now_real - (sec + nsec * 1e-9))
    return data, addr, now_mono


def serve(port: int) -> None:
    """Answer echoes and keep per-session arrival records; report them on request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sessions: dict[int, list[tuple[int, float, int]]] = {}
    while True:
        data, addr, now = _receive(sock)
        kind, seq, session, sent = HEADER.unpack_from(data)
        if kind == b"e":
            sock.sendto(REPLY.pack(b"e", seq, session, sent, now), addr)
        elif kind == b"d":
            sessions.setdefault(session, []).append((seq, now, len(data)))
        elif kind == b"r":
            rec = sessions.get(session, [])
            body = json.dumps(_summary(rec) | {"session": session}).encode()
            sock.sendto(body, addr)


def _summary(rec: list[tuple[int, float, int]]) -> dict[str, Any]:
    """What arrived: count, first and last (sequence, time), and out-of-order arrivals."""
    if not rec:
        return {"n": 0}
    return {
        "n": len(rec),
        "first": [rec[0][0], rec[0][1]],
        "last": [rec[-1][0], rec[-1][1]],
        "per_seq_s": _per_sequence_step(rec),
        "reordered": sum(1 for a, b in itertools.pairwise(rec) if b[0] < a[0]),
    }


def _per_sequence_step(rec: list[tuple[int, float, int]]) -> float | None:
    """Arrival time per sequence number: the Theil-Sen slope (the median of pairwise slopes)
    over at most 400 arrivals spread over the burst (the kernel's arrival stamps). A lost
    datagram still took its time on the link, so the slope is per sequence step. Unlike the
    first-to-last span, bunched deliveries under jitter leave it alone."""
    if len(rec) < 3:
        return None
    from scipy.stats import theilslopes

    pick = sorted({round(i) for i in np.linspace(0, len(rec) - 1, min(len(rec), 400))})
    seq = np.array([rec[i][0] for i in pick], dtype=np.float64)
    t = np.array([rec[i][1] for i in pick])
    slope = float(theilslopes(t, seq).slope)
    return slope if slope > 0 else None


REPORT_TRIES = 5


def _report(sock: socket.socket, host: str, port: int, session: int) -> dict[str, Any]:
    """The far end's record of a session. The request, or its answer, crosses the lossy link
    too: asked again on a timeout (the far end keeps each session's record), and an answer
    for another session (one asked again, that came late) is passed over."""
    tries = 0
    while True:
        sock.sendto(HEADER.pack(b"r", 0, session, 0.0), (host, port))
        tries += 1
        try:
            while (out := json.loads(sock.recvfrom(65535)[0]))["session"] != session:
                pass
        except TimeoutError:
            if tries == REPORT_TRIES:
                raise
            continue
        return dict(out)


def _sleep_until(t: float) -> None:
    """Sleep, not spin: the probe shares the host's cores with the shaper it measures."""
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


ECHO_SPACING_S = 0.05
ECHO_TIMEOUT_S = 3.0


def _echo(
    sock: socket.socket, far: tuple[str, int], echoes: int
) -> tuple[list[float], list[float], list[float]]:
    """Round trips, one-way delays up and down [ms] of ``echoes`` echoes sent
    ``ECHO_SPACING_S`` apart, as ping does, not each after the last one's reply: on a link of
    400 ms (a time-scaled one) ten echoes one at a time took 4 s a probe. On a link of under
    50 ms one echo is still in flight at a time (on a 40 ms link, echoes 10 ms apart read
    2 ms long once on a busy host). An echo with no reply ``ECHO_TIMEOUT_S`` after the last
    was sent is lost."""
    replies: dict[int, tuple[float, float, float]] = {}
    t0 = time.monotonic()
    sent, deadline = 0, float("inf")
    try:
        while len(replies) < echoes:
            now = time.monotonic()
            if sent < echoes and now >= t0 + sent * ECHO_SPACING_S:
                sock.sendto(HEADER.pack(b"e", sent, 0, now), far)
                sent += 1
                if sent == echoes:
                    deadline = now + ECHO_TIMEOUT_S
                continue
            if now >= deadline:
                break
            wake = t0 + sent * ECHO_SPACING_S if sent < echoes else deadline
            sock.settimeout(max(1e-4, wake - now))
            try:
                data, _ = sock.recvfrom(1024)
            except TimeoutError:
                continue
            back = time.monotonic()
            _, seq, _, at, far_at = REPLY.unpack_from(data)
            replies[seq] = ((back - at) * 1e3, (far_at - at) * 1e3, (back - far_at) * 1e3)
    finally:
        sock.settimeout(ECHO_TIMEOUT_S)
    ordered = [replies[k] for k in sorted(replies)]
    return [r[0] for r in ordered], [r[1] for r in ordered], [r[2] for r in ordered]


def measure(
    host: str,
    port: int,
    *,
    packets: int = 1000,
    burst: int = 300,
    echoes: int = 20,
    burst_bps: float = 0.0,
) -> dict[str, Any]:
    """``burst_bps``: send the burst at this rate (in groups every millisecond; it only needs
    to exceed the link's), or 0 for back to back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sock.settimeout(ECHO_TIMEOUT_S)
    rtt, up, down = _echo(sock, (host, port), echoes)
    session = int(time.monotonic() * 1e6)
    pad = b"\0" * (1200 - HEADER.size)
    group = max(1, round(burst_bps * 1e-3 / ((1200 + IP_UDP_HEADERS) * 8))) if burst_bps else 0
    t0 = time.monotonic()
    for seq in range(burst):
        if group and seq % group == 0:
            _sleep_until(t0 + (seq // group) * 1e-3)
        sock.sendto(HEADER.pack(b"d", seq, session, time.monotonic()) + pad, (host, port))
    rate, burst_received, span = None, 0, None
    if burst:
        time.sleep(1.0)
        rec = _report(sock, host, port, session)
        burst_received = rec["n"]
        span = rec["last"][1] - rec["first"][1] if rec["n"] > 1 else None
        if rec.get("per_seq_s"):
            rate = (1200 + IP_UDP_HEADERS) * 8 / rec["per_seq_s"]  # the size on the wire
    session += 1
    t0 = time.monotonic()
    for seq in range(packets):
        _sleep_until(t0 + seq * 1e-3)
        sock.sendto(HEADER.pack(b"d", seq, session, time.monotonic()), (host, port))
    if packets:
        time.sleep(1.0)
    rec = _report(sock, host, port, session) if packets else {"n": 0}
    return {
        "rtt_ms": statistics.median(rtt) if rtt else None,
        "up_ms": statistics.median(up) if up else None,
        "down_ms": statistics.median(down) if down else None,
        "up_rate_bps": rate,
        "burst_received": burst_received,
        "burst_span_s": span,  # first to last arrival
        "burst": burst,
        "up_loss": 1.0 - rec["n"] / packets if packets else None,
        "reordered": rec.get("reordered", 0),
        "packets": packets,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emu.shaping.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    m = sub.add_parser("measure")
    m.add_argument("host")
    m.add_argument("port", type=int)
    m.add_argument("--packets", type=int, default=1000)
    m.add_argument("--burst", type=int, default=300)
    m.add_argument("--echoes", type=int, default=20)
    m.add_argument("--burst-bps", type=float, default=0.0, help="pace the burst (0: back to back)")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port)
        return 0
    print(
        json.dumps(
            measure(
                args.host,
                args.port,
                packets=args.packets,
                burst=args.burst,
                echoes=args.echoes,
                burst_bps=args.burst_bps,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
