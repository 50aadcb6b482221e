"""In-memory links for the simulation: a trio stream pair that delivers after a modelled delay.

Layer: emu (orchestration); trio, no sockets. Used by ``draftnet sim``, where every node runs in
one process on trio's virtual clock; the nodes see an ordinary ``trio.abc.Stream``.

Each direction is a FIFO pipe whose behaviour comes from a ``LinkState`` at each moment
(constant, or a time series from the radio model): serialisation at the ``rate_bps`` in force
while a message goes out (the link is busy meanwhile), then ``delay_ms`` plus a half-normal
jitter of scale ``jitter_ms``, never reordering. The nodes speak over TCP in emulation, so a
lost packet is not a lost message: it is retransmitted after ``rto_ms``, each retransmission
lost again with the loss of its own time, which is what loss does to a reliable stream.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable

import numpy as np
import trio

from channel_models.link import LinkState, serialised_until
from channel_models.trace import IntArray, rate_bps

__all__ = ["DelayedStream", "link_pair", "traced"]

StateAt = Callable[[float], LinkState]
_MAX_RETRANSMISSIONS = 1_000_000
_NO_OPPORTUNITY_BPS = 1e-3  # a trace's millisecond without an opportunity (0 is unlimited)


def traced(per_ms: IntArray | None, base: LinkState) -> StateAt:
    """``base`` at the rate of a Mahimahi trace (delivery opportunities per millisecond, 1504
    bytes each, repeating), millisecond by millisecond: the fluid form of what ``mm-link`` and
    the userspace shaper deliver an opportunity at a time. None: ``base`` all along."""
    if per_ms is None:
        return lambda _t: base
    states = [
        dataclasses.replace(base, rate_bps=max(float(r), _NO_OPPORTUNITY_BPS))
        for r in rate_bps(per_ms)
    ]
    return lambda t: states[int(t * 1000.0) % len(states)]


class _Pipe:
    def __init__(self, state_at: StateAt, rng: np.random.Generator, rto_ms: float) -> None:
        self.state_at = state_at
        self.rng = rng
        self.rto_ms = rto_ms
        self.queue: deque[tuple[float, bytes]] = deque()
        self.busy_until = 0.0
        self.last_delivery = 0.0
        self.closed = False
        self.arrived = trio.Event()
        self.bytes_sent = 0

    def push(self, data: bytes) -> None:
        now = trio.current_time()
        self.busy_until = serialised_until(self.state_at, max(now, self.busy_until), len(data) * 8)
        t = self.busy_until
        st = self.state_at(t)
        # Each transmission is lost with the loss of its own time; a loss costs one RTO.
        for _ in range(_MAX_RETRANSMISSIONS):
            if st.loss <= 0 or self.rng.random() >= st.loss:
                break
            t += self.rto_ms / 1000.0
            st = self.state_at(t)
        delay_ms = st.delay_ms
        if st.jitter_ms > 0:
            delay_ms += abs(float(self.rng.normal(0.0, st.jitter_ms)))
        at = max(t + delay_ms / 1000.0, self.last_delivery)
        self.last_delivery = at
        self.queue.append((at, data))
        self.bytes_sent += len(data)
        self.arrived.set()

    def close(self) -> None:
        self.closed = True
        self.arrived.set()

    async def pull(self, max_bytes: int | None) -> bytes:
        while not self.queue:
            if self.closed:
                return b""
            self.arrived = trio.Event()
            await self.arrived.wait()
        at = self.queue[0][0]
        await trio.sleep_until(at)
        now = trio.current_time()
        out = bytearray()
        while self.queue and self.queue[0][0] <= now:
            if max_bytes is not None and len(out) + len(self.queue[0][1]) > max_bytes and out:
                break
            _, data = self.queue.popleft()
            out += data
        return bytes(out)


class DelayedStream(trio.abc.Stream):
    """One end of a simulated link: sends into one pipe, receives from the other."""

    def __init__(self, tx: _Pipe, rx: _Pipe) -> None:
        self._tx, self._rx = tx, rx
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this end of the link was closed")
        if self._tx.closed:
            raise trio.BrokenResourceError("the other end of the link was closed")
        await trio.lowlevel.checkpoint()
        self._tx.push(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("this end of the link was closed")
        return await self._rx.pull(max_bytes)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._tx.close()
            self._rx.close()
        await trio.lowlevel.checkpoint()

    @property
    def bytes_sent(self) -> int:
        return self._tx.bytes_sent


def link_pair(
    uplink: StateAt,
    downlink: StateAt,
    rng: np.random.Generator,
    *,
    rto_ms: float = 200.0,
) -> tuple[DelayedStream, DelayedStream]:
    """(user end, edge end) of one user's link; ``uplink`` carries user-to-edge traffic."""
    up = _Pipe(uplink, rng, rto_ms)
    down = _Pipe(downlink, rng, rto_ms)
    return DelayedStream(up, down), DelayedStream(down, up)
