"""DSD's pure core against the golden values of ../shared/systems/dsd.md section 9: the fixed
acceptance curve, Spec++'s choices, the backoff's oscillation, AWC's outputs for fixed inputs
and its post-processing; the routers' rules."""

from __future__ import annotations

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner.dsd.acceptance import PositionCurve, expected_accepted, sample_accepted
from emu.planner.dsd.awc import FEATURES, Awc, AwcNetwork, Situation, awc_features, quantise
from emu.planner.dsd.routing import ROUTERS, DsdRouter, VerifierState
from emu.planner.dsd.windows import Backoff, Choice, SpecPP, Static, window_policy

CURVE = PositionCurve()


def _choice(ctx: int = 100, last_ratio: float | None = None, **situation: object) -> Choice:
    s = Situation(queue_len=0, batch_size=1, **situation)  # type: ignore[arg-type]
    return Choice(pair="d0>v0", positions=CURVE.probabilities(ctx), last_ratio=last_ratio,
                  situation=s)  # fmt: skip


def test_position_curve_golden_values() -> None:
    want = [0.930, 0.902, 0.875, 0.849, 0.823, 0.799, 0.775, 0.751]
    assert CURVE.probabilities(100) == pytest.approx(want, abs=5e-4)
    p1600, p3000 = CURVE.probabilities(1600), CURVE.probabilities(3000)
    assert (p1600[0], p1600[-1]) == pytest.approx((0.883, 0.714), abs=5e-4)
    assert (p3000[0], p3000[-1]) == pytest.approx((0.856, 0.691), abs=5e-4)
    # Deeper than the curve: the last position repeats; never below the floor.
    assert CURVE.probabilities(100, 10)[8:] == pytest.approx([want[-1]] * 2, abs=5e-4)
    assert PositionCurve(base=0.2).probabilities(100).min() == pytest.approx(0.30)


def test_expected_accepted_golden_values_and_sampling() -> None:
    want = [0.930, 1.769, 2.503, 3.126, 3.639, 4.049, 4.366, 4.605]
    got = [expected_accepted(CURVE.probabilities(100, g)) for g in range(1, 9)]
    assert got == pytest.approx(want, abs=1e-3)
    assert got[0] / 1 == pytest.approx(0.93) and got[-1] / 8 == pytest.approx(0.58, abs=0.005)
    rng = np.random.default_rng(7)
    p = CURVE.probabilities(100, 4)
    draws = [sample_accepted(p, rng) for _ in range(20_000)]
    assert np.mean(draws) == pytest.approx(want[3], rel=0.02)
    assert set(draws) == {0, 1, 2, 3, 4}


def test_specpp_golden_choices() -> None:
    specpp = SpecPP()
    assert [specpp.window(_choice(ctx)) for ctx in (74, 100, 1500)] == [7, 7, 7]
    assert [specpp.window(_choice(ctx)) for ctx in (1501, 2500)] == [6, 6]
    assert specpp.window(_choice(2501)) == 5
    # A curve that never loses 70% within 8 positions: the longest window.
    high = Choice(
        pair="x", positions=np.full(8, 0.99), last_ratio=None, situation=_choice().situation
    )
    assert specpp.window(high) == 8


def test_backoff_oscillates_on_expected_ratios() -> None:
    backoff, gamma, seen = Backoff(), None, []
    ratio: float | None = None
    for _ in range(5):
        gamma = backoff.window(_choice(last_ratio=ratio))
        seen.append(gamma)
        ratio = expected_accepted(CURVE.probabilities(100, gamma)) / gamma
    assert seen == [4, 8, 4, 8, 4]
    assert backoff.window(_choice(last_ratio=0.25)) == 2
    assert Static().window(_choice()) == 4


COLD = {"queue_len": 1, "batch_size": 2, "workload_util": 0.3,
        "acceptance_recent": 0.78, "capability": 0.5, "last_gamma": 2, "context": 100}  # fmt: skip
