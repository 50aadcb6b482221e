"""The radio pipeline end to end: users in a cell to link-state series."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import scipy.stats

from channel_models.cell import generate
from channel_models.config import RadioConfig
from channel_models.link import LinkState
from channel_models.pathloss import los_probability
from emu.errors import ConfigError


@pytest.fixture(scope="module")
def cell() -> tuple[RadioConfig, object]:
    cfg = RadioConfig(cell_radius_m=400.0)
    return cfg, generate(cfg, 40, 4.0, np.random.default_rng(7))


def test_series_have_one_state_per_tick_and_every_state_is_valid(cell: tuple) -> None:
    _, tr = cell
    assert tr.t_s.size == 400 and tr.up.rate_bps.shape == (40, 400)
    assert tr.up.goodput_bits_per_ms.shape == (40, 4000)
    for series in (tr.up, tr.down):
        for u in (0, 17, 39):
            for k in (0, 123, 399):
                assert isinstance(series.state(u, k), LinkState)  # validates itself
        assert np.all(series.rate_bps > 0)  # 0 would mean "unlimited" to a shaper
    at = tr.down.timeline(3)
    assert at(0.0) == tr.down.state(3, 0) and at(1.234) == tr.down.state(3, 123)
    assert at(99.0) == tr.down.state(3, 399)  # the last state holds after the end


def test_the_uplink_waits_for_a_grant_and_far_users_see_less(cell: tuple) -> None:
    cfg, tr = cell
    # Scheduling request (half the period on average) plus the grant.
    gap = tr.up.delay_ms.mean() - tr.down.delay_ms.mean()
    assert gap == pytest.approx(cfg.sr_period_ms / 2 + cfg.grant_delay_ms, abs=1.0)
    d = tr.distance_m.mean(axis=1)
    rho = scipy.stats.spearmanr(d, tr.sinr_down_db.mean(axis=1)).statistic
    assert rho < -0.5
    # The LOS share follows UMi's LOS probability averaged over the area (10-400 m).
    r = np.linspace(10.0, 400.0, 4001)
    expected = float((los_probability("umi", r) * r).sum() / r.sum())
    assert tr.los[:, 0].mean() == pytest.approx(expected, abs=0.12)


def test_the_same_seed_gives_the_same_trace_and_another_does_not() -> None:
    cfg = RadioConfig(scheduler="rr")
    a = generate(cfg, 5, 0.5, np.random.default_rng(1))
    b = generate(cfg, 5, 0.5, np.random.default_rng(1))
    c = generate(cfg, 5, 0.5, np.random.default_rng(2))
    np.testing.assert_array_equal(a.up.rate_bps, b.up.rate_bps)
    assert not np.array_equal(a.up.rate_bps, c.up.rate_bps)


def test_far_users_lose_packets_and_shannon_mode_has_no_block_errors() -> None:
    far = RadioConfig(cell_radius_m=2000.0, min_distance_m=1500.0, scheduler="rr")
    nr = generate(far, 20, 2.0, np.random.default_rng(3))
    assert nr.up.loss.mean() > 0.001  # HARQ cannot save every block at the cell edge
    sh = generate(dataclasses.replace(far, link="shannon"), 20, 2.0, np.random.default_rng(3))
    assert np.all(sh.up.loss[sh.up.rate_bps > 1] == 0.0)


def test_neighbour_cells_interfere_on_the_downlink() -> None:
    one = generate(RadioConfig(cell_radius_m=150.0), 30, 1.0, np.random.default_rng(4))
    seven = generate(
        RadioConfig(cell_radius_m=150.0, sites=7, isd_m=200.0), 30, 1.0, np.random.default_rng(4)
    )
    assert seven.sinr_down_db.mean() < one.sinr_down_db.mean() - 10
    assert set(np.unique(seven.cell)) <= set(range(7)) and np.unique(seven.cell).size > 1


def test_every_scheduler_shares_the_cell() -> None:
    totals = {}
    for kind in ("rr", "pf", "minmax"):
        tr = generate(RadioConfig(scheduler=kind), 8, 1.0, np.random.default_rng(5))
        totals[kind] = tr.down.goodput_bits_per_ms.sum(axis=0).mean()  # bits per ms, the cell
    # One 20 MHz carrier at 30 kHz: two slots a millisecond, each at most a 51-PRB transport
    # block at MCS 28 (40976 bits).
    assert all(0 < t <= 2 * 40976 for t in totals.values()), totals


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("bs_power_dbm", -3.0, "radio.bs_power_dbm must be in [0, 80] dBm, got -3.0"),
        ("bandwidth_hz", -20e6, "radio.bandwidth_hz must be > 0 Hz"),
        ("scenario", "suburb", "radio.scenario must be one of umi, uma, rma, inh"),
        ("scheduler", "edf", "radio.scheduler must be one of rr, pf, minmax"),
        ("tick_ms", 2.5, "radio.tick_ms must be a whole number of ms"),
        ("ul_alpha", 0.3, "radio.ul_alpha must be one of 0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1"),
        ("ul_p0_dbm", 30.0, "radio.ul_p0_dbm must be in [-202, 24] dBm (TS 38.331), got 30.0"),
    ],
)
def test_bad_radio_settings_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        RadioConfig(**{field: value})  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_settings_outside_the_model_are_refused_before_generating() -> None:
    with pytest.raises(ConfigError, match=r"radio\.carrier_hz must be in"):
        generate(RadioConfig(scenario="rma", carrier_hz=40e9), 2, 0.1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"radio\.bandwidth_hz must be a TS 38\.101-1"):
        generate(RadioConfig(bandwidth_hz=7e6), 2, 0.1, np.random.default_rng(0))


@pytest.mark.parametrize("beta", [0.005, 0.3, 1.0])
def test_the_schedulers_average_is_the_first_order_filter_it_replaces(beta: float) -> None:
    """PF's share average, y_t = beta x_t + (1 - beta) y_(t-1) from each row's mean, in numpy:
    the same as scipy.signal.lfilter to 1e-12 over a long series (blocks of the closed form)."""
    from scipy.signal import lfilter

    from channel_models.cell import _ewma

    x = np.random.default_rng(4).random((3, 20_000))
    start = (1.0 - beta) * x.mean(axis=1)[:, None]
    want, _ = lfilter([beta], [1.0, beta - 1.0], x, axis=1, zi=start)
    np.testing.assert_allclose(_ewma(x, beta), want, rtol=1e-12)


def test_one_cells_margin_is_no_setting_where_the_layout_computes_the_interference() -> None:
    with pytest.raises(ConfigError, match=r"radio\.ul_iot_db is computed with several cells"):
        RadioConfig(sites=7, ul_iot_db=3.0)


def test_power_control_holds_near_users_below_their_maximum() -> None:
    """The same users with the default open loop (P0 -80 dBm, alpha 0.8) and with every user at
    P_CMAX (P0 24 dBm, alpha 1), no SINR ceiling: no user's uplink SINR is higher under power
    control, and what it loses grows with how good its link is. By TS 38.213 7.1.1 a user below
    P_CMAX sends P0 + 10 log10(2^mu M) + alpha PL, so it loses P_CMAX - that, which is
    alpha x (its full-power SINR) plus a constant: the slope is alpha."""
    rng = np.random.default_rng
    kw: dict[str, Any] = {"numerology": 0, "max_sinr_db": 100.0}
    pc = generate(RadioConfig(**kw), 20, 5.0, rng(2))
    full = generate(RadioConfig(**kw, ul_p0_dbm=24.0, ul_alpha=1.0), 20, 5.0, rng(2))
    at_max = full.sinr_up_db.mean(axis=1)
    drop = at_max - pc.sinr_up_db.mean(axis=1)
    assert (drop >= -1e-9).all()
    slope = np.polyfit(at_max, drop, 1)[0]
    assert slope == pytest.approx(0.8, abs=0.12)
