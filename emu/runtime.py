"""What every runner gives the nodes: the policy's planner, the edge's settings, real models'
priors. Shared by the simulation (``emu.sim``) and the emulation's node processes (``emu.node``).

Layer: emu (orchestration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from emu.planner import Plan, plan_for
from emu.planner.model import Problem
from emu.scenario import Scenario
from nodes.edge import EdgeSettings

if TYPE_CHECKING:
    from emu.models import ModelSetup

__all__ = ["edge_settings", "memo_planner", "model_setup", "node_problem", "with_model_priors"]


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


def node_problem(sc: Scenario) -> Problem:
    """The planning instance, with real models' priors as ``sim`` makes them."""
    problem = sc.problem()
    if sc.models.kind == "synthetic":
        return problem
    setup = model_setup(sc)
    return with_model_priors(problem, setup.acceptance, setup.prior_prefix())


def model_setup(sc: Scenario) -> ModelSetup:
    from emu.models import resolve_models

    m = sc.models
    return resolve_models(
        m.kind,
        draft=m.draft,
        target=m.target,
        device=m.device,
        max_new_tokens=sc.sim.max_new_tokens,
        max_draft_len=sc.planner.max_draft_len,
    )