LIGHT = {"queue_len": 1, "batch_size": 4, "acceptance_recent": 0.78, "capability": 0.5,
         "last_gamma": 4, "context": 74, "round_ms": (15.0,), "tpot_ms": (7.5,)}  # fmt: skip
TYPICAL = {**COLD, "round_ms": (60.0,), "tpot_ms": (20.0,)}


@pytest.mark.parametrize(
    ("situation", "out", "gamma"),
    [
        ({"queue_len": 0, "batch_size": 1, "capability": 0.0, "last_gamma": 0}, 0.0, 4),
        (COLD, -0.0508, 4),
        (LIGHT, -0.6103, 3),
        (TYPICAL, -4.0511, 1),
    ],
)
def test_awc_hand_set_head_golden_outputs(situation: dict, out: float, gamma: int) -> None:
    s = Situation(**situation)
    x = awc_features(s, default=4, max_gamma=4)
    assert AwcNetwork.hand_set().out(x) == pytest.approx(out, abs=1e-4)
    for max_gamma in (4, 8):  # the same window either way
        assert Awc(network=AwcNetwork.hand_set(), max_gamma=max_gamma).window("p", s) == gamma


def test_awc_features_read_the_situation() -> None:
    s = Situation(queue_len=6, batch_size=12, queue_utils=(0.1, 0.2, 0.3, 0.4),
                  round_ms=(30.0, 60.0, 90.0), tpot_ms=(15.0, 45.0), pending_tokens=10_000,
                  acceptance_estimate=0.6, context=1024)  # fmt: skip
    x = dict(zip(FEATURES, awc_features(s, default=4, max_gamma=8), strict=True))
    assert x["queue_util"] == 0.5 and x["queue_trend"] == pytest.approx(0.2)
    assert x["pending_norm"] == 2.0  # clipped
    assert x["rtt_avg_norm"] == pytest.approx(2.0) and x["rtt_delta"] == pytest.approx(1.0)
    assert x["tpot_avg_norm"] == pytest.approx(2.0) and x["tpot_delta"] == pytest.approx(2.0)
    assert x["acceptance_recent"] == 0.6  # no ratio yet: the estimate
    assert x["last_gamma_norm"] == 0.5 and x["context_norm"] == 0.5


def _constant(out: float) -> AwcNetwork:
    """A network whose output is ``out`` whatever it reads."""
    zero = np.zeros((1, 1))
    return AwcNetwork(p=np.zeros((1, len(FEATURES))), w1=zero, b1=np.zeros(1), w2=zero,
                      head=np.zeros(1), bias=out)  # fmt: skip


def test_awc_post_processing_golden_sequence() -> None:
    """Clamped outputs 1, 4, 4, 4, 4 smooth to 1, 2.2, 2.92, 3.352, 3.6112 and give
    1, 1 (the fused dwell), 3, 3, 4."""
    awc = Awc(network=_constant(-10.0))  # clamped to 1
    s = Situation(queue_len=0, batch_size=1)
    got = [awc.window("p", s)]
    awc.network = _constant(0.0)  # 4
    got += [awc.window("p", s) for _ in range(4)]
    assert got == [1, 1, 3, 3, 4]
    assert awc._smoothed["p"] == pytest.approx(3.6112)
    assert Awc(network=_constant(0.0)).window("other", s) == 4  # each pair its own
    assert quantise(2.5) == 2 and quantise(5.0) == 4 and quantise(7.0) == 6  # ties low


