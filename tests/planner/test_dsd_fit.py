"""Training AWC (emu.planner.dsd.fit): the oracle's label, the loss and its gradient, and a fit
that learns what it is shown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner.dsd.awc import FEATURES, Awc, AwcNetwork, Situation
from emu.planner.dsd.fit import SLO, Measured, fit_awc, forward_backward, oracle_window, stakes


def _m(tpot: float, tpot_p95: float = 30.0, ttft_p95: float = 200.0) -> Measured:
    return Measured(tpot_mean_ms=tpot, tpot_p95_ms=tpot_p95, ttft_p95_ms=ttft_p95)


def test_the_label_is_the_fastest_window_that_meets_the_service_levels() -> None:
    runs = {1: _m(18.0, ttft_p95=320.0), 2: _m(25.0), 4: _m(21.0), 8: _m(21.0, tpot_p95=36.0)}
    assert oracle_window(runs) == 4  # 1 misses TTFT, 8 misses TPOT's p95
    assert oracle_window(runs, SLO(ttft_p95_ms=400.0, tpot_p95_ms=40.0)) == 1
    none_meet = {g: _m(40.0 - g, tpot_p95=50.0) for g in (2, 3, 6)}
    assert oracle_window(none_meet) == 6  # then the fastest whatever its levels
    assert oracle_window({6: _m(20.0), 3: _m(20.0)}) == 3  # a tie goes to the smaller window
    with pytest.raises(ValueError, match="at least one"):
        oracle_window({})


def test_the_gradient_is_the_losss_slope() -> None:
    rng = np.random.default_rng(3)
    hidden = 5
    net = {
        "p": rng.normal(size=(hidden, 11)), "w1": rng.normal(size=(hidden, hidden)),
        "b1": rng.normal(size=hidden), "w2": rng.normal(size=(hidden, hidden)),
        "head": rng.normal(size=hidden), "bias": np.asarray(0.3),
    }  # fmt: skip
    x, y = rng.normal(size=(40, 11)), rng.normal(scale=3.0, size=40)  # both of Smooth-L1's arms
    _, grads = forward_backward(net, x, y)
    eps = 1e-6
    for name, value in net.items():
        flat = value.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            saved = flat[i]
            flat[i] = saved + eps
            up = forward_backward(net, x, y)[0]
            flat[i] = saved - eps
            down = forward_backward(net, x, y)[0]
            flat[i] = saved
            assert grads[name].reshape(-1)[i] == pytest.approx((up - down) / (2 * eps), abs=1e-6)


def test_a_fit_learns_longer_windows_for_longer_round_trips() -> None:
    """Snapshots labelled 2 below a round of 30 ms and 8 above: the fitted AWC says so, and
    the same data and seed give the same weights."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(3000, len(FEATURES)))
    rtt = FEATURES.index("rtt_avg_norm")
    x[:, rtt] = rng.uniform(0.2, 3.0, size=3000)
    y = np.where(x[:, rtt] > 1.0, 8 - 4, 2 - 4).astype(float)
    fit = fit_awc(x, y, epochs=50, lr=1e-2, max_gamma=8, seed=1)
    assert fit.losses[-1] < 0.25 * fit.losses[0]
    awc = Awc(network=fit.network, default=4)
    assert awc.max_gamma == 8  # the network's, not the default window
    near = Situation(queue_len=3, batch_size=12, round_ms=(12.0,) * 3, acceptance_recent=0.8)
    far = Situation(queue_len=3, batch_size=12, round_ms=(80.0,) * 3, acceptance_recent=0.8)
    assert Awc(network=fit.network).window("a", near) == 2
    assert Awc(network=fit.network).window("a", far) == 8
    again = fit_awc(x, y, epochs=50, lr=1e-2, max_gamma=8, seed=1).network
    assert np.array_equal(again.p, fit.network.p) and again.bias == fit.network.bias


def test_a_networks_largest_window_travels_with_its_arrays() -> None:
    net = fit_awc(np.zeros((4, 11)), np.zeros(4), epochs=1, max_gamma=6).network
    back = AwcNetwork.from_arrays(net.arrays(), where="w.npz")
    assert back.max_gamma == 6 and np.array_equal(back.head, net.head)
    assert AwcNetwork.from_arrays(AwcNetwork.hand_set().arrays(), where="h").max_gamma == 0
    for bad in (99, [4, 8]):
        with pytest.raises(ConfigError, match=r"w\.npz: max_gamma must be one integer in"):
            AwcNetwork.from_arrays({**net.arrays(), "max_gamma": bad}, where="w.npz")
    with pytest.raises(ValueError, match="fit_awc needs x of n x 11"):
        fit_awc(np.zeros((4, 3)), np.zeros(4))


def test_a_scenario_weighs_what_a_wrong_window_would_cost() -> None:
    assert stakes({2: _m(20.0), 4: _m(20.0)}) == 0.01  # alike: the least weight
    assert stakes({1: _m(20.0), 4: _m(30.0)}) == pytest.approx(0.25)  # mean 25 over 20
    unfinished = {1: _m(math.inf), 4: _m(30.0)}  # a window whose runs finished nothing
    assert oracle_window(unfinished) == 4 and stakes(unfinished) == 0.01
    assert oracle_window({1: _m(math.inf), 2: _m(math.inf)}) == 1
