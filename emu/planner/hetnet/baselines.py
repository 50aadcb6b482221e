"""The heterogeneous-edge system's reference plans (hetnet.md sections 4 and 5): the exact
plans by enumeration, over contiguous batches of the sorted order and over every batching,
and the baselines the paper compares with.

Layer: pure (emu.planner).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from emu.errors import ConfigError
from emu.planner.hetnet.dp import dp_plan, sorted_order
from emu.planner.hetnet.evaluate import Chains, HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem

__all__ = [
    "EXACT_PLANS_MAX",
    "ad",
    "exact_any",
    "exact_contiguous",
    "fixed_length",
    "max_batching",
    "ordered_partitions",
    "uniform",
]

EXACT_PLANS_MAX = 2_000_000  # plans the enumeration may score
FIXED_LENGTH = 4


def _score(problem: HetnetProblem, plan: HetnetPlan, cache: Chains | None = None) -> float:
    return evaluate(problem, plan, cache=cache, record=False).objective(problem)


def exact_contiguous(
    problem: HetnetProblem, *, lengths: tuple[int, ...] | None = None
) -> HetnetPlan:
    """The best plan of contiguous batches of the sorted order, each with a length of
    ``lengths`` (default 0..l_max), every one scored by the evaluator: 2^(K-1) compositions
    times |lengths|^batches plans; ConfigError past ``EXACT_PLANS_MAX``."""
    allowed = lengths or problem.lengths
    K = problem.size
    count = len(allowed) * (len(allowed) + 1) ** (K - 1)
    if count > EXACT_PLANS_MAX:
        raise ConfigError(
            f"exact: {count} plans for {K} tasks and {len(allowed)} lengths, over "
            f"{EXACT_PLANS_MAX}: restrict the lengths or the tasks"
        )
    order = sorted_order(problem)
    cache: Chains = {}
    best: tuple[float, HetnetPlan] | None = None
    for cuts in itertools.product((False, True), repeat=K - 1):
        bounds = [0, *(k + 1 for k, cut in enumerate(cuts) if cut), K]
        batches = tuple(tuple(order[a:b]) for a, b in itertools.pairwise(bounds))
        if any(len(b) > problem.batch_cap for b in batches):
            continue
        for spec in itertools.product(allowed, repeat=len(batches)):
            plan = HetnetPlan(batches=batches, spec_len=spec)
            score = _score(problem, plan, cache)
            if best is None or score < best[0]:
                best = (score, plan)
    assert best is not None
    return best[1]


def ordered_partitions(items: list[int]) -> Iterator[list[tuple[int, ...]]]:
    """Every way to cut ``items`` into non-empty batches and order the batches."""

    def partitions(rest: list[int]) -> Iterator[list[list[int]]]:
        if not rest:
            yield []
            return
        first, tail = rest[0], rest[1:]
        for part in partitions(tail):
            yield [[first], *part]
            for i in range(len(part)):
                yield [*part[:i], [first, *part[i]], *part[i + 1 :]]

    for part in partitions(items):
        for order in itertools.permutations(part):
            yield [tuple(sorted(b)) for b in order]


def exact_any(problem: HetnetProblem, *, lengths: tuple[int, ...] | None = None) -> HetnetPlan:
    """The best plan over every batching of the tasks (any grouping, any order of the
    batches) and every length of ``lengths`` per batch, each scored by the evaluator: the
    reference for small instances (about 50,000 plans at 5 tasks and 3 lengths)."""
    allowed = lengths or problem.lengths
    count = sum(len(allowed) ** len(p) for p in ordered_partitions(list(range(problem.size))))
    if count > EXACT_PLANS_MAX:
        raise ConfigError(
            f"exact: {count} plans for {problem.size} tasks and {len(allowed)} lengths over "
            f"every batching, over {EXACT_PLANS_MAX}: restrict the lengths or the tasks"
        )
    cache: Chains = {}
    best: tuple[float, HetnetPlan] | None = None
    for batches in ordered_partitions(list(range(problem.size))):
        if any(len(b) > problem.batch_cap for b in batches):
            continue
        for spec in itertools.product(allowed, repeat=len(batches)):
            plan = HetnetPlan(batches=tuple(batches), spec_len=spec)
            score = _score(problem, plan, cache)
            if best is None or score < best[0]:
                best = (score, plan)
    assert best is not None
    return best[1]


def ad(problem: HetnetProblem, partition: HetnetPlan) -> HetnetPlan:
    """Autoregressive decoding at the macro cell, on the same batches."""
    return HetnetPlan(
        batches=partition.batches,
        spec_len=(0,) * len(partition.batches),
        bandwidth=partition.bandwidth,
    )


def uniform(problem: HetnetProblem) -> HetnetPlan:
    """The band split evenly (B / K each, all uploading at once); batches and lengths by the
    DP for that split."""
    return dp_plan(problem, bandwidth="uniform")


def max_batching(problem: HetnetProblem) -> HetnetPlan:
    """As few batches as the cap allows (one of every task, or ceil(K / b_max) near-equal
    ones of the sorted order), each at the length that scores best."""
    order = sorted_order(problem)
    count = math.ceil(problem.size / problem.batch_cap)
    size = math.ceil(problem.size / count)
    batches = tuple(tuple(order[i : i + size]) for i in range(0, problem.size, size))
    best = min(
        (
            HetnetPlan(batches=batches, spec_len=(ln,) * len(batches))
            for ln in range(1, problem.max_draft_len + 1)
        ),
        key=lambda plan: _score(problem, plan),
    )
    return best


def fixed_length(problem: HetnetProblem) -> HetnetPlan:
    """Every batch at 4 draft tokens (or l_max if smaller); batches by the DP."""
    return dp_plan(problem, lengths=(min(FIXED_LENGTH, problem.max_draft_len),))
