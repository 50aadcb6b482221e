"""The DiP-SD cost model with random ready times: each user's per-round ready time as a
distribution, a batch's as the maximum of its members', and the cycle's expectation when each
batch waits for all its members (issue 20, step 1: the model the jitter-aware policy will plan
with).

Layer: pure (emu.planner).

The published model (``emu.planner.cost``) plans with means: batch n is ready at
t_d_n = max over members (tau_d_m + tau_c_m), and the cycle is S = max(sum_n t_v_n,
max_n (t_d_n + t_v_n)). On a real link tau_c_m is random, and the expectation of a maximum is
not the maximum of the expectations: a batch waits for its slowest member's draw each round.

A member's ready time here is its mean-model ready time (``Problem.ready_ms``: its draft and its
link's delays both ways) plus, for each way of its round trip, the extra delay the links of
``draftnet sim`` and the emulation's shaper draw (``emu.runners.simlink``,
``emu.shaping.schedule``): a half-normal jitter of scale ``jitter_ms``, and one ``rto_ms`` for
every transmission lost (each with probability ``loss``, as TCP retransmits). Distributions
live on a lattice of ``step_ms``; for independent members the maximum is exact,
P(max <= t) = prod_m F_m(t), and so is the expected cycle when every batch waits for all its
members: S <= s exactly when sum_n t_v_n <= s and every member m of every batch n has
X_m + t_v_n <= s. ``monte_carlo_cycle`` samples the same model, for what is not independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.planner.cost import Plan
from emu.planner.model import FloatArray, Problem, expected_tokens

__all__ = [
    "STEP_MS",
    "Lattice",
    "LinkNoise",
    "StochasticEvaluation",
    "expected_cycle",
    "expected_max",
    "monte_carlo_cycle",
    "ready_times",
    "stochastic_evaluate",
]

STEP_MS = 0.05  # the lattice's step: well under a millisecond, the links' jitter scale
_TAIL = 1e-9  # probability mass left off the far tails of jitter and retransmissions


@dataclass(frozen=True, slots=True)
class Lattice:
    """A distribution on ``t0_ms + k * step_ms``, k = 0..len(pmf) - 1."""

    t0_ms: float
    step_ms: float
    pmf: FloatArray

    @classmethod
    def point(cls, t_ms: float, step_ms: float = STEP_MS) -> Lattice:
        return cls(t_ms, step_ms, np.ones(1))

    @property
    def support(self) -> FloatArray:
        return np.asarray(self.t0_ms + self.step_ms * np.arange(self.pmf.size), dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.pmf @ self.support)

    def shift(self, d_ms: float) -> Lattice:
        return Lattice(self.t0_ms + d_ms, self.step_ms, self.pmf)

    def __add__(self, other: Lattice) -> Lattice:
        """The sum of two independent variables on the same step."""
        if not math.isclose(self.step_ms, other.step_ms):
            raise ValueError(f"lattices of steps {self.step_ms} and {other.step_ms} do not add")
        return Lattice(self.t0_ms + other.t0_ms, self.step_ms, np.convolve(self.pmf, other.pmf))

    def cdf(self, t_ms: npt.ArrayLike) -> FloatArray:
        """P(X <= t) at each t."""
        k = np.floor((np.asarray(t_ms, dtype=np.float64) - self.t0_ms) / self.step_ms + 1e-6)
        cum = np.concatenate(([0.0], np.cumsum(self.pmf)))
        return np.asarray(cum[np.clip(k.astype(np.int64) + 1, 0, self.pmf.size)])

    def sample(self, rng: np.random.Generator, n: int) -> FloatArray:
        k = rng.choice(self.pmf.size, size=n, p=self.pmf / self.pmf.sum())
        return np.asarray(self.t0_ms + self.step_ms * k, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class LinkNoise:
    """What one way of a user's link adds to its mean delay, per message: a half-normal jitter
    of scale ``jitter_ms``, and ``rto_ms`` for each transmission lost with ``loss``."""

    jitter_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = 200.0

    def lattice(self, step_ms: float = STEP_MS) -> Lattice:
        out = Lattice.point(0.0, step_ms)
        if self.jitter_ms > 0:
            out = out + _half_normal(self.jitter_ms, step_ms)
        if self.loss > 0:
            out = out + _retransmissions(self.loss, self.rto_ms, step_ms)
        return out


def _half_normal(sigma_ms: float, step_ms: float) -> Lattice:
    """|N(0, sigma)| on the lattice: each point takes the mass of the step around it, so the
    mean is kept to within a step's rounding."""
    top = sigma_ms * math.sqrt(2.0) * _erfinv(1.0 - _TAIL)
    edges = np.arange(0.0, top + 2 * step_ms, step_ms) - step_ms / 2
    edges[0] = 0.0
    cdf = np.array([math.erf(e / (sigma_ms * math.sqrt(2.0))) for e in edges])
    pmf = np.diff(np.append(cdf, 1.0))
    return Lattice(0.0, step_ms, pmf / pmf.sum())


