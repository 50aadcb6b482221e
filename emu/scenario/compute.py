"""Compute profiles as scenario fields: a model's shape and a latency model, used by the users'
devices (``[users]``), the edge (``[edge]``) and a verifier node of its own
(``[[deployment.nodes]]``).

Layer: emu (orchestration; typed configuration, no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchConfig", "LatencyConfig"]


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
