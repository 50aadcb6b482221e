"""A node's clock offset to the edge, from NTP's four-timestamp exchange.

Layer: pure (nodes.core): times in, an estimate out.

A probe leaves the node at t1 (its clock), reaches the edge at t2 and the echo leaves at t3 (the
edge's clock), and the echo arrives at t4 (the node's clock). With the edge's clock reading
``node + offset``, the round trip's network time is ``delay = (t4 - t1) - (t3 - t2)`` and

    offset = ((t2 - t1) + (t3 - t4)) / 2

is exact when the two ways take equally long. Whatever the asymmetry, the true offset lies
within ``delay / 2`` of it (each way takes between 0 and ``delay``), so the sample with the
least delay is the best one (NTP's clock filter), and its half delay bounds the error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClockOffset", "ClockSample"]


@dataclass(frozen=True, slots=True)
class ClockSample:
    offset_s: float  # the edge's clock minus the node's
    delay_s: float  # the exchange's network time, both ways

    @classmethod
    def of(cls, t1: float, t2: float, t3: float, t4: float) -> ClockSample:
        """One exchange: t1 and t4 on the node's clock, t2 and t3 on the edge's."""
        return cls(offset_s=((t2 - t1) + (t3 - t4)) / 2, delay_s=max(0.0, (t4 - t1) - (t3 - t2)))


class ClockOffset:
    """The samples of one node, and the estimate from the best of them."""

    def __init__(self) -> None:
        self.samples: list[ClockSample] = []

    def add(self, t1: float, t2: float, t3: float, t4: float) -> ClockSample:
        s = ClockSample.of(t1, t2, t3, t4)
        self.samples.append(s)
        return s

    @property
    def best(self) -> ClockSample | None:
        return min(self.samples, key=lambda s: s.delay_s, default=None)

    @property
    def offset_s(self) -> float:
        """The edge's clock minus the node's (0 before any sample)."""
        b = self.best
        return b.offset_s if b is not None else 0.0

    @property
    def uncertainty_s(self) -> float:
        """The most the estimate can be wrong by (infinite before any sample)."""
        b = self.best
        return b.delay_s / 2 if b is not None else float("inf")

    def to_edge(self, t: float) -> float:
        """A time on the node's clock, on the edge's."""
        return t + self.offset_s

    def record(self) -> dict[str, float | int]:
        """The estimate as a ``clock`` record's fields, in ms."""
        return {
            "offset_ms": 1e3 * self.offset_s,
            "uncertainty_ms": 1e3 * self.uncertainty_s,
            "samples": len(self.samples),
        }
