"""The link state every radio model produces and every link consumer reads.

Layer: pure (channel_models): data only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LinkState", "serialised_until"]

STEP_S = 0.001  # the resolution at which a link's rate is followed through a transmission
STEP_GROWTH = 0.02  # ... coarser as it goes: at most this share of the time already spent
MAX_S = 1000.0  # ... for at most this long


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkState:
    """One direction of one link over one tick.

    rate_bps: delivery rate [bit/s], 0 for unlimited. delay_ms: one-way propagation and
    processing delay [ms]. jitter_ms: standard deviation of the extra delay [ms] (no reordering).
    loss: probability that a packet is lost, in [0, 1).
    """

    rate_bps: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rate_bps", "delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.loss, int | float) and 0.0 <= self.loss < 1.0):
            raise ValueError(f"loss must be in [0, 1), got {self.loss!r}")


def serialised_until(state_at: Callable[[float], LinkState], start: float, bits: float) -> float:
    """When the last of ``bits`` leaves a link, starting at ``start``, at the rate in force each
    moment: a fade or an outage slows a transmission, it does not freeze the rate at its start
    (``rate_bps = 0``: unlimited). The rate is looked at every ``STEP_S``, then, once a
    transmission has taken a while (an outage), every ``STEP_GROWTH`` of the time it has taken:
    a few hundred looks at most, so that a link in a long outage costs little to follow."""
    t = start
    while t - start < MAX_S:
        rate = state_at(t).rate_bps
        if rate <= 0:
            return t
        step = max(STEP_S, STEP_GROWTH * (t - start))
        if rate * step >= bits:
            return t + bits / rate
        bits -= rate * step
        t += step
    return t