def _retransmissions(loss: float, rto_ms: float, step_ms: float) -> Lattice:
    """K * rto_ms with K ~ Geometric: P(K = k) = loss^k (1 - loss)."""
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    kmax = math.ceil(math.log(_TAIL) / math.log(loss)) if loss > 0 else 0
    stride = max(1, round(rto_ms / step_ms))
    pmf = np.zeros(kmax * stride + 1)
    for k in range(kmax + 1):
        pmf[k * stride] = loss**k * (1 - loss)
    return Lattice(0.0, step_ms, pmf / pmf.sum())


def _erfinv(y: float) -> float:
    """The inverse of erf on [0, 1), by bisection (enough for a tail bound)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return hi


def ready_times(
    problem: Problem,
    draft_len: Sequence[int] | npt.NDArray[np.int64],
    up: Sequence[LinkNoise],
    down: Sequence[LinkNoise],
    step_ms: float = STEP_MS,
) -> list[Lattice]:
    """Each user's ready time (after its batch's verification ends): its mean-model ready
    time (``Problem.ready_ms``) plus its links' noise both ways; a user that does not draft
    (length 0) is ready at once, as in the mean model."""
    lengths = np.asarray(draft_len, dtype=np.int64)
    mean = problem.ready_ms(lengths)
    return [
        (up[m].lattice(step_ms) + down[m].lattice(step_ms)).shift(float(mean[m]))
        if lengths[m] > 0
        else Lattice.point(0.0, step_ms)
        for m in range(problem.size)
    ]


def expected_max(members: Sequence[Lattice], floor_ms: float = -math.inf) -> float:
    """E[max(floor, X_1, ..., X_n)] for independent members: exact, over the union of their
    supports (P(max <= t) = prod_m F_m(t) at each point)."""
    if not members:
        return floor_ms
    pts = np.unique(np.concatenate([x.support for x in members]))
    if math.isfinite(floor_ms):
        pts = np.unique(np.append(pts[pts > floor_ms], floor_ms))
    cdf = np.ones_like(pts)
    for x in members:
        cdf *= x.cdf(pts)
    return float(np.diff(cdf, prepend=0.0) @ pts)


def expected_cycle(batches: Sequence[Sequence[Lattice]], verify_ms: Sequence[float]) -> float:
    """E[S], S = max(sum_n t_v_n, max_n (t_d_n + t_v_n)) with t_d_n the maximum of batch n's
    members' ready times (every batch waits for all its members), members independent."""
    shifted = [x.shift(v) for batch, v in zip(batches, verify_ms, strict=True) for x in batch]
    return expected_max(shifted, floor_ms=float(sum(verify_ms)))


def monte_carlo_cycle(
    batches: Sequence[Sequence[Lattice]],
    verify_ms: Sequence[float],
    rng: np.random.Generator,
    n: int = 100_000,
) -> float:
    """E[S] of ``expected_cycle`` by sampling (``n`` cycles)."""
    s = np.full(n, float(sum(verify_ms)))
    for batch, v in zip(batches, verify_ms, strict=True):
        for x in batch:
            s = np.maximum(s, x.sample(rng, n) + v)
    return float(s.mean())


@dataclass(frozen=True, slots=True, kw_only=True)
class StochasticEvaluation:
    """A plan under random ready times: the expected cycle [ms], the throughput it gives (the
    tokens of a cycle over its expected span: a long run's rate), and each batch's expected
    ready time beside the mean model's."""

    throughput_tok_s: float
    cycle_ms: float
    ready_ms: tuple[float, ...]
    mean_model_ready_ms: tuple[float, ...]


def stochastic_evaluate(
    problem: Problem,
    plan: Plan,
    up: Sequence[LinkNoise],
    down: Sequence[LinkNoise],
    step_ms: float = STEP_MS,
) -> StochasticEvaluation:
    """``plan`` under the stochastic model, each batch waiting for all its members."""
    from emu.planner.cost import evaluate

    plan.check(problem)
    mean = evaluate(problem, plan)
    ready = ready_times(problem, plan.draft_len, up, down, step_ms)
    batches = [[ready[m] for m in b] for b in plan.batches]
    cycle = expected_cycle(batches, mean.verify_ms)
    tokens = float(expected_tokens(problem.alpha, np.asarray(plan.draft_len)).sum())
    return StochasticEvaluation(
        throughput_tok_s=1000.0 * tokens / cycle,
        cycle_ms=cycle,
        ready_ms=tuple(expected_max(b) for b in batches),
        mean_model_ready_ms=mean.ready_ms,
    )
