"""Planning tasks that arrive over time (deliverable 4 of the heterogeneous-edge system; the
paper plans one batch of tasks all there at the start): a window at a time.

Layer: pure (emu.planner).

Every ``window_ms`` (``HetnetProblem.window_ms``; 0: at every arrival) the small cells' tasks
that arrived since the last window closed are planned as a problem of their own, by whichever
policy runs, as if they had all arrived when the window closed. The window's batches follow the
earlier windows' in the plan's order (the macro cell serves them after: ``priority``), and its
users upload once the window has closed and the earlier windows' uploads of their cell have
ended (``bandwidth.release_times_ms``).

A window's plan uses only what the small cells know when it closes: its own tasks, and the
earlier windows' plan as the evaluator runs it, cut at the window's close: the stage each
server or link is in the middle of (``HetnetProblem.free_at_ms``) and the stages each
unfinished batch has left (``HetnetProblem.carried``), served before the window's batches as
``priority`` serves them.

A window's plan is made for its own tasks, and alone a batch drafts and verifies in series, so
short drafts suit it (a batch of 12 at acceptance 0.75: 2 tokens); under load the batches
overlap and the macro cell sets the pace, where longer drafts (fewer verifications) serve the
tasks that queue behind sooner. So several planners' window plans are candidates (the
``hetnet`` policy's: its own, the DP's and max batching's), and the one kept is the best one
window ahead: scored by the evaluator over every task so far and a window like this one (its
tasks again, planned alike) arriving a window later (``_score_ahead``). Without the look
ahead, the DP was 7-9% better than the planner at 0.5 tasks/s (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from emu.planner.hetnet.evaluate import HetnetPlan, Timed, evaluate
from emu.planner.hetnet.model import HetnetProblem, Stage

__all__ = ["opening_ms", "planned_online"]


def opening_ms(problem: HetnetProblem, k: int) -> float:
    """When task k is planned: the close of the window it arrives in (at its arrival for
    ``window_ms`` 0, and at 0 for a task there at the start)."""
    a, w = problem.tasks[k].arrival_ms, problem.window_ms
    return a if w == 0 else math.ceil(a / w - 1e-9) * w


def planned_online(
    solve: Callable[[HetnetProblem], HetnetPlan],
    problem: HetnetProblem,
    *others: Callable[[HetnetProblem], HetnetPlan],
) -> HetnetPlan:
    """``solve``'s plan of each window's tasks, in turn; ``solve`` itself when every task is
    there at the start. ``others``' plans of a window are candidates too: the one kept is the
    one the evaluator scores best one window ahead (``_score_ahead``)."""
    if not problem.online:
        return solve(problem)
    by_window: dict[float, list[int]] = {}
    for k in range(problem.size):
        by_window.setdefault(opening_ms(problem, k), []).append(k)
    plan = HetnetPlan(batches=(), spec_len=(), opens_ms=())
    seen = 0  # tasks planned so far
    for at, tasks in sorted(by_window.items()):
        window = _window_problem(problem, plan, at, tasks)
        seen += len(tasks)
        mine = [s(window) for s in (solve, *others)]
        if len(mine) == 1:
            plan = _then(plan, mine[0], tasks, at)
            continue
        gap = max(problem.window_ms, at / seen)
        plan = min(
            (_then(plan, m, tasks, at) for m in mine),
            key=lambda c: _score_ahead(problem, c, tasks, at + gap),
        )
    return plan


def _score_ahead(
    problem: HetnetProblem, plan: HetnetPlan, tasks: list[int], next_ms: float
) -> float:
    """The evaluator's objective over the tasks so far under ``plan`` and a window like the
    last one (its ``tasks`` again, planned as it was) arriving at ``next_ms``: what the plan
    costs the tasks that will queue behind it, one window ahead."""
    ghosts = tuple(dataclasses.replace(problem.tasks[k], arrival_ms=next_ms) for k in tasks)
    wider = dataclasses.replace(problem, tasks=problem.tasks + ghosts)
    ghost_of = {k: problem.size + i for i, k in enumerate(tasks)}
    last = [m for m, at in enumerate(plan.opens_ms) if at == plan.opens_ms[-1]]
    ahead = HetnetPlan(
        batches=(*plan.batches, *(tuple(ghost_of[k] for k in plan.batches[m]) for m in last)),
        spec_len=(*plan.spec_len, *(plan.spec_len[m] for m in last)),
        bandwidth=plan.bandwidth,
        opens_ms=(*plan.opens_ms, *([next_ms] * len(last))),
    )
    return _score(wider, ahead)


def _then(before: HetnetPlan, mine: HetnetPlan, tasks: list[int], at: float) -> HetnetPlan:
    """``before`` and then a window's plan ``mine`` (of ``tasks``, opening at ``at``)."""
    return HetnetPlan(
        batches=(*before.batches, *(tuple(tasks[i] for i in b) for b in mine.batches)),
        spec_len=(*before.spec_len, *mine.spec_len),
        bandwidth=mine.bandwidth,  # a policy splits every window's band by its one rule
        opens_ms=(*before.opens_ms, *([at] * len(mine.batches))),
    )


