"""A node's clock offset from NTP's four timestamps (``nodes.core.clock``)."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.core.clock import ClockOffset, ClockSample


def _exchange(offset: float, up: float, down: float, t1: float, hold: float = 0.0005):
    """The four times of one exchange with the edge's clock ``offset`` ahead, taking ``up``
    and ``down`` seconds each way and ``hold`` at the edge."""
    t2 = t1 + up + offset
    t3 = t2 + hold
    t4 = t3 - offset + down
    return t1, t2, t3, t4


def test_a_symmetric_exchange_measures_the_offset_exactly() -> None:
    s = ClockSample.of(*_exchange(offset=2.5, up=0.004, down=0.004, t1=10.0))
    assert s.offset_s == pytest.approx(2.5) and s.delay_s == pytest.approx(0.008)


def test_the_least_delay_sample_wins_and_the_error_stays_within_half_its_delay() -> None:
    """Asymmetric, jittered ways: every sample's error is within half its delay, and the
    estimate is the least-delay sample's."""
    rng = np.random.default_rng(3)
    clock = ClockOffset()
    assert clock.offset_s == 0.0 and clock.uncertainty_s == float("inf")
    for k in range(8):
        up, down = 0.002 + rng.exponential(0.01), 0.002 + rng.exponential(0.01)
        s = clock.add(*_exchange(offset=-0.4, up=up, down=down, t1=100.0 + k))
        assert abs(s.offset_s - -0.4) <= s.delay_s / 2 + 1e-12
    best = min(clock.samples, key=lambda s: s.delay_s)
    assert clock.offset_s == best.offset_s
    assert clock.uncertainty_s == pytest.approx(best.delay_s / 2)
    assert abs(clock.offset_s - -0.4) <= clock.uncertainty_s
    assert clock.to_edge(5.0) == pytest.approx(5.0 + clock.offset_s)
    assert clock.record()["samples"] == 8
