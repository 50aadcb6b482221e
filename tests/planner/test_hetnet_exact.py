"""The heterogeneous-edge exact reference (branch and bound) against plain enumeration of every
batching, and its bounds against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner.hetnet.baselines import exact_any
from emu.planner.hetnet.dp import dp_plan
from emu.planner.hetnet.evaluate import HetnetPlan, evaluate
from emu.planner.hetnet.exact import _least_over_orders, exact_plan, exact_search
from emu.planner.hetnet.refine import planned
from emu.planner.hetnet.workload import random_problem, random_tasks


def _brute(jobs: list[tuple[float, float, float, float]], start: float) -> float:
    best = math.inf
    for order in itertools.permutations(jobs):
        t, total = start, 0.0
        for w, a, work, tail in order:
            t += work
            total += w * max(a, t + tail)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_combined_bound_is_the_least_over_every_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    jobs = [
        (float(w), float(a), float(work), float(tail))
        for w, (a, work, tail) in zip(
            rng.integers(1, 4, size=n), rng.uniform(0, 50, size=(n, 3)), strict=True
        )
    ]
    assert _least_over_orders(jobs, 3.0) == pytest.approx(_brute(jobs, 3.0), rel=1e-12)


@pytest.mark.parametrize(
    ("tasks", "lengths", "seed"),
    [(3, (0, 3, 6), 1), (3, (2, 4, 6), 2), (4, (1, 5), 3), (4, (3, 4), 4)],
)
def test_branch_and_bound_finds_what_enumeration_finds(
    tasks: int, lengths: tuple[int, ...], seed: int
) -> None:
    """Against every ordered batching and length (``exact_any``: 1,011 to 730 plans), from a
    poor first incumbent (the DP's plan, so the bounds must do the pruning), on instances
    with short outputs and starved to wide bands; the planner is never better."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        p = random_problem(
            rng,
            tasks,
            tasks=random_tasks(rng, tasks, output_len=(16, 64)),
            bandwidth_hz=float(rng.choice([0.2e6, 1e6, 10e6])),
        )
        want = evaluate(p, exact_any(p, lengths=lengths)).total_ms
        start = dp_plan(p, lengths=lengths)
        got, stats = exact_search(p, lengths=lengths, incumbent=start)
        assert evaluate(p, got).total_ms == pytest.approx(want, rel=1e-12)
        assert stats.scored >= 1
        mine = evaluate(p, planned(p, lengths=lengths)).total_ms
        assert mine >= want * (1 - 1e-12)


def test_exact_is_never_worse_than_its_incumbent_or_the_planner() -> None:
    """Every length (0 the target alone), 3 tasks: from the planner's plan and from one
    batch of every task without drafting (a poor start): the same total."""
    rng = np.random.default_rng(7)
    p = random_problem(rng, 3, tasks=random_tasks(rng, 3, output_len=(16, 40)))
    mine = planned(p)
    best = exact_plan(p, incumbent=mine)
    assert evaluate(p, best).total_ms <= evaluate(p, mine).total_ms
    one = HetnetPlan(batches=((0, 1, 2),), spec_len=(0,))
    assert evaluate(p, exact_plan(p, incumbent=one)).total_ms == pytest.approx(
        evaluate(p, best).total_ms, rel=1e-12
    )


def test_exact_refuses_what_it_cannot_search() -> None:
    with pytest.raises(ConfigError, match="at most 8 tasks"):
        exact_plan(random_problem(np.random.default_rng(1), 9))
    p = random_problem(np.random.default_rng(1), 3, tasks=random_tasks(np.random.default_rng(1), 3))
    with pytest.raises(ConfigError, match="over 5 partial plans"):
        exact_plan(p, incumbent=dp_plan(p), max_nodes=5)
