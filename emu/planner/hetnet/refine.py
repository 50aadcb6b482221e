"""Improving on the reconstructed DP: a local search over contiguous batchings of the sorted
order and their lengths, every candidate scored by the evaluator itself (not a surrogate).

Layer: pure (emu.planner).

From the DP's plan, it tries each move: a cut between two batches moved by one task either
way, two neighbouring batches merged, a batch split in two, a batch's length changed to any
other allowed one; it takes the best improving move, and stops when none improves or after
``max_evals`` evaluations. The result is never worse than the DP's plan.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from emu.planner.hetnet.dp import dp_plan, sorted_order
from emu.planner.hetnet.evaluate import Chains, HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem

__all__ = ["refined_plan"]

Layout = tuple[tuple[int, ...], tuple[int, ...]]  # (cuts in the sorted order, lengths)


def _moves(
    cuts: tuple[int, ...], spec: tuple[int, ...], size: int, allowed: tuple[int, ...]
) -> Iterator[Layout]:
    """Every layout one move away."""
    bounds = [0, *cuts, size]
    for c in range(len(cuts)):  # a cut moved by one
        for step in (-1, 1):
            moved = cuts[c] + step
            if bounds[c] < moved < bounds[c + 2]:
                yield (*cuts[:c], moved, *cuts[c + 1 :]), spec
    for c in range(len(cuts)):  # two batches merged, at either's length
        for keep in (spec[c], spec[c + 1]):
            yield (*cuts[:c], *cuts[c + 1 :]), (*spec[:c], keep, *spec[c + 2 :])
    for m, (a, b) in enumerate(itertools.pairwise(bounds)):  # a batch split in half
        if b - a >= 2:
            mid = (a + b) // 2
            yield tuple(sorted((*cuts, mid))), (*spec[:m], spec[m], spec[m], *spec[m + 1 :])
    for m, length in enumerate(spec):  # a batch's length changed
        for other in allowed:
            if other != length:
                yield cuts, (*spec[:m], other, *spec[m + 1 :])


def refined_plan(
    problem: HetnetProblem,
    *,
    lengths: tuple[int, ...] | None = None,
    start: HetnetPlan | None = None,
    max_evals: int = 2000,
) -> HetnetPlan:
    """The DP's plan (or ``start``, contiguous in the sorted order) improved by best-move
    local search on the evaluator's objective."""
    allowed = lengths or tuple(range(1, problem.max_draft_len + 1))
    order = sorted_order(problem)
    plan = start or dp_plan(problem, lengths=allowed)
    sizes = [len(b) for b in plan.batches]
    cuts = tuple(itertools.accumulate(sizes[:-1]))
    spec = plan.spec_len
    cap = problem.batch_cap

    def make(layout: Layout) -> HetnetPlan:
        bounds = [0, *layout[0], problem.size]
        return HetnetPlan(
            batches=tuple(tuple(order[a:b]) for a, b in itertools.pairwise(bounds)),
            spec_len=layout[1],
            bandwidth=plan.bandwidth,
        )

    def score(layout: Layout) -> float:
        bounds = [0, *layout[0], problem.size]
        if any(b - a > cap for a, b in itertools.pairwise(bounds)):
            return float("inf")
        return evaluate(problem, make(layout), cache=cache).objective(problem)

    cache: Chains = {}
    best: Layout = (cuts, spec)
    best_score = score(best)
    evals = 1
    while evals < max_evals:
        found: tuple[float, Layout] | None = None
        for layout in _moves(best[0], best[1], problem.size, allowed):
            s = score(layout)
            evals += 1
            if s < best_score * (1 - 1e-12) and (found is None or s < found[0]):
                found = (s, layout)
            if evals >= max_evals:
                break
        if found is None:
            break
        best_score, best = found
    return make(best)
