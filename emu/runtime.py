"""What every runner gives the nodes: the policy's planner, the edge's settings, real models'
priors. Shared by the simulation (``emu.sim``) and the emulation's node processes (``emu.node``).

Layer: emu (orchestration).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from emu.planner import Plan, plan_for
from emu.planner.model import Edge, Problem, User, draft_flops, verify_flops
from emu.scenario import Scenario
from nodes.backends import SyntheticVerifier
from nodes.edge import EdgeSettings
from nodes.guard import Limits

if TYPE_CHECKING:
    from emu.models import ModelSetup

__all__ = [
    "draft_time",
    "edge_settings",
    "memo_planner",
    "model_setup",
    "node_problem",
    "synthetic_prompts",
    "synthetic_verifier",
    "user_prompts",
    "verify_threads",
    "verify_time",
    "with_model_priors",
]


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
        limits=limits(sc, users),
    )


def limits(sc: Scenario, users: int) -> Limits:
    """The scenario's ``[limits]`` as the edge holds its peers to them."""
    same = {f.name: getattr(sc.limits, f.name) for f in dataclasses.fields(Limits)}
    return Limits(**{**same, "max_connections": sc.limits.max_connections or 2 * users + 16})


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


def verify_threads(sc: Scenario, *, users_on_host: int) -> int:
    """The verifier's torch threads on a CPU: ``models.verify_threads``, or (0) the cores left
    by the ``users_on_host`` drafters that share its host (the emulation's: every user), at
    least one. More threads than free cores is the worst choice there is: torch's threads wait
    for each other at every operator, so one descheduled thread stalls them all (a verify pass
    of the embedded target went from 0.1 s to several with one core kept busy elsewhere)."""
    if sc.models.verify_threads:
        return sc.models.verify_threads
    cores = os.cpu_count() or 1
    return max(1, cores - users_on_host * sc.models.draft_threads)


def verify_time(edge: Edge) -> Callable[[int, int, int], float]:
    """A real verifier's profiled time [ms]: G_v(b, F_v(L, I)) of the scenario's edge."""
    return lambda b, L, I: edge.latency(float(b), float(verify_flops(edge.target, L, I)))


def draft_time(user: User) -> Callable[[int, int], float]:
    """A real drafter's profiled time [ms] for n tokens at a prefix: n G_m(1, F_d(prefix))."""
    return lambda n, prefix: n * user.device(1.0, float(draft_flops(user.draft, prefix)))


def user_prompts(prompts: Sequence[Sequence[int]], i: int, users: int) -> Iterator[Sequence[int]]:
    """User i's sessions: prompts i, i + M, i + 2M, ... (cyclically), so that every policy,
    and every runner, meets the same prompts."""
    return (prompts[(i + k * users) % len(prompts)] for k in itertools.count())


def synthetic_prompts(rng: np.random.Generator, length: int) -> Iterator[tuple[int, ...]]:
    """Random token ids of a user's configured prefix length, one prompt per session."""
    while True:
        yield tuple(int(t) for t in rng.integers(0, 32000, size=max(1, length)))


def synthetic_verifier(
    problem: Problem, rng: np.random.Generator, *, warm_start: bool
) -> SyntheticVerifier:
    return SyntheticVerifier(
        edge=problem.edge,
        alpha={i: u.alpha for i, u in enumerate(problem.users)},
        prefix_len={i: u.prefix_len for i, u in enumerate(problem.users)},
        rng=rng,
        prefill_free=warm_start,
    )
