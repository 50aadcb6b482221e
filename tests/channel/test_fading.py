"""Small-scale fading and correlated shadowing: distributions and correlations over many
seeded draws, each within a stated tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from scipy.special import j0

from channel_models.fading import fading_gain, sum_of_sinusoids
from channel_models.shadowing import correlated_normal

N = 4000  # independent realisations (users)


def test_rayleigh_envelope_passes_a_kolmogorov_smirnov_test() -> None:
    h = sum_of_sinusoids(np.full(N, 50.0), np.array([0.0, 0.37]), np.random.default_rng(1))
    for col in range(2):
        env = np.abs(h[:, col])
        # Unit mean power: Rayleigh with scale sqrt(1/2).
        p = scipy.stats.kstest(env, "rayleigh", args=(0.0, math.sqrt(0.5))).pvalue
        assert p > 0.01
        assert np.mean(env**2) == pytest.approx(1.0, rel=0.05)
    # The same test rejects a wrong distribution (it has power).
    assert scipy.stats.kstest(np.abs(h[:, 0]), "rayleigh", args=(0.0, 0.6)).pvalue < 1e-3


def test_autocorrelation_follows_clarke_j0() -> None:
    fd = 40.0
    tau = np.linspace(0.0, 0.05, 26)  # two Doppler periods
    h = sum_of_sinusoids(np.full(N, fd), tau, np.random.default_rng(2))
    acf = (h[:, :1].conj() * h).mean(axis=0).real
    np.testing.assert_allclose(acf, j0(2 * math.pi * fd * tau), atol=0.05)


def test_rician_envelope_has_its_k_factor() -> None:
    k = 10 ** (9 / 10)
    h = sum_of_sinusoids(np.full(N, 20.0), np.array([0.1]), np.random.default_rng(3), k_factor=k)
    env = np.abs(h[:, 0])
    # Rice with nu^2 = K/(K+1), 2 sigma^2 = 1/(K+1).
    sigma = math.sqrt(0.5 / (k + 1))
    b = math.sqrt(k / (k + 1)) / sigma
    assert scipy.stats.kstest(env, "rice", args=(b, 0.0, sigma)).pvalue > 0.01
    assert scipy.stats.kstest(env, "rayleigh", args=(0.0, math.sqrt(0.5))).pvalue < 1e-6


def test_gains_on_slots_have_unit_mean_and_block_fading_holds_per_block() -> None:
    rng = np.random.default_rng(4)
    g = fading_gain("rayleigh", np.full(200, 10.0), 2000, 1e-3, rng)  # sampled every 5 slots
    assert g.shape == (200, 2000)
    assert g.mean() == pytest.approx(1.0, rel=0.05)
    blocks = fading_gain("block", np.zeros(300), 100, 1e-3, rng, block_s=0.01)
    assert np.all(blocks[:, :10] == blocks[:, :1]) and not np.all(blocks[:, 10] == blocks[:, 0])
    # Rayleigh power is exponential with mean 1.
    assert scipy.stats.kstest(blocks[:, 0], "expon").pvalue > 0.01
    assert np.all(fading_gain("none", np.zeros(3), 7, 1e-3, rng) == 1.0)


def test_shadowing_has_unit_spread_and_the_standards_spatial_correlation() -> None:
    rng = np.random.default_rng(5)
    corr_m = 10.0
    # Pairs of users at 0, 5, 10 and 30 m, the pairs far apart from each other.
    for sep in (0.0, 5.0, 10.0, 30.0):
        pos = np.zeros((2 * 600, 1, 2))
        pos[0::2, 0, 0] = np.arange(600) * 1e4
        pos[1::2, 0, 0] = np.arange(600) * 1e4 + sep
        z = correlated_normal(pos, corr_m, rng)[:, 0]
        assert z.std() == pytest.approx(1.0, abs=0.06)
        r = np.corrcoef(z[0::2], z[1::2])[0, 1]
        assert r == pytest.approx(math.exp(-sep / corr_m), abs=0.08)


def test_shadowing_along_a_path_decorrelates_with_distance_moved() -> None:
    rng = np.random.default_rng(6)
    users, ticks, step_m, corr_m = 1500, 40, 1.0, 10.0
    pos = np.zeros((users, ticks, 2))
    pos[:, :, 0] = np.arange(users)[:, None] * 1e4 + np.arange(ticks)[None, :] * step_m
    z = correlated_normal(pos, corr_m, rng)
    for lag in (1, 5, 10, 20):
        r = np.corrcoef(z[:, 0], z[:, lag])[0, 1]
        assert r == pytest.approx(math.exp(-lag * step_m / corr_m), abs=0.07)
    still = correlated_normal(np.zeros((3, 5, 2)) + np.arange(3)[:, None, None] * 50, 10.0, rng)
    assert np.all(still == still[:, :1])  # a user who does not move keeps its shadowing
