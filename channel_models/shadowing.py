"""Spatially correlated Gaussian processes for shadow fading and the LOS state.

Layer: pure (numpy; no I/O; a generator passed in).

The standard's correlation model (TR 38.901 7.5 and 7.6.3.3) is exponential in distance:
corr(x1, x2) = exp(-|x1 - x2| / d_corr). ``correlated_normal`` draws, per user, a standard
normal process along its trajectory with that correlation: at the first instant jointly over
all users (their positions' covariance, by Cholesky), then as the Gudmundson AR(1) along each
path, z_t = rho_t z_(t-1) + sqrt(1 - rho_t^2) e_t with rho_t = exp(-moved_t / d_corr).
Shadowing is sigma_SF times it; the LOS state is LOS where Phi(z) < P_LOS(d), the spatially
consistent procedure of 7.6.3.3. The loop is over ticks, vectorised over users.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

__all__ = ["correlated_normal", "los_state", "per_state"]

FloatArray = npt.NDArray[np.float64]


def correlated_normal(
    positions: FloatArray, corr_m: float, rng: np.random.Generator, *, copies: int = 0
) -> FloatArray:
    """Standard normal values [users, ticks] correlated exp(-distance / corr_m) in space; with
    ``copies``, that many independent processes [users, copies, ticks] (one per site)."""
    users, ticks, _ = positions.shape
    n = max(copies, 1)
    p0 = positions[:, 0, :]
    dist = np.hypot(p0[:, None, 0] - p0[None, :, 0], p0[:, None, 1] - p0[None, :, 1])
    cov = np.exp(-dist / corr_m) + 1e-9 * np.eye(users)
    z = np.empty((users, n, ticks))
    z[:, :, 0] = np.linalg.cholesky(cov) @ rng.standard_normal((users, n))
    if ticks > 1:
        moved = np.hypot(*np.moveaxis(np.diff(positions, axis=1), -1, 0))  # [users, ticks-1]
        rho = np.exp(-moved / corr_m)[:, None, :]
        innov = np.sqrt(1.0 - rho**2) * rng.standard_normal((users, n, ticks - 1))
        if not moved.any():
            z[:, :, 1:] = z[:, :, :1]
        else:
            for k in range(1, ticks):
                z[:, :, k] = rho[:, :, k - 1] * z[:, :, k - 1] + innov[:, :, k - 1]
    return z if copies else z[:, 0, :]


def los_state(z: FloatArray, p_los: FloatArray) -> npt.NDArray[np.bool_]:
    """LOS where the correlated variable's uniform transform falls below P_LOS."""
    return np.asarray(ndtr(z) < p_los)


def per_state(
    positions: FloatArray,
    los: npt.NDArray[np.bool_],
    corr_m: tuple[float, float],
    rng: np.random.Generator,
) -> FloatArray:
    """Standard normal values for shadowing, shaped as ``los`` ([users, ticks], or [users,
    sites, ticks]: one process per site): one correlated process with the LOS decorrelation
    distance ``corr_m[0]`` and one with the NLOS distance ``corr_m[1]`` (TR 38.901 Table
    7.5-6), each user following the one of its state at each tick."""
    copies = los.shape[1] if los.ndim == 3 else 0
    z_los = correlated_normal(positions, corr_m[0], rng, copies=copies)
    z_nlos = correlated_normal(positions, corr_m[1], rng, copies=copies)
    return np.asarray(np.where(los, z_los, z_nlos), dtype=np.float64)
