"""What every runner gives the nodes: the policy's planner, the edge's settings, real models'
priors. Shared by the simulation (``emu.sim``) and the emulation's node processes (``emu.node``).

Layer: emu (orchestration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from emu.planner import Plan, plan_for
from emu.planner.model import Problem
from emu.scenario import Scenario
from nodes.edge import EdgeSettings

__all__ = ["edge_settings", "memo_planner", "with_model_priors"]


def memo_planner(policy: str) -> Callable[[Problem, Plan | None], Plan]:
    """The policy's planner for one run, remembering its plans: the edge's first plan (made
    from the scenario's users) is then the prediction's plan, not a second solve."""
    plans: dict[tuple[Problem, Plan | None], Plan] = {}

    def plan(problem: Problem, previous: Plan | None = None) -> Plan:
        key = (problem, previous)
        if key not in plans:
            plans[key] = plan_for(policy, problem, previous)
        return plans[key]

    return plan


def edge_settings(sc: Scenario, users: int) -> EdgeSettings:
    r, p = sc.runtime, sc.planner
    return EdgeSettings(
        max_draft_len=p.max_draft_len,
        initial_draft_len=p.initial_draft_len,
        fixed_draft_len=p.fixed_draft_len,
        deadline_tolerance=r.deadline_tolerance,
        grace_ms=r.grace_ms,
        replan_every=r.replan_every,
        drift=r.drift,
        min_rounds=r.min_rounds,
        comm_quantile=r.comm_quantile or None,
        expected_users=users,
    )


def with_model_priors(problem: Problem, acceptance: float | None, prefix: int) -> Problem:
    """What the planner assumes of real models before it has measured anything: the pair's
    acceptance on the built-in prompts (where known) and the mean context of a session."""
    users = tuple(
        dataclasses.replace(
            u, prefix_len=prefix, alpha=u.alpha if acceptance is None else acceptance
        )
        for u in problem.users
    )
    return dataclasses.replace(problem, users=users)