def test_awc_network_arrays_round_trip_and_bad_shapes() -> None:
    net = AwcNetwork.hand_set()
    again = AwcNetwork.from_arrays(net.arrays(), where="awc.npz")
    x = np.linspace(-1, 2, len(FEATURES))
    assert again.out(x) == pytest.approx(net.out(x))
    bad = {**net.arrays(), "w1": np.zeros((11, 10))}
    with pytest.raises(ConfigError, match=r"awc.npz: array 'w1' must have shape \(11x11\)"):
        AwcNetwork.from_arrays(bad, where="awc.npz")
    with pytest.raises(ConfigError, match=r"array 'p' must have shape \(16x11\)"):
        AwcNetwork.from_arrays({**net.arrays(), "p": np.zeros((16, 10))}, where="f")
    with pytest.raises(ConfigError, match="has no array 'head'"):
        AwcNetwork.from_arrays({"p": net.p, "w1": net.w1, "w2": net.w2}, where="f")
    with pytest.raises(ConfigError, match="activation must be one of silu, relu"):
        AwcNetwork.from_arrays({**net.arrays(), "activation": "tanh"}, where="f")


def test_window_policies_by_name() -> None:
    assert window_policy("static").window(_choice()) == 4
    assert window_policy("specpp").window(_choice()) == 7
    assert window_policy("awc").window(_choice()) == 4  # the hand-set head at zero load


V = [VerifierState(name=f"v{i}") for i in range(4)]


def test_jsq_takes_the_shortest_queue_counting_the_busy_batch() -> None:
    router = DsdRouter("jsq", seed=1)
    states = [
        VerifierState(name="a", enqueued=2),
        VerifierState(name="b", enqueued=1, busy=True),  # 2
        VerifierState(name="c", enqueued=1),  # 1
    ]
    assert router.route("c1", "d0", states) == "c"
    # Ties drawn at random among the equal: both get chosen over many conversations.
    tied = [VerifierState(name="a", enqueued=1), VerifierState(name="b", busy=True)]
    picks = {router.route(f"t{i}", "d0", tied) for i in range(40)}
    assert picks == {"a", "b"}
    # semi-clairvoyant: the same rule with the first of equals.
    sc = DsdRouter("semi-clairvoyant")
    assert {sc.route(f"t{i}", "d0", tied) for i in range(10)} == {"a"}


def test_routes_are_sticky_and_forgotten_at_the_end() -> None:
    router = DsdRouter("round-robin")
    assert [router.route(f"c{i}", "d0", V) for i in range(5)] == ["v0", "v1", "v2", "v3", "v0"]
    assert router.route("c1", "d0", V) == "v1"  # the same conversation keeps its verifier
    assert router.route("c1", "d1", V) == "v1"
    assert router.route("x", "d1", V) == "v0"  # each drafter its own counter
    router.forget("c1")
    assert router.route("c1", "d0", V) == "v1"  # routed afresh: d0's next turn


def test_jiq_prefers_the_verifier_idle_longest() -> None:
    router = DsdRouter("jiq", seed=3)
    router.became_idle("v2")
    router.became_idle("v1")
    assert router.route("a", "d0", V) == "v2"
    busy = [VerifierState(name="v1", busy=True), VerifierState(name="v3")]
    assert router.route("b", "d0", busy) in {"v1", "v3"}  # v1 is busy again: drawn at random


def test_power_of_two_takes_less_work_left() -> None:
    slow = VerifierState(name="slow", enqueued=24, batch_size=12, mean_batch_ms=40.0)
    fast = VerifierState(name="fast", enqueued=24, batch_size=12, mean_batch_ms=40.0, weight=2.0)
    assert slow.work_left_ms == 80.0 and fast.work_left_ms == 40.0
    for policy in ("jsq2", "wjsq2"):
        router = DsdRouter(policy, seed=5)
        assert router.route("c", "d0", [slow, fast]) == "fast"
    wc = DsdRouter("weighted-cluster")
    heavy = VerifierState(name="heavy", enqueued=24, batch_size=12, cluster_weight=4.0)
    assert wc.route("c", "d0", [fast, heavy]) == "heavy"  # 74/4 < 40


def test_every_router_agrees_with_one_verifier() -> None:
    for policy in ROUTERS:
        router = DsdRouter(policy, seed=11)
        assert [router.route(f"c{i}", "d0", V[:1]) for i in range(3)] == ["v0"] * 3
    with pytest.raises(ValueError, match="router must be one of"):
        DsdRouter("fastest")
