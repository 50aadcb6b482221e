"""Instance builders shared by the planner tests."""

from __future__ import annotations

import numpy as np
import pytest

from emu.planner import Edge, LatencyModel, ModelArch, Problem, User

QWEN_1_7B = ModelArch(layers=28, hidden=2048, ffn=6144)
QWEN_32B = ModelArch(layers=64, hidden=5120, ffn=25600)
PHONE = LatencyModel(c_ms_per_flop=4.0305e-11, beta_ms=33.8151)
EDGE = Edge(
    target=QWEN_32B,
    latency=LatencyModel(c_ms_per_flop=1.2077e-11, beta_ms=95.1074),
    memory_bytes=80e9,
)


def paper_problem(users: int = 6, alpha: float = 0.78, **kw: int) -> Problem:
    us = tuple(
        User(alpha=alpha, prefix_len=512, comm_ms=3.0, draft=QWEN_1_7B, device=PHONE)
        for _ in range(users)
    )
    return Problem(users=us, edge=EDGE, **kw)


def random_problem(rng: np.random.Generator, users: int, max_draft_len: int = 20) -> Problem:
    """Heterogeneous users: acceptance, context, device speed and link all differ."""
    us = tuple(
        User(
            alpha=float(rng.uniform(0.5, 0.95)),
            prefix_len=int(rng.choice([256, 512, 1024, 2048])),
            comm_ms=float(rng.uniform(1, 30)),
            draft=QWEN_1_7B,
            device=LatencyModel(
                c_ms_per_flop=4.0305e-11 * float(rng.uniform(0.5, 2)),
                beta_ms=33.8 * float(rng.uniform(0.5, 2)),
            ),
        )
        for _ in range(users)
    )
    init = min(7, max_draft_len)
    return Problem(
        users=us,
        edge=EDGE,
        max_draft_len=max_draft_len,
        initial_draft_len=init,
        fixed_draft_len=init,
    )


@pytest.fixture
def paper() -> Problem:
    return paper_problem()
