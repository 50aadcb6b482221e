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
from collections.abc import Callable, Iterator
from typing import TypeVar

from emu.planner.hetnet.dp import dp_plan, sorted_order
from emu.planner.hetnet.evaluate import Chains, HetnetPlan, Scores, chain_of, scored
from emu.planner.hetnet.model import HetnetProblem

__all__ = ["refined_plan"]

Layout = tuple[tuple[int, ...], tuple[int, ...]]  # (cuts in the sorted order, lengths)
P = TypeVar("P")  # a plan as a search represents it


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
    for m, length in enumerate(spec):  # a batch's length a step or two shorter or longer
        at = allowed.index(length)
        for other in allowed[max(0, at - 2) : at + 3]:
            if other != length:
                yield cuts, (*spec[:m], other, *spec[m + 1 :])


def _descend(
    start: P,
    score: Callable[[P], float],
    neighbours: Callable[[P], Iterator[tuple[float, P]]],
    spent: Callable[[], bool],
) -> P:
    """Best-move local search: from ``start``, move to the best-scoring neighbour while one
    improves, until none does or the budget is ``spent`` (checked after each neighbour)."""
    best, best_score = start, score(start)
    while not spent():
        found: tuple[float, P] | None = None
        for s, candidate in neighbours(best):
            if s < best_score * (1 - 1e-12) and (found is None or s < found[0]):
                found = (s, candidate)
            if spent():
                break
        if found is None:
            break
        best_score, best = found
    return best


def refined_plan(
    problem: HetnetProblem,
    *,
    lengths: tuple[int, ...] | None = None,
    start: HetnetPlan | None = None,
    max_evals: int = 2000,
    cache: Chains | None = None,
    scores: Scores | None = None,
) -> HetnetPlan:
    """The DP's plan (or ``start``, contiguous in the sorted order) improved by best-move
    local search on the evaluator's objective (``scores``: the problem's plans scored so far;
    a plan found there counts as an evaluation all the same, so the budget is spent alike)."""
    allowed = lengths or problem.lengths
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
        return scored(problem, make(layout), cache, memo)

    cache = {} if cache is None else cache
    memo: Scores = {} if scores is None else scores
    evals = 0

    def counted(layout: Layout) -> float:
        nonlocal evals
        evals += 1
        return score(layout)

    def neighbours(at: Layout) -> Iterator[tuple[float, Layout]]:
        for layout in _moves(at[0], at[1], problem.size, allowed):
            yield counted(layout), layout

    best = _descend((cuts, spec), counted, neighbours, lambda: evals >= max_evals)
    return make(best)


Batches = tuple[tuple[int, ...], ...]
General = tuple[Batches, tuple[int, ...]]  # batches in order (any tasks), their lengths
Move = tuple[General, tuple[int, ...]]  # a plan and the batches the move changed

SMALL = 12  # tasks: up to this many, every pair's swap is a move, and each move refits lengths
# The search over every batching, from each start: stages simulated (the evaluator's work:
# some 12,000 evaluations of 4 short tasks, 1,500 of 8 long ones, 2-3 s here).
REGROUP_STAGES = 1_500_000
REFINED_STARTS = 2  # of the DP's plans (over every length, over each alone), the best refined
SPLIT_ALL_UP_TO = 8  # tasks a batch: every split of a batch this small in two is a move


def _general_moves(
    batches: Batches, spec: tuple[int, ...], allowed: tuple[int, ...], cap: int, small: bool
) -> Iterator[Move]:
    """Every plan one move away over any batching: a task moved to another batch (or to a
    batch of its own, before or after its own), two neighbouring batches run in the other
    order, a batch's length changed; on small instances also two tasks of different batches
    swapped, a (small) batch split in two any way with one part moved to any place in the
    order, and every batch's length a step shorter or longer at once."""
    M = len(batches)

    def put(b: list[tuple[int, ...]], s: list[int], touched: list[int]) -> Move:
        keep = [i for i, x in enumerate(b) if x]
        where = {i: n for n, i in enumerate(keep)}
        plan = tuple(tuple(sorted(b[i])) for i in keep), tuple(s[i] for i in keep)
        return plan, tuple(where[i] for i in touched if i in where)

    for a in range(M):
        for k in batches[a]:
            rest = tuple(x for x in batches[a] if x != k)
            for b in range(M):
                if b != a and len(batches[b]) < cap:
                    moved = list(batches)
                    moved[a], moved[b] = rest, (*batches[b], k)
                    yield put(moved, list(spec), [a, b])
            if rest:
                for at in (a, a + 1):  # alone, before or after its batch
                    moved = [*batches[:a], rest, *batches[a + 1 :]]
                    moved.insert(at, (k,))
                    own = a + 1 if at == a else a
                    yield put(moved, [*spec[:at], spec[a], *spec[at:]], [at, own])
    if small:
        for a, b in itertools.combinations(range(M), 2):
            for i in batches[a]:
                for j in batches[b]:
                    swapped = list(batches)
                    swapped[a] = tuple(j if x == i else x for x in batches[a])
                    swapped[b] = tuple(i if x == j else x for x in batches[b])
                    yield put(swapped, list(spec), [a, b])
        for a, batch in enumerate(batches):  # a batch split in two, either first
            if 2 <= len(batch) <= SPLIT_ALL_UP_TO:
                first, rest = batch[0], batch[1:]
                for size in range(len(rest)):
                    for part in itertools.combinations(rest, size):
                        one = (first, *part)
                        two = tuple(x for x in rest if x not in part)
                        if not two:
                            continue
                        for stay, go in ((one, two), (two, one)):  # go: to any place
                            for at in range(M + 1):
                                split = [*batches[:a], stay, *batches[a + 1 :]]
                                split.insert(at, go)
                                lengths = [*spec[:at], spec[a], *spec[at:]]
                                yield put(split, lengths, [a if at > a else a + 1, at])
        for shift in (-1, 1):  # every batch's length a step shorter or longer
            steps = [allowed.index(x) + shift if x in allowed else -1 for x in spec]
            if all(0 <= i < len(allowed) for i in steps):
                yield (batches, tuple(allowed[i] for i in steps)), ()
    for a in range(M - 1):
        order = list(batches)
        order[a], order[a + 1] = order[a + 1], order[a]
        lengths = list(spec)
        lengths[a], lengths[a + 1] = lengths[a + 1], lengths[a]
        yield (tuple(order), tuple(lengths)), ()
    for m, length in enumerate(spec):
        for other in allowed:
            if other != length:
                yield (batches, (*spec[:m], other, *spec[m + 1 :])), ()