def _on_its_tasks(problem: HetnetProblem, plan: HetnetPlan) -> tuple[HetnetProblem, HetnetPlan]:
    """``plan``, which holds some of ``problem``'s tasks, as a plan of those tasks alone (in
    the order of their numbers) and their problem."""
    tasks = sorted(k for b in plan.batches for k in b)
    index = {k: i for i, k in enumerate(tasks)}
    local = dataclasses.replace(
        plan, batches=tuple(tuple(index[k] for k in b) for b in plan.batches)
    )
    return problem.subset(tasks), local


def _score(problem: HetnetProblem, plan: HetnetPlan) -> float:
    """The evaluator's objective of ``plan`` over the tasks it holds."""
    alone, local = _on_its_tasks(problem, plan)
    return evaluate(alone, local, record=False).objective(alone)


def _renamed(stage: Stage, suffix: str) -> Stage:
    """``stage`` on its small cell's resource as another problem names that cell (``suffix``);
    the macro cell's server is the same in every problem."""
    kind = stage.resource.rstrip("0123456789")
    return stage if kind == "mbs" else dataclasses.replace(stage, resource=kind + suffix)


def _window_problem(
    problem: HetnetProblem, before: HetnetPlan, at: float, tasks: list[int]
) -> HetnetProblem:
    """The tasks of the window closing at ``at`` as a problem of their own, all there at its
    start, with the earlier windows' work as the evaluator has it then: the stage each server
    or link is in the middle of (``free_at_ms``) and the stages each unfinished batch has left
    (``carried``, ahead of the window's batches)."""
    window = problem.subset(tasks)
    number = {problem.tasks[k].cell: window.tasks[i].cell for i, k in enumerate(tasks)}
    free_at: dict[str, float] = {}
    carried: list[tuple[float, tuple[Stage, ...]]] = []
    if before.batches:
        timed: dict[int, list[Timed]] = {}
        for t in evaluate(*_on_its_tasks(problem, before)).timeline:
            timed.setdefault(t.batch, []).append(t)
        for m in range(len(before.batches)):
            cell = problem.tasks[before.batches[m][0]].cell
            # A cell with no task in this window keeps a name of its own.
            suffix = window.cell_suffix(number[cell]) if cell in number else f"@{cell}"
            stages = sorted(timed[m], key=lambda t: t.start_ms)
            left = [t for t in stages if t.end_ms > at]
            if left and left[0].start_ms < at:  # in the middle of it: its resource held
                name = _renamed(left[0].stage, suffix).resource
                free_at[name] = max(free_at.get(name, 0.0), left[0].end_ms - at)
                ready = left[0].end_ms + left[0].stage.after_ms - at
                left = left[1:]
            elif left:
                ready = max(0.0, left[0].ready_ms - at)
            if left:
                carried.append((ready, tuple(_renamed(t.stage, suffix) for t in left)))
    return dataclasses.replace(
        window,
        tasks=tuple(dataclasses.replace(t, arrival_ms=0.0) for t in window.tasks),
        free_at_ms=tuple(sorted(free_at.items())),
        carried=tuple(carried),
    )
