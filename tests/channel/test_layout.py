"""Hexagonal layouts, sector antennas, wrap-around and drops (TR 38.901 7.3, 7.1.3, 7.8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channel_models.calibration import PERCENTILES, REFERENCE, calibration_config
from channel_models.cell import generate
from channel_models.config import RadioConfig
from channel_models.layout import Antenna, build, drop, element_pattern_db
from emu.errors import ConfigError


def test_the_element_pattern_is_table_7_3_1() -> None:
    """A_V = -min(12 ((theta - 90) / 65)^2, 30), A_H = -min(12 (phi / 65)^2, 30),
    A = -min(-(A_V + A_H), 30): 3 dB down at half the 65-degree beamwidth in either plane,
    12 dB down at 65 degrees, the 30 dB floor behind the antenna and for the sum."""
    assert element_pattern_db(90.0, 0.0) == pytest.approx(0.0)
    assert element_pattern_db(90.0, 32.5) == pytest.approx(-3.0)
    assert element_pattern_db(90.0 + 32.5, 0.0) == pytest.approx(-3.0)
    assert element_pattern_db(90.0, 65.0) == pytest.approx(-12.0)
    assert element_pattern_db(90.0, 180.0) == pytest.approx(-30.0)
    assert element_pattern_db(90.0, -65.0) == pytest.approx(-12.0)  # symmetric
    assert element_pattern_db(90.0 + 65.0, 65.0) == pytest.approx(-24.0)
    assert element_pattern_db(90.0 + 65.0, 100.0) == pytest.approx(-30.0)  # the sum's floor


def test_a_columns_beam_peaks_at_its_tilt_with_the_rows_gain() -> None:
    """TR 38.901 Table 7.8-1's calibration panel: 10 rows 0.5 wavelengths apart, tilted to
    zenith 102 degrees: 8 dBi + 10 log10(10) = 18 dBi on the beam, less elsewhere; the
    element's own pattern (8 dBi less 12 ((102 - 90) / 65)^2 = 0.41 dB) where the beam points
    with one row, tilted mechanically."""
    column = Antenna(rows=10, spacing_wl=0.5, downtilt_deg=12.0)
    at = column.gain_dbi(np.array([102.0, 90.0, 110.0]), np.zeros(3))
    assert at[0] == pytest.approx(18.0 - 12 * (12 / 65) ** 2)
    assert at[1] < at[0] - 10 and at[2] < at[0] - 3
    one = Antenna(rows=1, downtilt_deg=12.0)
    tilted = one.gain_dbi(np.array([102.0, 90.0]), np.zeros(2))
    assert tilted[0] == pytest.approx(8.0)  # the panel's boresight, after the tilt
    assert tilted[1] == pytest.approx(8.0 - 12 * (12 / 65) ** 2)


def test_sites_sit_on_a_hexagonal_grid_with_three_sectors_each() -> None:
    lay = build(19, 3, 500.0)
    assert lay.cells == 57 and lay.sites.shape == (19, 2)
    d = np.hypot(*(lay.sites[:, None, :] - lay.sites[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1), 500.0)  # every site's nearest neighbour at the ISD
    assert sorted(set(lay.boresight_deg)) == [30.0, 150.0, 270.0]


@pytest.mark.parametrize("sites", [7, 19])
def test_wrap_around_sees_each_site_at_its_nearest_copy(sites: int) -> None:
    """Against brute force over the layout's copies at i t1 + j t2 (|t1| = sqrt(N) ISD)."""
    lay = build(sites, 1, 100.0)
    assert lay.wrap is not None
    assert np.allclose(np.hypot(*lay.wrap.T), math.sqrt(sites) * 100.0)
    p = np.random.default_rng(0).uniform(-600, 600, (500, 2))
    off = lay.offsets(p)
    copies = [i * lay.wrap[0] + j * lay.wrap[1] for i in range(-4, 5) for j in range(-4, 5)]
    brute = np.min(
        [np.hypot(*(p[:, None, :] - lay.sites - c).transpose(2, 0, 1)) for c in copies], axis=0
    )
    assert np.allclose(np.hypot(off[..., 0], off[..., 1]), brute)
    # no site is farther than the layout's own size from anywhere
    assert np.hypot(off[..., 0], off[..., 1]).max() < 100.0 * math.sqrt(sites)


