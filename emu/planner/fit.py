"""Fitting the cost model's affine latency models to measured times.

Layer: pure (numpy and scipy; no I/O). The cost model times a step of batch b and FLOPs F as
G(b, F) = c b F + beta. Given measured points (b F, ms), ``fit_affine`` finds c >= 0 and
beta >= 0 minimising the relative squared error (each point weighted by 1 / ms, so a 30 ms
step and a 300 ms step count alike), and reports how well the line holds: the mean and largest
relative error over the points, and R^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from emu.errors import ConfigError
from emu.planner.model import LatencyModel

__all__ = ["AffineFit", "fit_affine"]


@dataclass(frozen=True, slots=True)
class AffineFit:
    c_ms_per_flop: float
    beta_ms: float
    points: int
    mean_rel_err: float  # mean over the points of |fit - measured| / measured
    max_rel_err: float
    r2: float

    def model(self, name: str = "") -> LatencyModel:
        return LatencyModel(name=name, c_ms_per_flop=self.c_ms_per_flop, beta_ms=self.beta_ms)


def fit_affine(work: npt.ArrayLike, ms: npt.ArrayLike) -> AffineFit:
    """Fit ms ~ c * work + beta with c, beta >= 0; ``work`` is b F per point [FLOPs]."""
    x = np.asarray(work, dtype=np.float64).ravel()
    y = np.asarray(ms, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"{x.size} work values for {y.size} times")
    if x.size < 2 or np.ptp(x) <= 0:
        raise ConfigError(
            f"a latency fit needs points at two or more different FLOP counts, got {x.size}"
        )
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ConfigError("measured times must be finite and > 0 ms")
    # Scale the FLOP column to O(1) so that the solver sees a well-conditioned system.
    scale = float(np.abs(x).max())
    w = 1.0 / y
    A = np.column_stack([x / scale, np.ones_like(x)]) * w[:, None]
    (c_scaled, beta), _ = nnls(A, y * w)
    fit = c_scaled / scale * x + beta
    rel = np.abs(fit - y) / y
    ss_res = float(((fit - y) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return AffineFit(
        c_ms_per_flop=float(c_scaled / scale),
        beta_ms=float(beta),
        points=int(x.size),
        mean_rel_err=float(rel.mean()),
        max_rel_err=float(rel.max()),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
    )
