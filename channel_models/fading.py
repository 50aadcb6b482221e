"""Small-scale fading: Rayleigh and Rician envelopes with Doppler, and block fading.

Layer: pure (numpy; no I/O; a generator passed in). Vectorised over users and time.

Rayleigh: a sum of ``n_paths`` sinusoids per user with random angles of arrival alpha_n and
complex Gaussian gains c_n ~ CN(0, 1/N), h(t) = sum_n c_n exp(j 2 pi f_d cos(alpha_n) t). At
every instant h is exactly CN(0, 1) (a sum of independent complex Gaussians), so the envelope
is exactly Rayleigh, and over users (the ensemble) the autocorrelation is exactly
J0(2 pi f_d tau), Clarke's (equal-amplitude sinusoids would only approach Rayleigh as N grows).
Rician adds a line-of-sight ray of power K/(K+1) at its own angle. Block fading draws one
CN(0, 1) gain per block, held for the block.

The gain is sampled at the slot, or coarser when the Doppler allows (at least 20 samples per
1 / f_d), and interpolated linearly in between: a pedestrian's channel at 3.5 GHz changes over
tens of ms, and this keeps 100 users x 60 s at 1 ms slots within the benchmark's budget.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = ["FADING_KINDS", "fading_gain", "sum_of_sinusoids"]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
FADING_KINDS = ("auto", "rayleigh", "rician", "block", "none")


def sum_of_sinusoids(
    doppler_hz: npt.ArrayLike,
    t_s: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    n_paths: int = 16,
    k_factor: npt.ArrayLike = 0.0,
) -> ComplexArray:
    """Complex gains [users, times] with unit mean power; ``k_factor`` (linear) per user adds
    a line-of-sight ray (0: Rayleigh)."""
    fd = np.asarray(doppler_hz, dtype=np.float64).reshape(-1, 1)
    t = np.asarray(t_s, dtype=np.float64).reshape(1, -1)
    users = fd.shape[0]
    k = np.broadcast_to(np.asarray(k_factor, dtype=np.float64), (users,)).reshape(-1, 1)
    alpha = rng.uniform(0.0, 2.0 * math.pi, size=(users, n_paths))
    c = rng.standard_normal((users, n_paths, 2)) @ np.array([1.0, 1j]) / math.sqrt(2.0 * n_paths)
    w = 2.0 * math.pi * fd * np.cos(alpha)  # [users, paths] rad/s
    h = np.zeros((users, t.shape[1]), dtype=np.complex128)
    for n in range(n_paths):
        h += c[:, n : n + 1] * np.exp(1j * (w[:, n : n + 1] * t))
    if np.any(k > 0):
        theta = rng.uniform(0.0, 2.0 * math.pi, size=(users, 1))
        phi0 = rng.uniform(0.0, 2.0 * math.pi, size=(users, 1))
        los = np.exp(1j * (2.0 * math.pi * fd * np.cos(theta) * t + phi0))
        h = np.sqrt(k / (k + 1.0)) * los + np.sqrt(1.0 / (k + 1.0)) * h
    return h


def fading_gain(
    kind: str,
    doppler_hz: npt.ArrayLike,
    slots: int,
    slot_s: float,
    rng: np.random.Generator,
    *,
    k_factor: npt.ArrayLike = 0.0,
    block_s: float = 0.01,
    n_paths: int = 16,
) -> FloatArray:
    """Power gain |h|^2 [users, slots] (mean 1). ``kind``: rayleigh, rician (``k_factor``
    linear, per user), auto (rician where k_factor > 0, else rayleigh), block, none."""
    fd = np.asarray(doppler_hz, dtype=np.float64).ravel()
    users = fd.size
    if kind == "none":
        return np.ones((users, slots))
    if kind == "block":
        per_block = max(1, round(block_s / slot_s))
        blocks = -(-slots // per_block)
        g = rng.standard_normal((users, blocks, 2)) @ np.array([1.0, 1j]) / math.sqrt(2.0)
        return np.repeat(np.abs(g) ** 2, per_block, axis=1)[:, :slots]
    if kind not in FADING_KINDS:
        raise ConfigError(f"radio.fading must be one of {', '.join(FADING_KINDS)}, got {kind!r}")
    k = 0.0 if kind == "rayleigh" else k_factor
    # Sample no finer than the slot and no coarser than 1 / (20 f_d).
    step = max(1, int(1.0 / (20.0 * max(float(fd.max()), 1e-3) * slot_s)))
    coarse = np.arange(0, slots + step, step)
    h = sum_of_sinusoids(fd, coarse * slot_s, rng, n_paths=n_paths, k_factor=k)
    if step == 1:
        return np.asarray(h[:, :slots].real ** 2 + h[:, :slots].imag ** 2, dtype=np.float64)
    # Linear interpolation of the complex gain between samples, one step-long block at a time.
    frac = (np.arange(step) / step).astype(np.float32)
    h32 = h.astype(np.complex64)
    a, b = h32[:, :-1, None], h32[:, 1:, None]
    hf = (a + (b - a) * frac).reshape(users, -1)[:, :slots]
    return np.asarray(hf.real**2 + hf.imag**2, dtype=np.float64)
