"""Uplink power control (TS 38.213 7.1.1) and the other cells' interference, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channel_models.cell import generate
from channel_models.config import RadioConfig
from channel_models.uplink import (
    PowerControl,
    headroom_db,
    interference_over_thermal_db,
    interference_per_slot,
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
    """Two cells, a user each on 10 PRB, mu 0, P0 -80 dBm, alpha 0.8, coupling losses (path
    loss less 8 dB of antenna gains: what a user's power control estimates, TS 38.213 7.1.1's
    reference power less RSRP), a PRB's noise -116.45 dBm (-174 + 10 log10(180 kHz) + 5 dB).
    User 0 (cell 0, loss 82 dB; 112 dB to cell 1): -80 + 10 + 65.6 = -4.4 dBm, -14.4 dBm a
    PRB, heard at cell 1 at -126.4 dBm: IoT = 10 log10(1 + 10^(-9.95/10)) = 0.42 dB.
    User 1 (cell 1, loss 92 dB; 102 dB to cell 0): 3.6 dBm, -6.4 dBm a PRB, heard at cell 0
    at -108.4 dBm: IoT = 10 log10(1 + 10^(8.05/10)) = 8.68 dB."""
    noise = -174.0 + 10 * math.log10(180e3) + 5.0
    loss = np.array([[[82.0], [112.0]], [[102.0], [92.0]]])  # [users, cells, ticks]
    pc = PowerControl(p0_dbm=-80.0, alpha=0.8, numerology=0, p_max_dbm=23.0)
    serving = np.array([[0], [1]])
    own = np.array([[82.0], [92.0]])  # each user's loss to its own cell
    iot = interference_over_thermal_db(
        loss, serving, np.full((2, 1), 10.0), pc, own_loss_db=own, noise_prb_dbm=noise
    )

    def over_thermal(heard_dbm: float) -> float:
        return 10 * math.log10(1 + 10 ** ((heard_dbm - noise) / 10))

    assert iot[:, 0] == pytest.approx([over_thermal(-108.4), over_thermal(-126.4)])
    assert iot[:, 0] == pytest.approx([8.68, 0.42], abs=0.01)


def test_a_cells_users_interfere_each_on_its_share_of_the_time() -> None:
    """Cell 1 serves two users on 10 PRB each, so each holds a given PRB half the time. At
    cell 0 the PRB hears each at its own power: user 1 (loss 92 dB to cell 1, 102 dB to cell
    0) at -108.4 dBm as above, user 2 (loss 82 dB, 107 dB to cell 0) at -80 + 10 + 65.6 - 10 =
    -14.4 dBm a PRB, heard at -121.4 dBm; the mean is (10^-10.84 + 10^-12.14) / 2 mW. When
    user 2 hands over to cell 0 (the second tick) cell 1 has one user, and cell 0 hears only
    user 1, all the time."""
    noise = -174.0 + 10 * math.log10(180e3) + 5.0
    loss = np.array(
        [[[82.0] * 2, [112.0] * 2], [[102.0] * 2, [92.0] * 2], [[107.0] * 2, [82.0] * 2]]
    )
    serving = np.array([[0, 0], [1, 1], [1, 0]])
    pc = PowerControl(p0_dbm=-80.0, alpha=0.8, numerology=0, p_max_dbm=23.0)
    own = loss[np.arange(3)[:, None], serving, np.arange(2)[None, :]]
    iot = interference_over_thermal_db(loss, serving, np.full((3, 2), 10.0), pc,
                                       own_loss_db=own, noise_prb_dbm=noise)  # fmt: skip
    heard_mw = (10 ** (-108.4 / 10) + 10 ** (-121.4 / 10)) / 2
    assert float(iot[0, 0]) == pytest.approx(10 * math.log10(1 + heard_mw / 10 ** (noise / 10)))
    alone_mw = 10 ** (-108.4 / 10)
    assert float(iot[0, 1]) == pytest.approx(10 * math.log10(1 + alone_mw / 10 ** (noise / 10)))


def test_each_slot_hears_the_users_the_other_cells_schedule_in_it() -> None:
    """The users of the test above, cell 1 giving slot 0 to user 1 and slot 1 to user 2: cell
    0's PRB hears user 1 (-108.4 dBm) in slot 0 and user 2 (-121.4 dBm) in slot 1, not their
    mean in both; cell 1's users hear user 0 (-126.4 dBm) in both."""
    loss = np.array([[[82.0], [112.0]], [[102.0], [92.0]], [[107.0], [82.0]]])
    serving = np.array([[0], [1], [1]])
    held = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # [users, slots]
    per_prb = np.array([[-14.4], [-6.4], [-14.4]])  # dBm: the powers above, per PRB
    heard = interference_per_slot(loss, serving, held, per_prb)
    assert 10 * np.log10(heard) == pytest.approx(
        np.array([[-108.4, -121.4], [-126.4, -126.4], [-126.4, -126.4]])
    )


def test_the_uplinks_interference_follows_the_other_cells_scheduling_slot_by_slot() -> None:
    """Still users, no fading: the downlink (every cell at full power) is the same in every
    tick, the uplink is not, because who the other cells schedule changes from slot to slot
    (20 users a cell for 13 resource-block groups: PF picks 13 of them each slot; ticks of a
    slot each, so that a tick's mean does not average it away)."""
    cfg = RadioConfig(sites=7, fading="none", tick_ms=1.0, numerology=0)
    tr = generate(cfg, 140, 1.0, np.random.default_rng(2))
    assert tr.sinr_down_db.std(axis=1).max() < 1e-9
    assert tr.sinr_up_db.std(axis=1).mean() > 0.3
