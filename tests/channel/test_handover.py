"""Handover on the A3 event (TS 38.331 5.5.4.4) with layer-3 filtering (5.5.3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from channel_models.cell import generate
from channel_models.config import RadioConfig
from channel_models.handover import A3, L1_PERIOD_MS, _filter_weight, serve
from emu.errors import ConfigError

TICK_MS = 10.0


def _two_cells(diff_db: np.ndarray) -> np.ndarray:
    """One user: cell 0 at -80 dBm, cell 1 at -80 + diff per tick [1, 2, ticks]."""
    return np.stack([np.full(diff_db.size, -80.0), -80.0 + diff_db])[None]


def test_a3_hands_over_once_the_condition_holds_for_the_time_to_trigger() -> None:
    """Unfiltered (k = 0), offset 3 dB, hysteresis 1 dB: cell 1 at 5 dB above from tick 10
    enters A3 (5 - 1 > 3) there; held for 40 ms it triggers at tick 14, and 30 ms of
    interruption cuts ticks 14, 15 and 16."""
    diff = np.where(np.arange(40) >= 10, 5.0, -5.0)
    rule = A3(offset_db=3.0, hysteresis_db=1.0, ttt_ms=40.0, filter_k=0, interruption_ms=30.0)
    s = serve(_two_cells(diff), TICK_MS, rule)
    assert s.cell[0].tolist() == [0] * 14 + [1] * 26
    assert np.flatnonzero(s.interrupted[0]).tolist() == [14, 15, 16]
    assert s.handovers.tolist() == [1]


def test_no_handover_inside_offset_plus_hysteresis_or_shorter_than_the_time_to_trigger() -> None:
    rule = A3(offset_db=3.0, hysteresis_db=1.0, ttt_ms=40.0, filter_k=0)
    # 3.5 dB better: Mn - Hys = 2.5 dB above, under the 3 dB offset
    assert serve(_two_cells(np.full(40, 3.5)), TICK_MS, rule).handovers.tolist() == [0]
    # 10 dB better for 30 ms at a time, then worse: the timer restarts every time
    bursts = np.where(np.arange(40) % 6 < 3, 10.0, -10.0)
    bursts[:3] = -10.0
    assert serve(_two_cells(bursts), TICK_MS, rule).handovers.tolist() == [0]


def test_the_layer_3_filter_delays_the_handover() -> None:
    """F_n = (1 - a) F_(n-1) + a M_n with a = 1/2^(k/4) per L1 period (TS 38.331 5.5.3.2):
    a step of 10 dB needs several filtered samples before it shows 4 dB."""
    assert _filter_weight(4, L1_PERIOD_MS) == pytest.approx(0.5)
    assert _filter_weight(0, TICK_MS) == pytest.approx(1.0)
    # per tick the same time constant: 20 ticks of 10 ms are one 200 ms step of the filter
    assert (1 - _filter_weight(8, TICK_MS)) ** 20 == pytest.approx(1 - 1 / 2**2)
    diff = np.where(np.arange(200) >= 10, 10.0, -10.0)
    fast = serve(_two_cells(diff), TICK_MS, A3(ttt_ms=0.0, filter_k=0))
    slow = serve(_two_cells(diff), TICK_MS, A3(ttt_ms=0.0, filter_k=8))
    first = int(np.argmax(fast.cell[0])), int(np.argmax(slow.cell[0]))
    assert first[0] == 10 and first[1] > 20


def test_no_rule_keeps_the_first_cell() -> None:
    diff = np.where(np.arange(40) >= 10, 20.0, -5.0)
    s = serve(_two_cells(diff), TICK_MS, None)
    assert s.cell[0].tolist() == [0] * 40 and s.handovers.tolist() == [0]


def test_moving_users_hand_over_and_the_interruption_is_an_outage() -> None:
    cfg = RadioConfig(
        sites=7, sectors=3, isd_m=200.0, mobility="linear", speed_mps=15.0, numerology=0
    )
    tr = generate(cfg, 21, 20.0, np.random.default_rng(5))
    assert tr.handovers.sum() > 0
    changed = np.diff(tr.cell, axis=1) != 0
    assert np.array_equal(changed.sum(axis=1), tr.handovers)
    # the interruption: the ticks from each handover on carry nothing, in both directions
    u, t = np.argwhere(changed)[0]
    for series in (tr.up, tr.down):
        assert series.rate_bps[u, t + 1] == 1.0 and series.loss[u, t + 1] == pytest.approx(0.99)
    # a static user never hands over; nor anyone with handover off
    assert (
        generate(RadioConfig(sites=7, sectors=3), 21, 5.0, np.random.default_rng(5)).handovers.sum()
        == 0
    )
    cfg_off = RadioConfig(sites=7, sectors=3, mobility="linear", speed_mps=15.0, handover=False)
    off = generate(cfg_off, 21, 20.0, np.random.default_rng(5))
    assert off.handovers.sum() == 0 and np.all(off.cell == off.cell[:, :1])


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"ho_ttt_ms": 50.0}, r"radio\.ho_ttt_ms must be one of TS 38\.331's TimeToTrigger"),
        ({"ho_ttt_ms": False}, r"radio\.ho_ttt_ms must be one of .*, got False"),
        ({"ho_offset_db": True}, r"radio\.ho_offset_db must be in"),
        ({"ho_hysteresis_db": 0.3}, r"radio\.ho_hysteresis_db must be in \[0, 15\] dB in 0\.5"),
        ({"ho_offset_db": 16.0}, r"radio\.ho_offset_db must be in \[-15, 15\] dB"),
        ({"ho_filter_k": 10}, r"radio\.ho_filter_k must be one of TS 38\.331's FilterCoeff"),
        ({"ho_interruption_ms": -1.0}, r"radio\.ho_interruption_ms must be in \[0, 1000\]"),
    ],
)
def test_handover_settings_outside_the_standard_are_one_line(settings: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RadioConfig(**settings)
