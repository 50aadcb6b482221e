"""The userspace shaper's per-packet schedule: when a packet leaves a link, or whether it is lost.

Layer: emu, but pure: no I/O and no clock (callers pass ``now``), a generator passed in, so it
is tested without root. The TUN forwarder (``emu.shaping.tund``) calls ``arrive`` for each
packet and writes it out at the time returned.

A packet arriving at ``t`` with ``size`` bytes:

1. is dropped if the bytes still waiting to be sent exceed ``queue_bytes`` (drop-tail);
2. is lost with the link's loss (Bernoulli on ``LinkState.loss``), or by a Gilbert-Elliott chain
   when one is configured;
3. starts its transmission when the link is free (FIFO) and takes ``size * 8 / rate`` at the
   rate in force then (``rate_bps = 0``: no serialisation), or, driven by a packet-delivery
   trace, leaves at the next delivery opportunity (Mahimahi: one packet each);
4. is delivered after the one-way delay plus a jitter draw (half-normal with the link's
   ``jitter_ms`` as its scale), but never before the packet ahead of it: no reordering.

The link's state comes from ``state_at(t)``, so a time series (a radio model's, ticking) changes
the rate, delay, jitter and loss of the packets that arrive after each tick.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from channel_models.link import LinkState

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
    _trace_used: dict[int, int] = field(default_factory=dict)
    dropped_queue: int = 0
    lost: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        if self.trace_ms is not None and int(np.sum(self.trace_ms)) <= 0:
            raise ValueError("a delivery trace needs at least one opportunity")

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
            leave = self._opportunity(start)
        elif state.rate_bps > 0:
            leave = start + size * 8.0 / state.rate_bps
        else:
            leave = start
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

    def _opportunity(self, start: float) -> float:
        """The first unused delivery opportunity at or after ``start`` (the trace repeats)."""
        assert self.trace_ms is not None
        period = int(self.trace_ms.size)
        unit = self.trace_scale / 1000.0  # one trace millisecond, in seconds
        # Millisecond k's opportunity is at its end, (k + 1) ms: the first one not before start.
        ms = max(0, math.ceil((start - self.trace_t0) / unit - 1.0 - 1e-9))
        while True:
            slot = ms % period
            if self.trace_ms[slot] > self._trace_used.get(ms, 0):
                self._trace_used[ms] = self._trace_used.get(ms, 0) + 1
                # Forget spent milliseconds: the map stays small however long the run.
                for old in [k for k in self._trace_used if k < ms - 1]:
                    del self._trace_used[old]
                return max(start, self.trace_t0 + (ms + 1) * unit)
            ms += 1
