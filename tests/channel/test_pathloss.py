"""TR 38.901 path loss and LOS probability against the standard's formulas, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from channel_models.pathloss import (
    SCENARIOS,
    indoor_heights,
    los_probability,
    o2i_loss_db,
    path_loss_db,
    shadowing_std_db,
)
from channel_models.shadowing import per_state
from emu.errors import ConfigError

# (scenario, los, d2D m, carrier GHz, h_BS, h_UT, expected dB). Worked from Table 7.4.1-1:
# UMi LOS 50 m, 3.5 GHz: d3D = sqrt(50^2 + 8.5^2) = 50.717; d'_BP = 4*9*0.5*3.5e9/c = 210.1 m,
#   so PL1 = 32.4 + 21 log10(50.717) + 20 log10(3.5) = 32.4 + 35.809 + 10.881 = 79.090.
# UMi LOS 500 m: past the breakpoint, PL2 = 32.4 + 40 log10(500.07) + 10.881
#   - 9.5 log10(210.1^2 + 8.5^2) = 107.108.
# UMi NLOS 200 m, 28 GHz: PL'_NLOS = 35.3 log10(200.18) + 22.4 + 21.3 log10(28) = 134.465
#   > PL_LOS = 109.673.
# UMa LOS 100 m, 3.5 GHz: d'_BP = 560.4 m; 28 + 22 log10(102.76) + 10.881 = 83.138.
# UMa NLOS 300 m, 2 GHz: 13.54 + 39.08 log10(300.92) + 20 log10(2) = 116.418 > LOS 88.546.
# RMa LOS 1000 m, 0.7 GHz, h_BS 35: d_BP = 2 pi 35 1.5 0.7e9 / c = 770.2 m, so
#   PL2 = PL1(d_BP) + 40 log10(d3D / d_BP) = 93.386.
# RMa NLOS 2000 m: the NLOS formula (W 20 m, h 5 m) gives 128.068 > LOS 105.420.
# InH LOS 20 m, 3.5 GHz (h 3 and 1 m): 32.4 + 17.3 log10(20.10) + 10.881 = 65.827.
# InH NLOS 40 m, 60 GHz: 38.3 log10(40.05) + 17.3 + 24.9 log10(60) = 122.956 > LOS 95.688.
CASES = [
    ("umi", True, 50.0, 3.5, 10.0, 1.5, 79.090),
    ("umi", True, 500.0, 3.5, 10.0, 1.5, 107.108),
    ("umi", False, 200.0, 28.0, 10.0, 1.5, 134.465),
    ("uma", True, 100.0, 3.5, 25.0, 1.5, 83.138),
    ("uma", False, 300.0, 2.0, 25.0, 1.5, 116.418),
    ("rma", True, 1000.0, 0.7, 35.0, 1.5, 93.386),
    ("rma", False, 2000.0, 0.7, 35.0, 1.5, 128.068),
    ("inh", True, 20.0, 3.5, 3.0, 1.0, 65.827),
    ("inh", False, 40.0, 60.0, 3.0, 1.0, 122.956),
]


@pytest.mark.parametrize("case", CASES)
def test_path_loss_matches_the_standard(
    case: tuple[str, bool, float, float, float, float, float],
) -> None:
    scenario, los, d, f_ghz, hb, hu, expected = case
    got = path_loss_db(scenario, los, d, freq_hz=f_ghz * 1e9, h_bs_m=hb, h_ut_m=hu)
    assert float(got) == pytest.approx(expected, abs=0.005)


def test_path_loss_is_vectorised_and_grows_with_distance() -> None:
    d = np.array([20.0, 50.0, 100.0, 400.0, 1000.0])
    for los in (True, False):
        pl = path_loss_db("umi", np.full(d.size, los), d, freq_hz=3.5e9, h_bs_m=10, h_ut_m=1.5)
        assert pl.shape == d.shape and np.all(np.diff(pl) > 0)
    nlos = path_loss_db("umi", False, d, freq_hz=3.5e9, h_bs_m=10, h_ut_m=1.5)
    los = path_loss_db("umi", True, d, freq_hz=3.5e9, h_bs_m=10, h_ut_m=1.5)
    assert np.all(nlos >= los)


@pytest.mark.parametrize(
    ("scenario", "d", "h_ut", "expected"),
    [
        ("umi", 10.0, 1.5, 1.0),
        ("umi", 100.0, 1.5, 0.18 + np.exp(-100 / 36) * 0.82),  # 0.23098
        ("uma", 50.0, 1.5, 0.36 + np.exp(-50 / 63) * 0.64),  # 0.64940
        ("uma", 100.0, 20.0, 0.47835),  # C'(20) = 0.7^1.5: (0.18 + e^(-100/63) 0.82) x 1.3759
        ("rma", 510.0, 1.5, np.exp(-0.5)),
        ("inh", 3.0, 1.0, np.exp(-1.8 / 4.7)),
        ("inh", 10.0, 1.0, 0.32 * np.exp(-3.5 / 32.6)),
    ],
)
def test_los_probability(scenario: str, d: float, h_ut: float, expected: float) -> None:
    assert float(los_probability(scenario, d, h_ut_m=h_ut)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("scenario", "kwargs", "needle"),
    [
        ("rma", {"freq_hz": 40e9}, "radio.carrier_hz must be in [0.5, 30] GHz for TR 38.901 RMa"),
        ("uma", {"h_ut_m": 30.0}, "radio.h_ut_m must be in [1.5, 22.5] m"),
        ("umi", {"h_bs_m": 25.0}, "radio.h_bs_m must be in [10, 10] m"),
        ("umi", {"d": 6000.0}, "user distance must be in [10, 5000] m"),
        ("inh", {"d": 0.5}, "user distance must be in [1, 150] m"),
    ],
)
def test_inputs_outside_the_validity_range_are_refused(
    scenario: str, kwargs: dict[str, float], needle: str
) -> None:
    sc = SCENARIOS[scenario]
    args = {"freq_hz": 3.5e9, "h_bs_m": sc.default_h_bs_m, "h_ut_m": 1.5} | kwargs
    d = np.array([args.pop("d", 50.0)])
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        sc.check(d2d_m=d, **args)


def test_an_unknown_scenario_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"radio\.scenario must be one of umi, uma, rma, inh"):
        path_loss_db("suburb", True, 50.0, freq_hz=3.5e9, h_bs_m=10, h_ut_m=1.5)


def test_shadowing_spread_follows_table_7_4_1_1_rma_los_past_its_breakpoint() -> None:
    """Table 7.4.1-1: RMa LOS sigma_SF = 4 dB for 10 m <= d2D <= d_BP and 6 dB for d_BP <
    d2D <= 10 km; d_BP = 2 pi h_BS h_UT f_c / c (note 5): at 0.7 GHz, h_BS 35 m, h_UT 1.5 m,
    d_BP = 2 pi 35 1.5 0.7e9 / 299792458 = 770.2 m. RMa NLOS 8 dB; UMi 4 and 7.82; UMa 4 and 6;
    InH 3 and 8.03."""
    kw = {"freq_hz": 0.7e9, "h_bs_m": 35.0, "h_ut_m": 1.5}
    sigma = shadowing_std_db("rma", [True, True, True, False], [100.0, 770.0, 771.0, 771.0], **kw)
    assert list(sigma) == [4.0, 4.0, 6.0, 8.0]
    for scenario, los_db, nlos_db in (("umi", 4.0, 7.82), ("uma", 4.0, 6.0), ("inh", 3.0, 8.03)):
        got = shadowing_std_db(scenario, [True, False], [50.0, 5000.0], freq_hz=3.5e9,
                               h_bs_m=10.0, h_ut_m=1.5)  # fmt: skip
        assert list(got) == [los_db, nlos_db]


def test_the_mean_k_factor_is_the_scenarios_table_7_5_6() -> None:
    """Table 7.5-6 (part 1), K-factor mu_K of LOS users: UMi 9 dB, UMa 9 dB, RMa 7 dB, InH 7 dB."""
    assert {k: s.k_factor_db for k, s in SCENARIOS.items()} == {
        "umi": 9.0, "uma": 9.0, "rma": 7.0, "inh": 7.0
    }  # fmt: skip


@pytest.mark.parametrize(("los", "corr_m"), [(False, 120.0), (True, 37.0)])
def test_shadowing_decorrelates_over_the_distance_of_the_users_state(
    los: bool, corr_m: float
) -> None:
    """Table 7.5-6: RMa's shadowing decorrelation distance is 37 m in LOS and 120 m in NLOS.
    Users 10 km apart, each walking 1 m a tick in one state: their shadowing's correlation
    120 m apart is exp(-120 / d_corr) (0.37 in NLOS, 0.04 in LOS)."""
    users, ticks, lag = 300, 240, 120
    x = np.arange(ticks, dtype=np.float64)
    along = np.broadcast_to(x, (users, ticks))
    apart = np.broadcast_to(1e4 * np.arange(users)[:, None], (users, ticks))
    pos = np.stack([along, apart], axis=-1)
    state = np.full((users, ticks), los)
    z = per_state(pos, state, SCENARIOS["rma"].sf_corr_m, np.random.default_rng(7))
    rho = np.mean([np.corrcoef(z[:, t], z[:, t + lag])[0, 1] for t in range(ticks - lag)])
    assert rho == pytest.approx(np.exp(-lag / corr_m), abs=0.1)


def test_building_penetration_is_tables_7_4_3_1_and_2() -> None:
    """At 6 GHz: L_glass = 2 + 0.2 f = 3.2 dB, L_IRRglass = 23 + 0.3 f = 24.8 dB, L_concrete
    = 5 + 4 f = 29 dB. Low loss: 5 - 10 log10(0.3 10^(-3.2/10) + 0.7 10^(-29/10)) = 13.40 dB,
    sigma_P 4.4 dB; high loss: 5 - 10 log10(0.7 10^(-24.8/10) + 0.3 10^(-29/10)) = 30.69 dB,
    sigma_P 6.5 dB; PL_in = 0.5 d_2D-in (10 m in: 5 dB)."""
    mean, std = o2i_loss_db(6e9, np.array([False, True, False]), np.array([0.0, 0.0, 10.0]))
    assert mean == pytest.approx([13.40, 30.69, 18.40], abs=0.01)
    assert std.tolist() == [4.4, 6.5, 4.4]


def test_indoor_users_stand_on_a_floor_of_a_four_to_eight_storey_building() -> None:
    """TR 38.901 Table 7.2-1: h_UT = 3 (n_fl - 1) + 1.5 with n_fl uniform in 1..N_fl
    and N_fl uniform in 4..8: floors 1 to 8, the ground floor most often."""
    h = indoor_heights(20000, 1.5, np.random.default_rng(0))
    floors = np.round((h - 1.5) / 3.0) + 1
    assert np.allclose((h - 1.5) / 3.0, floors - 1) and floors.min() == 1 and floors.max() == 8
    # P(n_fl = 1) = mean over N_fl of 1/N_fl = (1/4 + ... + 1/8) / 5 = 0.1769
    assert (floors == 1).mean() == pytest.approx(0.1769, abs=0.01)
    assert (floors == 8).mean() == pytest.approx(1 / 8 / 5, abs=0.005)