def regrouped_plan(
    problem: HetnetProblem,
    start: HetnetPlan,
    *,
    lengths: tuple[int, ...] | None = None,
    max_stages: int = REGROUP_STAGES,
    cache: Chains | None = None,
    scores: Scores | None = None,
) -> HetnetPlan:
    """``start`` improved by best-move local search over every batching (not only contiguous
    runs of the sorted order) and every order of the batches. On small instances (``SMALL``
    tasks) a move that regroups tasks also refits the lengths of the batches it changed (each
    in turn to its best, twice), so that a batch split off can take the length that suits it.
    It stops after ``max_stages`` stages simulated, a plan found in ``scores`` (the problem's
    plans scored so far) counted as if simulated again, so the budget is spent alike."""
    allowed = lengths or problem.lengths
    cache = {} if cache is None else cache
    memo: Scores = {} if scores is None else scores
    small = problem.size <= SMALL
    stages = 0

    def make(g: General) -> HetnetPlan:
        return HetnetPlan(batches=g[0], spec_len=g[1], bandwidth=start.bandwidth)

    def score(g: General) -> float:
        nonlocal stages
        value = scored(problem, make(g), cache, memo)
        stages += sum(len(chain_of(problem, b, ln, cache)) for b, ln in zip(*g, strict=True))
        return value

    def refit(g: General, s: float, touched: tuple[int, ...]) -> tuple[float, General]:
        for _ in range(2):
            for m in touched:
                for other in allowed:
                    if other != g[1][m]:
                        trial = (g[0], (*g[1][:m], other, *g[1][m + 1 :]))
                        t = score(trial)
                        if t < s:
                            s, g = t, trial
        return s, g

    def neighbours(at: General) -> Iterator[tuple[float, General]]:
        for moved, touched in _general_moves(*at, allowed, problem.batch_cap, small):
            s, g = score(moved), moved
            if small and touched:
                s, g = refit(g, s, touched)
            yield s, g

    first: General = (tuple(tuple(sorted(b)) for b in start.batches), start.spec_len)
    return make(_descend(first, score, neighbours, lambda: stages >= max_stages))


def planned(problem: HetnetProblem, *, lengths: tuple[int, ...] | None = None) -> HetnetPlan:
    """The ``hetnet`` policy's plan: the DP's (over every length, and over each length
    alone: the best two of these starts), improved over contiguous batchings; then, on
    small instances (``SMALL`` tasks), over every batching from it and from one batch of every
    task at its best length (``REGROUP_STAGES`` each), the better of the two.
    (Above ``SMALL`` the general moves found nothing at 30 and 100 tasks, a pass of them
    costing seconds.)"""
    allowed = lengths or problem.lengths
    cache: Chains = {}
    scores: Scores = {}  # shared by every search below: they meet the same plans

    def score(p: HetnetPlan) -> float:
        return scored(problem, p, cache, scores)

    # The DP over every length, and over each length alone (its surrogate misjudges some
    # lengths, and a local search stays near where it starts): the best two, refined.
    starts = [dp_plan(problem, lengths=allowed)]
    starts += [dp_plan(problem, lengths=(ln,)) for ln in allowed if len(allowed) > 1]
    plan = min(
        (
            refined_plan(problem, lengths=allowed, start=s, cache=cache, scores=scores)
            for s in sorted(starts, key=score)[:REFINED_STARTS]
        ),
        key=score,
    )
    if problem.size > SMALL:
        return plan
    one = tuple(range(problem.size))
    general = [plan]
    if len(one) <= problem.batch_cap:
        general.append(
            min((HetnetPlan(batches=(one,), spec_len=(ln,)) for ln in allowed), key=score)
        )
    found = [
        regrouped_plan(problem, s, lengths=allowed, cache=cache, scores=scores) for s in general
    ]
    return min(found, key=score)
