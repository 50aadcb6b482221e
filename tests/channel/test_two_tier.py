"""The two-tier radio: the drop, the attachment, the interference and the gains over time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channel_models.two_tier import TwoTierConfig, drop, gain_series, paper_path_loss_db
from emu.errors import ConfigError


def test_one_small_cell_is_the_papers_distance_law() -> None:
    cfg = TwoTierConfig(near_m=20.0, far_m=250.0)
    t = drop(cfg, 4000, np.random.default_rng(1))
    assert (t.cell == 0).all()
    assert t.distance_m.min() >= 20.0 - 1e-9 and t.distance_m.max() <= 250.0 + 1e-9
    np.testing.assert_allclose(t.gain_db, -paper_path_loss_db(t.distance_m))
    # Uniform over the annulus's area: E[d^2] = (near^2 + far^2) / 2.
    assert np.mean(t.distance_m**2) == pytest.approx((20.0**2 + 250.0**2) / 2, rel=0.03)
    # 250 m under 128.1 + 37.6 log10(0.25): 105.46 dB.
    assert float(paper_path_loss_db(250.0)) == pytest.approx(105.463, abs=1e-3)
    assert np.isneginf(t.interference_dbm_per_hz).all()


def test_small_cells_keep_their_distances_and_users_attach_to_the_nearest() -> None:
    cfg = TwoTierConfig(small_cells=6, macro_radius_m=500.0, macro_gap_m=75.0, spacing_m=120.0)
    t = drop(cfg, 600, np.random.default_rng(2))
    sites = t.small_cells_m
    assert np.hypot(*sites.T).min() >= 75.0
    apart = np.hypot(*(sites[:, None] - sites[None, :]).transpose(2, 0, 1))
    assert apart[~np.eye(6, dtype=bool)].min() >= 120.0
    # No shadowing: the best-heard small cell is the nearest.
    d = np.hypot(*(t.users_m[:, None] - sites[None, :]).transpose(2, 0, 1))
    np.testing.assert_array_equal(t.cell, np.argmin(d, axis=1))
    np.testing.assert_allclose(t.distance_m, d.min(axis=1))
    # Users are dropped around the cells in turn; most stay with the cell they were dropped at.
    assert (t.cell == np.arange(600) % 6).mean() > 0.5
    assert sorted(k for m in t.members for k in m) == list(range(600))


def test_shadowing_spreads_the_gain_and_the_attachment_follows_it() -> None:
    cfg = TwoTierConfig(shadowing_db=8.0)
    t = drop(cfg, 4000, np.random.default_rng(3))
    extra = t.gain_db + paper_path_loss_db(t.distance_m)  # minus the shadowing's draw
    assert np.std(extra) == pytest.approx(8.0, rel=0.05)
    two = drop(TwoTierConfig(small_cells=2, spacing_m=300, shadowing_db=8.0), 2000,
               np.random.default_rng(4))  # fmt: skip
    d = np.hypot(*(two.users_m[:, None] - two.small_cells_m[None]).transpose(2, 0, 1))
    nearest = np.argmin(d, axis=1)
    # Some users hear the farther cell better, and the best cell's gain is what they get.
    assert 0 < (two.cell != nearest).sum() < 1000


def test_shared_reuse_hears_the_other_cells_users() -> None:
    cfg = TwoTierConfig(small_cells=2, spacing_m=200.0, reuse="shared")
    t = drop(cfg, 6, np.random.default_rng(5), power_w=0.2, bandwidth_hz=1e6)
    for c in range(2):
        others = np.flatnonzero(t.cell != c)
        d = np.hypot(*(t.users_m[others] - t.small_cells_m[c]).T)
        density_w = (0.2 * 10 ** (-paper_path_loss_db(d) / 10)).sum() / 1e6
        assert t.interference_dbm_per_hz[c] == pytest.approx(10 * math.log10(density_w) + 30)
    ortho = drop(TwoTierConfig(small_cells=2, spacing_m=200.0), 6, np.random.default_rng(5))
    assert np.isneginf(ortho.interference_dbm_per_hz).all()


def test_gain_series_fades_around_the_mean_gain() -> None:
    rng = np.random.default_rng(6)
    mean = np.array([-100.0, -110.0])
    flat = gain_series(TwoTierConfig(), mean, 1.0, 1.0, rng)
    assert flat.shape == (2, 1000)
    np.testing.assert_allclose(flat, np.repeat(mean[:, None], 1000, axis=1))
    many = np.full(400, -100.0)
    ray = gain_series(TwoTierConfig(fading="rayleigh", speed_mps=3.0), many, 2.0, 1.0, rng)
    power = 10 ** ((ray + 100.0) / 10)
    assert power.mean() == pytest.approx(1.0, rel=0.03)  # the planner's mean gain
    assert (power < 0.1).mean() == pytest.approx(1 - math.exp(-0.1), abs=0.01)  # Rayleigh
    block = gain_series(TwoTierConfig(fading="block", block_ms=10.0), many[:5], 0.1, 1.0, rng)
    assert (np.diff(block[:, :10], axis=1) == 0).all() and (block[:, 9] != block[:, 10]).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"small_cells": 0}, "hetnet.radio.small_cells must be an integer >= 1, got 0"),
        ({"far_m": 10.0}, "hetnet.radio.far_m must be > near_m (20), got 10.0"),
        ({"path_loss": "uma"}, "hetnet.radio.path_loss must be one of paper, umi, got 'uma'"),
        ({"hotspot_share": 1.5}, "hetnet.radio.hotspot_share must be in [0, 1], got 1.5"),
        ({"small_cells": 500}, "hetnet.radio.small_cells must be few enough"),
    ],
)
def test_bad_radio_is_one_line_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):  # fmt: skip
        TwoTierConfig(**fields)  # type: ignore[arg-type]


def test_umi_path_loss_draws_line_of_sight() -> None:
    cfg = TwoTierConfig(path_loss="umi")
    t = drop(cfg, 2000, np.random.default_rng(7))
    extra = -t.gain_db - paper_path_loss_db(t.distance_m)
    assert np.isfinite(t.gain_db).all()
    assert np.ptp(extra) > 5.0  # LOS and NLOS links differ at the same distance
