"""The affine latency fit recovers known constants and reports how well the line holds."""

from __future__ import annotations

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner.fit import fit_affine


def test_fit_recovers_exact_constants() -> None:
    c, beta = 1.2077e-11, 95.1074  # the paper's Qwen3-32B edge
    work = np.geomspace(1e11, 5e13, 30)
    fit = fit_affine(work, c * work + beta)
    assert fit.c_ms_per_flop == pytest.approx(c, rel=1e-9)
    assert fit.beta_ms == pytest.approx(beta, rel=1e-9)
    assert fit.max_rel_err < 1e-9
    assert fit.r2 == pytest.approx(1.0)


def test_fit_recovers_constants_under_noise_and_reports_the_error() -> None:
    rng = np.random.default_rng(1)
    c, beta = 4.0305e-11, 33.8151  # the paper's Qwen3-1.7B device
    work = rng.uniform(1e10, 2e12, 400)
    noise = rng.normal(1.0, 0.03, work.size)  # 3% multiplicative timing noise
    fit = fit_affine(work, (c * work + beta) * noise)
    assert fit.c_ms_per_flop == pytest.approx(c, rel=0.02)
    assert fit.beta_ms == pytest.approx(beta, rel=0.02)
    assert 0.015 < fit.mean_rel_err < 0.035  # about E|N(0, 0.03)| = 0.024
    assert fit.points == 400


def test_a_curve_that_is_not_a_line_shows_in_the_error() -> None:
    work = np.linspace(1e9, 1e12, 50)
    fit = fit_affine(work, 10 + 40 * np.sqrt(work / 1e12))
    assert fit.max_rel_err > 0.1
    assert fit.r2 < 0.99


def test_constants_are_never_negative() -> None:
    work = np.array([1.0, 2.0, 3.0])
    fit = fit_affine(work, np.array([30.0, 20.0, 10.0]))  # falling time: no negative slope
    assert fit.c_ms_per_flop == 0.0 and fit.beta_ms > 0


def test_a_fit_needs_two_distinct_workloads() -> None:
    with pytest.raises(ConfigError, match="two or more different FLOP counts"):
        fit_affine([5.0, 5.0], [1.0, 1.1])
    with pytest.raises(ConfigError, match="finite and > 0"):
        fit_affine([1.0, 2.0], [1.0, 0.0])