def test_users_are_dropped_in_their_own_sector() -> None:
    lay = build(7, 3, 200.0)
    pos, home = drop(lay, 2100, np.random.default_rng(1), min_m=10.0, radius_m=0.0)
    assert np.array_equal(home, np.arange(2100) % 21)  # equal numbers per sector
    rel = pos - lay.sites[lay.cell_site[home]]
    r = np.hypot(rel[:, 0], rel[:, 1])
    assert r.min() >= 10.0 and r.max() <= 200.0 / math.sqrt(3) + 1e-9
    off_boresight = (np.degrees(np.arctan2(rel[:, 1], rel[:, 0])) - lay.boresight_deg[home]) % 360
    assert np.all((off_boresight <= 60.0 + 1e-9) | (off_boresight >= 300.0 - 1e-9))
    # each site's nearest user set is its own: the drop stays inside the site's hexagon
    d = np.hypot(*lay.offsets(pos).transpose(2, 0, 1))
    assert np.array_equal(d.argmin(axis=1), lay.cell_site[home])


def test_edge_cells_see_the_interference_of_inner_ones_only_with_wrap_around() -> None:
    """Static users, geometry SINR: with wrap-around the outer six sites' users look like the
    centre site's (within 1.5 dB at the median); without it they see fewer neighbours and do
    better by several dB."""

    def medians(wrap: bool) -> tuple[float, float]:
        cfg = RadioConfig(sites=7, sectors=3, isd_m=200.0, wrap_around=wrap, fading="none")
        tr = generate(cfg, 21 * 40, 0.02, np.random.default_rng(3))
        geometry = tr.geometry_db[:, 0]
        centre = tr.cell[:, 0] < 3
        return float(np.median(geometry[centre])), float(np.median(geometry[~centre]))

    inner, outer = medians(True)
    assert abs(outer - inner) < 1.5
    inner_open, outer_open = medians(False)
    assert outer_open - inner_open > 3.0


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"sites": 8}, r"radio\.sites must be one of 1, 2, 3, 4, 5, 6, 7, 19, got 8"),
        ({"sites": 7.0}, r"radio\.sites must be one of .*, got 7\.0"),
        ({"sectors": True}, r"radio\.sectors must be 1 or 3, got True"),
        (
            {"scenario": "rma", "o2i_high_loss_ratio": 0.5},
            r"radio\.o2i_high_loss_ratio must be 0 \(or unset\) for radio\.scenario = 'rma'",
        ),
        ({"sectors": 2}, r"radio\.sectors must be 1 or 3, got 2"),
        ({"downtilt_deg": 95.0}, r"radio\.downtilt_deg must be in \[-90, 90\] degrees"),
        ({"antenna_rows": 0}, r"radio\.antenna_rows must be an integer in \[1, 64\]"),
        (
            {"sectors": 3, "isd_m": 100.0, "min_distance_m": 50.0},
            r"radio\.min_distance_m must be below half of radio\.isd_m \(50 m",
        ),
        ({"indoor_ratio": 1.5}, r"radio\.indoor_ratio must be in \[0, 1\], got 1\.5"),
        (
            {"scenario": "uma", "indoor_ratio": 0.5, "h_ut_m": 2.0},
            r"radio\.h_ut_m must be at most 1\.5 m with indoor users in uma",
        ),
        (
            {"scenario": "inh", "indoor_ratio": 0.5},
            r"radio\.indoor_ratio must be 0 for radio\.scenario = 'inh'",
        ),
    ],
)
def test_a_layout_outside_the_rules_is_one_line(settings: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RadioConfig(**settings)


def test_a_sectorised_layout_bounds_users_by_its_hexagons_not_the_cell_radius() -> None:
    """cell_radius_m is the omnidirectional drop's disc: sectors drop in the site's hexagon."""
    cfg = RadioConfig(scenario="rma", sites=7, sectors=3, isd_m=1732.0, min_distance_m=200.0)
    assert cfg.min_distance_m > cfg.cell_radius_m and cfg.high_loss_share == 0.0


@pytest.mark.parametrize("scenario", ["uma", "umi"])
def test_coupling_loss_and_geometry_match_3gpps_calibration(scenario: str) -> None:
    """TR 38.901 Table 7.8-1 at 6 GHz against the companies' mean CDFs (R1-165974): within
    their spread, 3 dB for the coupling loss and 1.5 dB for the geometry, at 5% to 95%."""
    tr = generate(calibration_config(scenario), 57 * 30, 0.01, np.random.default_rng(7))
    ref = REFERENCE[scenario]
    coupling = np.percentile(-tr.coupling_loss_db[:, 0], PERCENTILES)
    geometry = np.percentile(tr.geometry_db[:, 0], PERCENTILES)
    assert np.abs(coupling - ref["coupling"]).max() < 3.0
    assert np.abs(geometry - ref["geometry"]).max() < 1.5
