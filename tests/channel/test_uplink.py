"""Uplink power control (TS 38.213 7.1.1) and the other cells' interference, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channel_models.uplink import (
    PowerControl,
    headroom_db,
    interference_over_thermal_db,
    pusch_dbm,
)

PC = PowerControl(p0_dbm=-80.0, alpha=0.8, numerology=1, p_max_dbm=23.0)


def test_pusch_power_is_the_open_loop_capped_at_p_cmax() -> None:
    """P = min(P_CMAX, P_O_PUSCH + 10 log10(2^mu M) + alpha PL): mu 1, M 10 gives
    10 log10(20) = 13.01 dB; PL 100 dB: -80 + 13.01 + 80 = 13.01 dBm; PL 130 dB: the open loop
    asks 37.01 dBm and gets P_CMAX, 23 dBm."""
    got = pusch_dbm([100.0, 130.0], 10, PC)
    assert got == pytest.approx([10 * math.log10(20), 23.0])


def test_headroom_is_the_whole_carriers_open_loop_against_p_cmax() -> None:
    """51 PRB at mu 1, PL 100 dB: -80 + 10 log10(102) + 80 = 20.09 dBm, 2.91 dB under 23."""
    assert float(headroom_db(100.0, 51, PC)) == pytest.approx(10 * math.log10(102) - 23.0)


def test_each_cell_hears_the_other_cells_users_at_their_own_powers() -> None:
    """Two cells, a user each on 10 PRB, mu 0, P0 -80 dBm, alpha 0.8, 8 dB of antenna gains,
    a PRB's noise -116.45 dBm (-174 + 10 log10(180 kHz) + 5 dB).
    User 0 (cell 0, PL 90 dB; 120 dB to cell 1): -80 + 10 + 72 = 2 dBm, -8 dBm a PRB, heard
    at cell 1 at -8 + 8 - 120 = -120 dBm: IoT = 10 log10(1 + 10^(-3.55/10)) = 1.59 dB.
    User 1 (cell 1, PL 100 dB; 110 dB to cell 0): 10 dBm, 0 dBm a PRB, heard at cell 0 at
    -102 dBm: IoT = 10 log10(1 + 10^(14.45/10)) = 14.60 dB."""
    noise = -174.0 + 10 * math.log10(180e3) + 5.0
    pl = np.array([[[90.0], [120.0]], [[110.0], [100.0]]])  # [users, cells, ticks]
    pc = PowerControl(p0_dbm=-80.0, alpha=0.8, numerology=0, p_max_dbm=23.0)
    own = pl[[0, 1], [0, 1]]  # each user's path loss to its own cell
    iot = interference_over_thermal_db(
        pl, np.array([0, 1]), np.array([10.0, 10.0]), pc, own_pl_db=own, gains_db=8.0,
        noise_prb_dbm=noise,
    )  # fmt: skip

    def over_thermal(heard_dbm: float) -> float:
        return 10 * math.log10(1 + 10 ** ((heard_dbm - noise) / 10))

    assert iot[:, 0] == pytest.approx([over_thermal(-102.0), over_thermal(-120.0)])
    assert iot[:, 0] == pytest.approx([14.60, 1.59], abs=0.01)


def test_a_cells_users_interfere_each_on_its_share_of_the_time() -> None:
    """Cell 1 serves two users on 10 PRB each, so each holds a given PRB half the time. At
    cell 0 the PRB hears each at its own power: user 1 (PL 100 dB to cell 1, 110 dB to cell 0)
    at -102 dBm as above, user 2 (PL 90 dB, 115 dB to cell 0) at -80 + 10 + 72 - 10 = -8 dBm a
    PRB, heard at -8 + 8 - 115 = -115 dBm; the mean is (10^-10.2 + 10^-11.5) / 2 mW."""
    noise = -174.0 + 10 * math.log10(180e3) + 5.0
    pl = np.array([[[90.0], [120.0]], [[110.0], [100.0]], [[115.0], [90.0]]])
    serving = np.array([0, 1, 1])
    pc = PowerControl(p0_dbm=-80.0, alpha=0.8, numerology=0, p_max_dbm=23.0)
    own = pl[[0, 1, 2], serving]
    iot = interference_over_thermal_db(pl, serving, np.full(3, 10.0), pc, own_pl_db=own,
                                       gains_db=8.0, noise_prb_dbm=noise)  # fmt: skip
    heard_mw = (10 ** (-102.0 / 10) + 10 ** (-115.0 / 10)) / 2
    assert float(iot[0, 0]) == pytest.approx(10 * math.log10(1 + heard_mw / 10 ** (noise / 10)))
