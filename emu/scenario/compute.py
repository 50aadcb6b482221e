"""Compute profiles as scenario fields: a model's shape and a latency model, used by the users'
devices (``[users]``), the edge (``[edge]``) and a verifier node of its own
(``[[deployment.nodes]]``).

Layer: emu (orchestration; typed configuration, no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchConfig", "LatencyConfig", "LatencyOverride"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchConfig:
    name: str = ""
    layers: int = 1
    hidden: int = 1
    ffn: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyConfig:
    """G(b, F) = c * b * F + beta (ms), the DiP-SD cost model's affine latency."""

    c_ms_per_flop: float = 0.0
    beta_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyOverride:
    """The fields of a latency model one node sets for itself; each unset one is the section's
    it overrides (a verifier node's: ``[edge.latency]``'s)."""

    c_ms_per_flop: float | None = None
    beta_ms: float | None = None

    def over(self, base: LatencyConfig) -> LatencyConfig:
        return LatencyConfig(
            c_ms_per_flop=base.c_ms_per_flop if self.c_ms_per_flop is None else self.c_ms_per_flop,
            beta_ms=base.beta_ms if self.beta_ms is None else self.beta_ms,
        )

    def given(self) -> dict[str, float]:
        return {k: v for k, v in (("c_ms_per_flop", self.c_ms_per_flop),
                                  ("beta_ms", self.beta_ms)) if v is not None}  # fmt: skip
