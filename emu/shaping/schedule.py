"""The userspace shaper's per-packet schedule: when a packet leaves a link, or whether it is lost.

Layer: emu, but pure: no I/O and no clock (callers pass ``now``), a generator passed in, so it
is tested without root. The TUN forwarder (``emu.shaping.tund``) calls ``arrive`` for each
packet and writes it out at the time returned.

A packet arriving at ``t`` with ``size`` bytes:

1. is dropped if the bytes still waiting to be sent exceed ``queue_bytes`` (drop-tail);
2. is lost with the link's loss (Bernoulli on ``LinkState.loss``), or by a Gilbert-Elliott chain
   when one is configured;
3. starts its transmission when the link is free (FIFO) and takes ``size * 8`` bits at the
   rate in force at each moment (``channel_models.link.serialised_until``; ``rate_bps = 0``:
   no serialisation), so an outage holds it only while it lasts, or, driven by a packet-delivery
   trace, leaves as mm-link lets it: each delivery opportunity carries ``OPPORTUNITY_BYTES``
   (1504) of the packets queued before its time, first come first served, so small packets
   share one (a packet over 1504 bytes, which mm-link refuses, spans two here); what an
   opportunity has left when the queue is empty is lost; the trace repeats with a period of
   its last line's millisecond;
4. is delivered after the one-way delay plus a jitter draw (half-normal with the link's
   ``jitter_ms`` as its scale), but never before the packet ahead of it: no reordering.

The link's state comes from ``state_at(t)``, so a time series (a radio model's, ticking) changes
the rate, delay, jitter and loss of the packets that arrive after each tick.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from channel_models.link import LinkState, serialised_until
from channel_models.trace import OPPORTUNITY_BYTES

__all__ = ["GilbertElliott", "LinkSchedule", "Verdict"]


@dataclass(slots=True)
class GilbertElliott:
    """Two-state burst loss: Good -> Bad with ``p``, Bad -> Good with ``r`` per packet; loss
    ``loss_good`` and ``loss_bad`` in each state. Mean loss: (r k + p h) / (p + r)."""

    p: float
    r: float
    loss_bad: float = 1.0
    loss_good: float = 0.0
    bad: bool = False

    def __post_init__(self) -> None:
        for name in ("p", "r", "loss_bad", "loss_good"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"Gilbert-Elliott {name} must be in [0, 1], got {v!r}")

    def lost(self, rng: np.random.Generator) -> bool:
        u1, u2 = rng.random(2)
        self.bad = (u1 >= self.r) if self.bad else (u1 < self.p)
        return bool(u2 < (self.loss_bad if self.bad else self.loss_good))

    @property
    def mean_loss(self) -> float:
        if self.p + self.r == 0:
            return self.loss_good
        return (self.r * self.loss_good + self.p * self.loss_bad) / (self.p + self.r)


@dataclass(frozen=True, slots=True)
class Verdict:
    deliver_at: float | None  # seconds; None: dropped
    reason: str = ""  # "queue" or "loss" when dropped


@dataclass(slots=True)
class LinkSchedule:
    """One direction of one link. Times in seconds, sizes in bytes."""

    state_at: Callable[[float], LinkState]
    rng: np.random.Generator
    queue_bytes: int = 1_000_000
    burst_loss: GilbertElliott | None = None
    trace_ms: npt.NDArray[np.int64] | None = None  # delivery opportunities per ms (repeating)
    trace_t0: float = 0.0
    trace_scale: float = 1.0  # wall milliseconds per trace millisecond (a run's time scale)
    _free_at: float = 0.0  # when the transmitter finishes what it has
    _last_delivery: float = 0.0
    _waiting: deque[tuple[float, int]] = field(default_factory=deque)  # (leaves at, bytes)
    _queued: int = 0
    _opportunities: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    _opp: int = -1  # the last opportunity a packet used (counted from the trace's start)
    _opp_left: int = 0  # ... and the bytes it has left
    dropped_queue: int = 0
    lost: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        if self.trace_ms is not None:
            if int(np.sum(self.trace_ms)) <= 0:
                raise ValueError("a delivery trace needs at least one opportunity")
            # Each opportunity's millisecond in the period: k's is at the end of ms k, (k + 1).
            per_ms = np.asarray(self.trace_ms, dtype=np.int64)
            self._opportunities = np.repeat(np.arange(1, per_ms.size + 1), per_ms).astype(float)

    def arrive(self, now: float, size: int) -> Verdict:
        while self._waiting and self._waiting[0][0] <= now:
            self._queued -= self._waiting.popleft()[1]
        if self._queued + size > self.queue_bytes:
            self.dropped_queue += 1
            return Verdict(None, "queue")
        state = self.state_at(now)
        lost = (
            self.burst_loss.lost(self.rng)
            if self.burst_loss is not None
            else bool(state.loss > 0 and self.rng.random() < state.loss)
        )
        start = max(now, self._free_at)
        if self.trace_ms is not None:
            leave = self._through_trace(now, size)
        else:
            leave = serialised_until(self.state_at, start, size * 8.0)
        # A lost packet still used the link's time (it was sent, and not received).
        self._free_at = leave
        self._waiting.append((leave, size))
        self._queued += size
        if lost:
            self.lost += 1
            return Verdict(None, "loss")
        jitter = abs(self.rng.normal(0.0, state.jitter_ms)) if state.jitter_ms > 0 else 0.0
        deliver = max(leave + (state.delay_ms + jitter) / 1000.0, self._last_delivery)
        self._last_delivery = deliver
        self.sent += 1
        return Verdict(deliver)

    def _opp_at(self, k: int) -> float:
        """When opportunity ``k`` (counted from the trace's start, across repeats) comes."""
        n, period = self._opportunities.size, self._period_ms
        ms = (k // n) * period + self._opportunities[k % n]
        return float(self.trace_t0 + ms * self.trace_scale / 1000.0)

    @property
    def _period_ms(self) -> int:
        return int(np.asarray(self.trace_ms).size)

    def _first_opp(self, t: float) -> int:
        """The first opportunity after ``t`` (mm-link spends those at or before a packet's
        arrival before it queues the packet), within and across the trace's repeats alike."""
        n, period = self._opportunities.size, self._period_ms
        ms = max(0.0, (t - self.trace_t0) * 1000.0 / self.trace_scale) + 1e-9
        cycle = int(ms // period)
        j = int(np.searchsorted(self._opportunities, ms - cycle * period, side="right"))
        return (cycle + 1) * n if j == n else cycle * n + j

    def _through_trace(self, now: float, size: int) -> float:
        """When the last byte of a ``size``-byte packet arriving at ``now`` leaves: first in
        what the opportunity the packet ahead of it ended in has left (if that opportunity comes
        after ``now``: the packet is queued by then), then in whole opportunities."""
        left = size
        if self._opp >= 0 and self._opp_left > 0 and self._opp_at(self._opp) > now:
            take = min(left, self._opp_left)
            left, self._opp_left = left - take, self._opp_left - take
            if left == 0:
                return self._opp_at(self._opp)
        k = max(self._first_opp(now), self._opp + 1)
        while True:
            take = min(left, OPPORTUNITY_BYTES)
            left -= take
            if left == 0:
                self._opp, self._opp_left = k, OPPORTUNITY_BYTES - take
                return self._opp_at(k)
            k += 1
