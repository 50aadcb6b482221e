"""DSD's window policies (dsd.md section 4.3): how many tokens a drafter drafts next, behind
one protocol, each registered by name.

Layer: pure (emu.planner).

- ``static``: always ``default`` (4).
- ``backoff`` (the authors' "Simple"): from the drafter's last acceptance ratio r, 2 if
  r <= 0.25, 8 if r >= 0.6, else 4 (4 while r is unknown). With expected ratios it oscillates
  4, 8, 4, 8 on the authors' curve.
- ``specpp`` (Spec++): the first depth k >= 2 whose cumulative rejection ``1 - p_1 ... p_k``
  exceeds ``stop`` gives max(2, k - 1); 8 when none does.
- ``awc``: the adaptive window control (``emu.planner.dsd.awc``).

The authors choose a window once per conversation; draftnet's default is every round (the
caller decides when to ask).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from emu.planner.dsd.awc import Awc, Situation
from emu.planner.dsd.model import DsdProblem

__all__ = [
    "DSD_POLICIES",
    "AwcPolicy",
    "Backoff",
    "Choice",
    "DsdWindows",
    "SpecPP",
    "Static",
    "WindowPolicy",
    "window_policy",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """What a window policy reads: the pair it drafts for, the verifier's acceptance per
    position at this context (``positions``), the drafter's last acceptance ratio, and what
    AWC reads (``situation``)."""

    pair: str
    positions: npt.NDArray[np.float64]
    last_ratio: float | None
    situation: Situation


class WindowPolicy(Protocol):
    def window(self, c: Choice) -> int: ...


@dataclass(frozen=True, slots=True)
class Static:
    default: int = 4

    def window(self, c: Choice) -> int:
        return self.default


@dataclass(frozen=True, slots=True)
class Backoff:
    low: float = 0.25
    high: float = 0.6
    short: int = 2
    default: int = 4
    long: int = 8

    def window(self, c: Choice) -> int:
        r = c.last_ratio
        if r is None:
            return self.default
        if r <= self.low:
            return self.short
        return self.long if r >= self.high else self.default


@dataclass(frozen=True, slots=True)
class SpecPP:
    least: int = 2
    most: int = 8
    stop: float = 0.7

    def window(self, c: Choice) -> int:
        p = c.positions
        depth = np.minimum(np.arange(self.most), p.size - 1)  # deeper positions repeat the last
        cumulative = np.cumprod(p[depth])
        for k in range(2, self.most + 1):  # depth k: positions 1..k
            if 1.0 - cumulative[k - 1] > self.stop:
                return max(self.least, k - 1)
        return self.most


@dataclass(slots=True)
class AwcPolicy:
    awc: Awc

    def window(self, c: Choice) -> int:
        return self.awc.window(c.pair, c.situation)


@dataclass(frozen=True, slots=True)
class DsdWindows:
    """A window policy as the policy registry holds it: planning a DSD deployment gives a
    maker of the policy, one fresh (with its own state) for each drafter."""

    name: str
    about: str
    make: Callable[[DsdProblem], WindowPolicy]
    system: str = "dsd"
    baseline: str = ""
    max_users: int | None = None

    def plan(self, problem: DsdProblem, previous: object = None) -> Callable[[], WindowPolicy]:
        return lambda: self.make(problem)


DSD_POLICIES = (
    DsdWindows(
        "specpp",
        "Spec++: the longest window whose drafts are likely enough accepted",
        lambda p: SpecPP(most=p.max_gamma),
    ),
    DsdWindows(
        "static", "a constant window (dsd.gamma_default)", lambda p: Static(default=p.gamma_default)
    ),
    DsdWindows(
        "backoff",
        "the window from the drafter's last acceptance ratio: 2, 4 or 8",
        lambda _p: Backoff(),
    ),
    DsdWindows(
        "awc",
        "adaptive window control: a small network on 11 features of the round "
        "(dsd.awc_weights; the authors' hand-set head by default)",
        lambda p: AwcPolicy(Awc(network=p.awc, default=p.gamma_default)),
    ),
)


def window_policy(name: str, problem: DsdProblem | None = None) -> WindowPolicy:
    """A fresh policy by name, for ``problem`` (the defaults' when None)."""
    policy = next((p for p in DSD_POLICIES if p.name == name), None)
    if policy is None:
        raise ValueError(f"window policy must be one of {', '.join(p.name for p in DSD_POLICIES)}")
    return policy.make(problem if problem is not None else DsdProblem.defaults())
