"""Delay distributions on a lattice: what a user's link adds to its mean communication time per
round, as the stochastic cost model (``emu.planner.stochastic``) and the jitter-aware policy
plan with it.

Layer: pure (emu.planner).

A ``Lattice`` is a distribution on ``t0_ms + k * step_ms``. It comes from a link's description
(``LinkNoise``: the half-normal jitter and the TCP retransmissions that ``draftnet sim``'s links
and the emulation's shaper draw, per message and way) or from samples (``Lattice.empirical``:
what the edge measured of a user's rounds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["STEP_MS", "TAIL_QUANTILE", "Lattice", "LinkNoise"]

FloatArray = npt.NDArray[np.float64]

STEP_MS = 0.05  # the lattice's step: well under a millisecond, the links' jitter scale
# The quantile that stands for a link's tail: the edge re-plans when it moves, and the
# jitter-aware policy ranks a batch's members by it.
TAIL_QUANTILE = 0.9
_TAIL = 1e-9  # probability mass left off the far tails of jitter and retransmissions
_MAX_SUPPORT = 4_000_000  # points an empirical distribution may span (200 s at 0.05 ms)
_DIRECT_CONVOLUTION = 4_000_000  # products of lengths up to which a sum convolves directly


@dataclass(frozen=True, slots=True, eq=False)
class Lattice:
    """A distribution on ``t0_ms + k * step_ms``, k = 0..len(pmf) - 1."""

    t0_ms: float
    step_ms: float
    pmf: FloatArray

    @classmethod
    def point(cls, t_ms: float, step_ms: float = STEP_MS) -> Lattice:
        return cls(t_ms, step_ms, np.ones(1))

    @classmethod
    def empirical(
        cls, samples_ms: Sequence[float] | FloatArray, step_ms: float = STEP_MS
    ) -> Lattice:
        """The samples' own distribution, each rounded to the nearest lattice point."""
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0 or not np.isfinite(x).all():
            raise ValueError(f"an empirical lattice needs finite samples, got {x.size} samples")
        t0 = float(x.min())
        if (float(x.max()) - t0) / step_ms > _MAX_SUPPORT:
            raise ValueError(
                f"samples spread over {float(x.max()) - t0:.4g} ms need more than "
                f"{_MAX_SUPPORT} points of {step_ms} ms"
            )
        k = np.rint((x - t0) / step_ms).astype(np.int64)
        pmf = np.bincount(k).astype(np.float64)
        return cls(t0, step_ms, pmf / pmf.sum())

    @property
    def support(self) -> FloatArray:
        return np.asarray(self.t0_ms + self.step_ms * np.arange(self.pmf.size), dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.pmf @ self.support)

    @property
    def top_ms(self) -> float:
        """The largest value it takes."""
        return self.t0_ms + self.step_ms * (self.pmf.size - 1)

    def quantile(self, q: float) -> float:
        """The smallest value v with P(X <= v) >= q."""
        k = int(np.searchsorted(np.cumsum(self.pmf), q * self.pmf.sum() - 1e-12))
        return self.t0_ms + self.step_ms * min(k, self.pmf.size - 1)

    def shift(self, d_ms: float) -> Lattice:
        return Lattice(self.t0_ms + d_ms, self.step_ms, self.pmf)

    def __add__(self, other: Lattice) -> Lattice:
        """The sum of two independent variables on the same step (a long convolution by FFT,
        its round-off below zero cut)."""
        if not math.isclose(self.step_ms, other.step_ms):
            raise ValueError(f"lattices of steps {self.step_ms} and {other.step_ms} do not add")
        if self.pmf.size * other.pmf.size <= _DIRECT_CONVOLUTION:
            pmf = np.convolve(self.pmf, other.pmf)
        else:
            pmf = np.clip(_fft_convolve(self.pmf, other.pmf), 0.0, None)
            pmf /= pmf.sum()
        return Lattice(self.t0_ms + other.t0_ms, self.step_ms, pmf)

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

    def round_trip(self, step_ms: float = STEP_MS) -> Lattice:
        """What a round adds: this noise on the way up and, drawn again, on the way down (one
        distribution per noise and step, made once: every user of a scenario shares it)."""
        return _round_trip(self, step_ms)


def _fft_convolve(a: FloatArray, b: FloatArray) -> FloatArray:
    """The full convolution of ``a`` and ``b`` by numpy's FFT (node processes do not load
    scipy: their start-up time is measured)."""
    n = a.size + b.size - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)[:n]
    return np.asarray(out, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _round_trip(noise: LinkNoise, step_ms: float) -> Lattice:
    one = noise.lattice(step_ms)
    return one + one


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
