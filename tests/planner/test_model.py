"""The cost model's formulas against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emu.errors import ConfigError, Infeasible
from emu.planner import Edge, LatencyModel, ModelArch, Plan, User, evaluate, expected_tokens
from emu.planner.model import draft_flops, verify_flops
from tests.planner.conftest import EDGE, PHONE, QWEN_1_7B, QWEN_32B, paper_problem


@pytest.mark.parametrize(
    ("alpha", "length", "expected"),
    [
        (0.5, 0, 1.0),
        (0.5, 1, 1.5),
        (0.5, 3, 1.875),  # 1 + .5 + .25 + .125
        (0.78, 7, (1 - 0.78**8) / 0.22),
        (0.9, 20, (1 - 0.9**21) / 0.1),
    ],
)
def test_expected_tokens(alpha: float, length: int, expected: float) -> None:
    assert float(expected_tokens(alpha, length)) == pytest.approx(expected, rel=1e-12)


def test_flops_of_the_paper_models() -> None:
    # F_d(512) = 4 * 28 * 2048 * (2*2048 + 512 + 1 + 6144) = 229376 * 10753
    assert float(draft_flops(QWEN_1_7B, 512)) == 229376 * 10753
    # F_v(7, 512) = 4 * 64 * 5120 * 7 * (2*5120 + 512 + 7 + 25600) = 1310720 * 7 * 36359
    assert float(verify_flops(QWEN_32B, 7, 512)) == 1310720 * 7 * 36359


def test_memory_terms() -> None:
    # Weights: 64 * (8 * 5120^2 + 4 * 5120 * 25600) = 64 * 733_478_912 bytes.
    assert QWEN_32B.weight_bytes == 64 * (8 * 5120**2 + 4 * 5120 * 25600)
    assert float(QWEN_32B.kv_bytes(512)) == 4 * 64 * 5120 * 512
    # (80e9 - 46.94e9) / (4 * 64 * 5120 * 512 = 671088640) = 49.26 -> 49 users at prefix 512.
    assert int(EDGE.batch_capacity(512)) == 49


def test_two_batch_plan_by_hand() -> None:
    p = paper_problem(users=3)
    plan = Plan(batches=((0, 1), (2,)), draft_len=(2, 5, 0))
    ev = evaluate(p, plan)
    g = 4.0305e-11 * 229376 * 10753 + 33.8151  # ms per drafted token
    t_v0 = 1.2077e-11 * 2 * (1310720 * 5 * (10240 + 512 + 5 + 25600)) + 95.1074
    t_v1 = 1.2077e-11 * 1 * (1310720 * 1 * (10240 + 512 + 1 + 25600)) + 95.1074
    d0 = 5 * g + 3.0  # the slowest member drafts 5; user 2 does not draft
    assert ev.verify_ms == pytest.approx((t_v0, t_v1), rel=1e-12)
    assert ev.ready_ms == pytest.approx((d0, 0.0), rel=1e-12)
    cycle = max(t_v0 + t_v1, d0 + t_v0, 0.0 + t_v1)
    assert ev.cycle_ms == pytest.approx(cycle, rel=1e-12)
    u = (1 - 0.78**3) / 0.22 + (1 - 0.78**6) / 0.22 + 1.0
    assert ev.throughput_tok_s == pytest.approx(1000 * u / cycle, rel=1e-12)


def test_verify_span_dominates_when_drafts_are_short() -> None:
    p = paper_problem(users=4)
    ev = evaluate(p, Plan(batches=((0, 1), (2, 3)), draft_len=(1, 1, 1, 1)))
    assert ev.cycle_ms == pytest.approx(sum(ev.verify_ms))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: User(alpha=1.3, prefix_len=1, comm_ms=0, draft=QWEN_1_7B, device=PHONE),
            "alpha must be in (0, 1), got 1.3",
        ),
        (
            lambda: User(alpha=0.5, prefix_len=1, comm_ms=-1.0, draft=QWEN_1_7B, device=PHONE),
            "comm_ms must be a finite number >= 0, got -1.0",
        ),
        (lambda: LatencyModel(c_ms_per_flop=1e-11, beta_ms=-2.0), "beta_ms must be"),
        (lambda: ModelArch(layers=0, hidden=1, ffn=1), "layers must be >= 1, got 0"),
        (
            lambda: Edge(target=QWEN_32B, latency=PHONE, memory_bytes=40e9),
            "edge.memory_bytes must exceed the target's fp16 weights",
        ),
        (lambda: paper_problem(max_draft_len=0), "planner.max_draft_len must be"),
    ],
)
def test_bad_values_name_field_value_and_rule(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()  # type: ignore[operator]


def test_user_that_does_not_fit_is_infeasible_and_says_why() -> None:
    big = User(alpha=0.7, prefix_len=60_000, comm_ms=1, draft=QWEN_1_7B, device=PHONE)
    with pytest.raises(Infeasible, match=r"user 0 does not fit .* prefix 60000"):
        paper_problem().__class__(users=(big,), edge=EDGE)


def test_plan_check_rejects_broken_plans() -> None:
    p = paper_problem(users=2)
    with pytest.raises(ConfigError, match="exactly once"):
        evaluate(p, Plan(batches=((0,), (0,)), draft_len=(1, 1)))
    with pytest.raises(ConfigError, match=r"draft_len\[1\] must be in \[0, 20\], got 21"):
        evaluate(p, Plan(batches=((0, 1),), draft_len=(1, 21)))


def test_memory_bound_marks_plan_infeasible() -> None:
    p = paper_problem(users=50)
    ev = evaluate(p, Plan(batches=(tuple(range(50)),), draft_len=(0,) * 50))
    assert not ev.feasible
    assert np.max(ev.memory_bytes) > 80e9
