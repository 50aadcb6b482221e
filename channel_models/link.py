"""The link state every radio model produces and every link consumer reads.

Layer: pure (channel_models): data only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LinkState"]


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
