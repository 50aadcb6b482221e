"""Planning several small cells that share one macro cell (the two-tier radio,
``channel_models.two_tier``): each cell is planned alone, then the cells' batches are merged into
the one order the macro cell serves them in.

Layer: pure (emu.planner).

A small cell's batches use only its own band, server and fronthaul, so a plan of the cell alone
is the plan it runs; what the cells share is the macro cell's server, where the plan's order
decides who is verified first (``priority``). The merge orders every batch by when it ends in
its own cell's plan (the shortest first, as Smith's rule has it for a shared server), or by when
it is released, then swaps neighbours of different cells while the evaluator scores the whole
network better, and keeps the best. More planners' cell plans may be merged as candidates (the
planner takes the reconstructed DP's too, so that it is never worse than the DP merged the same
way). It does not change a cell's batches for the other cells' load at the macro cell: that is
the decomposition's cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from emu.planner.hetnet.evaluate import Chains, HetnetPlan, Scores, evaluate, scored
from emu.planner.hetnet.model import HetnetProblem

__all__ = ["cell_problem", "planned_by_cell"]

Solve = Callable[[HetnetProblem], HetnetPlan]


def cell_problem(problem: HetnetProblem, cell: int) -> tuple[HetnetProblem, tuple[int, ...]]:
    """A small cell alone: its tasks (numbered 0.. in its own problem) with its fronthaul and
    interference; and which task of ``problem`` each one is."""
    members = problem.members(cell)
    return problem.subset(members), members


def planned_by_cell(
    solve: Solve, problem: HetnetProblem, *others: Solve, lengths: bool = False
) -> HetnetPlan:
    """``solve``'s plan of each small cell, merged; ``solve`` itself where there is one cell.
    ``others``' plans, merged alike, are candidates too; with ``lengths``, each batch's
    speculation length is then tuned on the whole network (a step at a time)."""
    if problem.cells == 1:
        return solve(problem)
    candidates = [p for s in (solve, *others) for p in _merges(s, problem)]
    # The whole network's plans scored so far, and its batches' stages: the merges' searches
    # and the tuning meet the same ones.
    net = _Network(problem, {}, {})
    best = min((_ordered(net, p) for p in candidates), key=net.score)
    return _tuned(net, best) if lengths else best


class _Network(NamedTuple):
    """The whole network's problem, with the stages and the scores of its plans so far."""

    problem: HetnetProblem
    cache: Chains
    scores: Scores

    def score(self, plan: HetnetPlan) -> float:
        return scored(self.problem, plan, self.cache, self.scores)


def _tuned(net: _Network, plan: HetnetPlan, *, passes: int = 8) -> HetnetPlan:
    """``plan`` with one batch's speculation length a step up or down at a time, while the
    whole network scores better (the macro cell's load from the other cells counted)."""
    problem = net.problem
    best, score = plan, net.score(plan)
    for _ in range(passes):
        improved = False
        for m in range(len(best.batches)):
            for step in (-1, 1):
                ln = best.spec_len[m] + step
                if not 0 <= ln <= problem.max_draft_len:
                    continue
                trial = dataclasses.replace(
                    best, spec_len=(*best.spec_len[:m], ln, *best.spec_len[m + 1 :])
                )
                s = net.score(trial)
                if s < score - 1e-9:
                    best, score, improved = trial, s, True
        if not improved:
            break
    return best


def _merges(solve: Solve, problem: HetnetProblem) -> list[HetnetPlan]:
    """Each cell's plan by ``solve``, merged by when each batch ends alone, and by when it is
    released."""
    ends: list[float] = []
    releases: list[float] = []
    batches: list[tuple[int, ...]] = []
    lengths: list[int] = []
    modes = set()
    for c in range(problem.cells):
        alone, members = cell_problem(problem, c)
        plan = solve(alone)
        ev = evaluate(alone, plan, record=False)
        modes.add(plan.bandwidth)
        for m, (b, ln) in enumerate(zip(plan.batches, plan.spec_len, strict=True)):
            ends.append(ev.latency_ms[b[0]])
            releases.append(ev.release_ms[m])
            batches.append(tuple(members[k] for k in b))
            lengths.append(ln)
    (mode,) = modes  # a policy splits every cell's band by its one rule

    def merged(key: list[float]) -> HetnetPlan:
        order = sorted(range(len(batches)), key=lambda i: (key[i], i))
        return HetnetPlan(
            batches=tuple(batches[i] for i in order),
            spec_len=tuple(lengths[i] for i in order),
            bandwidth=mode,
        )

    return [merged(ends), merged(releases)]


def _ordered(net: _Network, plan: HetnetPlan, *, passes: int = 8) -> HetnetPlan:
    """``plan`` with neighbouring batches of different cells swapped while that scores better
    (a cell's own order, which sets its band's turns, stays as its plan has it)."""
    problem = net.problem
    best, score = plan, net.score(plan)
    cell = [problem.tasks[b[0]].cell for b in plan.batches]
    for _ in range(passes):
        improved = False
        for i in range(len(cell) - 1):
            if cell[i] == cell[i + 1]:
                continue
            order = list(range(len(cell)))
            order[i], order[i + 1] = i + 1, i
            trial = HetnetPlan(
                batches=tuple(best.batches[j] for j in order),
                spec_len=tuple(best.spec_len[j] for j in order),
                bandwidth=best.bandwidth,
            )
            s = net.score(trial)
            if s < score - 1e-9:
                best, score, improved = trial, s, True
                cell[i], cell[i + 1] = cell[i + 1], cell[i]
        if not improved:
            break
    return best
