"""How many drafted tokens a verifier accepts: DSD's position curve (dsd.md section 3.3).

Layer: pure (emu.planner).

Position ``i`` (0-based) of a draft is accepted, given every earlier one was, with probability
``p_i = clip(base * decay**i * f(ctx), floor, ceiling)``, where ``f`` lowers acceptance for long
contexts (0.92 above 2500 tokens, 0.95 above 1500, else 1). The authors' simulator caps the
depth at 8; a longer draft repeats the last position's probability. A round's accepted count
is sequential Bernoulli draws that stop at the first reject (``sample_accepted``); its mean is
``expected_accepted``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PositionCurve", "expected_accepted", "sample_accepted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionCurve:
    """The acceptance of each draft position, given the earlier ones were accepted."""

    base: float = 0.93
    decay: float = 0.97
    floor: float = 0.30
    ceiling: float = 0.995
    depth: int = 8  # positions the curve defines; deeper ones repeat the last
    # (context above, factor): the first whose threshold the context exceeds applies
    context_factors: tuple[tuple[int, float], ...] = ((2500, 0.92), (1500, 0.95))

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= self.ceiling < 1.0:
            raise ValueError(f"need 0 < floor <= ceiling < 1, got {self.floor}, {self.ceiling}")
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")

    def factor(self, context: int) -> float:
        """What a context of ``context`` tokens multiplies every position's acceptance by."""
        for above, f in sorted(self.context_factors, reverse=True):
            if context > above:
                return f
        return 1.0

    def probabilities(self, context: int, length: int | None = None) -> npt.NDArray[np.float64]:
        """p_0 .. p_{length-1} at ``context`` (``length`` defaults to the curve's depth); the
        array is shared (a simulation asks every round): read it, do not write it."""
        return _probabilities(self, self.factor(context), self.depth if length is None else length)


@functools.cache
def _probabilities(curve: PositionCurve, factor: float, n: int) -> npt.NDArray[np.float64]:
    i = np.minimum(np.arange(n), curve.depth - 1)
    p = np.clip(curve.base * curve.decay**i * factor, curve.floor, curve.ceiling)
    p.flags.writeable = False
    return p


def expected_accepted(p: npt.NDArray[np.float64]) -> float:
    """The mean accepted count of a draft whose positions are accepted with ``p`` in turn
    (drafts only: the verifier's bonus token is not counted)."""
    return float(np.sum(np.cumprod(p)))


def sample_accepted(p: npt.NDArray[np.float64], rng: np.random.Generator) -> int:
    """One round's accepted count: position by position until the first reject."""
    draws = rng.random(p.size) < p
    rejected = np.flatnonzero(~draws)
    return int(rejected[0]) if rejected.size else int(p.size)
