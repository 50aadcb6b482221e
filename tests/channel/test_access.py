"""Schedulers, mobility and delivery traces."""

from __future__ import annotations

import numpy as np
import pytest

from channel_models.mobility import place_uniform, trajectories
from channel_models.scheduler import min_max_upload, proportional_fair, round_robin
from channel_models.trace import from_mahimahi, opportunities, rate_bps, to_mahimahi
from emu.errors import ConfigError


def _fading_rates(users: int, slots: int, mean: np.ndarray, seed: int) -> np.ndarray:
    """Per-slot rates: each user's mean times i.i.d. exponential (Rayleigh power) fading."""
    return mean[:, None] * np.random.default_rng(seed).exponential(1.0, (users, slots))


def test_round_robin_shares_equally_within_each_cell() -> None:
    cell = np.array([0, 0, 1, 1, 1])
    s = round_robin(np.ones((5, 4)), cell)
    np.testing.assert_allclose(s[:, 0], [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])


def test_proportional_fair_shares_track_each_users_average_rate() -> None:
    users, slots = 6, 40000
    mean = np.array([1.0, 1.0, 2.0, 2.0, 4.0, 4.0])
    rate = _fading_rates(users, slots, mean, 1)
    share = proportional_fair(rate, np.zeros(users, dtype=np.int64), tc_slots=100)
    assert np.allclose(share.sum(axis=0), 1.0)
    time_share = share.mean(axis=1)
    served = (share * rate).mean(axis=1)
    # PF: equal time for users of i.i.d. fading, so each one's throughput is its own average
    # rate times the same factor (within 10%)...
    np.testing.assert_allclose(time_share, 1 / users, rtol=0.1)
    ratio = served / mean
    assert ratio.max() / ratio.min() < 1.1
    # ...and riding the fading peaks beats round robin's total (multi-user diversity).
    rr = (round_robin(rate, np.zeros(users, dtype=np.int64)) * rate).sum()
    assert (share * rate).sum() > 1.5 * rr


def test_proportional_fair_with_groups_serves_several_users_a_slot() -> None:
    rate = _fading_rates(8, 2000, np.ones(8), 2)
    share = proportional_fair(rate, np.zeros(8, dtype=np.int64), groups=4)
    assert np.all((share > 0).sum(axis=0) == 4) and np.allclose(share.sum(axis=0), 1.0)


def test_min_max_split_equalises_upload_times() -> None:
    rate = np.array([[10.0, 20.0], [40.0, 40.0], [5.0, 1.0]])
    payload = np.array([100.0, 100.0, 50.0])
    share = min_max_upload(rate, np.zeros(3, dtype=np.int64), payload)
    times = payload[:, None] / (share * rate)
    assert np.allclose(times, times[0:1]) and np.allclose(share.sum(axis=0), 1.0)
    # Any other split is slower for someone: moving 1% of the band raises the maximum.
    other = share.copy()
    other[:, 0] += np.array([0.01, -0.01, 0.0])
    assert (payload / (other[:, 0] * rate[:, 0])).max() > times[0, 0]


def test_mobility_keeps_users_in_the_cell_at_their_speed() -> None:
    rng = np.random.default_rng(3)
    start = place_uniform(50, 10.0, 100.0, rng)
    r0 = np.hypot(start[:, 0], start[:, 1])
    assert r0.min() >= 10.0 and r0.max() <= 100.0
    for kind in ("linear", "waypoint"):
        p = trajectories(kind, start, 600, 0.1, rng, speed_mps=3.0, r_min=10, r_max=100, pause_s=1)
        r = np.hypot(p[..., 0], p[..., 1])
        assert r.max() <= 100.0 + 1e-9
        step = np.hypot(*np.moveaxis(np.diff(p, axis=1), -1, 0))
        assert step.max() <= 3.0 * 0.1 + 1e-9 and step.mean() > 0.05
    still = trajectories("static", start, 5, 0.1, rng, speed_mps=3.0, r_min=10, r_max=100)
    assert np.all(still == start[:, None, :])
    with pytest.raises(ConfigError, match=r"radio\.mobility must be one of"):
        trajectories("teleport", start, 5, 0.1, rng, speed_mps=1, r_min=10, r_max=100)


def test_trace_export_then_import_gives_the_same_delivery_schedule() -> None:
    rng = np.random.default_rng(4)
    bits = rng.uniform(0, 40_000, 5000)  # up to 40 Mbit/s per millisecond
    bits[1000:1200] = 0.0  # an outage
    text = to_mahimahi(bits)
    back = from_mahimahi(text)
    sent = opportunities(bits)
    last = int(np.flatnonzero(sent)[-1]) + 1
    np.testing.assert_array_equal(back, sent[:last])
    # No capacity lost to rounding: within one opportunity (1504 bytes) of the goodput.
    assert abs(back.sum() * 12_032 - bits.sum()) < 12_032
    assert rate_bps(back)[:1].item() == back[0] * 12.032e6


def test_a_recorded_trace_replays_and_bad_traces_are_refused() -> None:
    # 12 Mbit/s for 3 ms, a gap, then 24 Mbit/s: Mahimahi's one line per opportunity.
    text = "1\n2\n3\n6\n6\n"
    np.testing.assert_array_equal(from_mahimahi(text), [1, 1, 1, 0, 0, 2])
    for bad, rule in [("", "is empty"), ("3\n2\n", "non-decreasing"), ("1\nx\n", "one integer")]:
        with pytest.raises(ConfigError, match=rule):
            from_mahimahi(bad)


def test_proportional_fair_does_not_depend_on_the_order_of_users() -> None:
    # Cells as contiguous blocks take a fast path; shuffled users take the masked one.
    rng = np.random.default_rng(5)
    rate = _fading_rates(12, 500, np.linspace(1, 3, 12), 5)
    cell = np.repeat([0, 1, 2], 4)
    perm = rng.permutation(12)
    a = proportional_fair(rate, cell, groups=2)
    b = proportional_fair(rate[perm], cell[perm], groups=2)
    np.testing.assert_array_equal(a[perm], b)
