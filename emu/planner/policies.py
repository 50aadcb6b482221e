"""Policies behind one protocol, in one registry: ``plan(problem, previous)`` makes a Plan.

Every list of policy names (the command line's help, the scenario's rule, the study's
columns, the baselines reported beside a solve) is read from the registry, and no node or
runner treats a policy by its name: what differs between policies is what they say of
themselves (``about``, ``baseline``, ``max_users``). Only studies and the command line's
defaults name the policies they compare. A system adds its policies with ``register``.

Layer: pure (emu.planner).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from emu.errors import ConfigError
from emu.planner import baselines
from emu.planner.cost import Plan
from emu.planner.dipsd import dipsd
from emu.planner.dsd.windows import DSD_POLICIES
from emu.planner.exact import MAX_EXACT_USERS, exact
from emu.planner.hetnet.policies import HETNET_POLICIES
from emu.planner.jitter import jitter_aware
from emu.planner.model import Problem

__all__ = [
    "Policy",
    "SolverPolicy",
    "baselines_of",
    "get_policy",
    "plan_for",
    "policy_names",
    "register",
]


class Policy(Protocol):
    """A planning policy of one system."""

    @property
    def name(self) -> str: ...
    @property
    def system(self) -> str: ...
    @property
    def about(self) -> str: ...
    @property
    def baseline(self) -> str:
        """The key under which a solve reports this policy beside its plan ("" if it is not a
        baseline)."""
        ...

    @property
    def max_users(self) -> int | None:
        """The largest instance it plans (None: any)."""
        ...

    def plan(self, problem: Any, previous: Any = None) -> Any:
        """Plan ``problem`` (its system's problem type: DiP-SD's ``Problem``, hetnet's
        ``HetnetProblem``); ``previous``, the plan in force for the same users, lets a policy
        re-plan warm (the others plan from scratch)."""
        ...


@dataclass(frozen=True, slots=True)
class SolverPolicy:
    """A policy made of one solver function ``(problem, previous) -> plan``."""

    name: str
    about: str
    solve: Callable[[Any, Any], Any]
    system: str = "dipsd"
    baseline: str = ""
    max_users: int | None = None

    def plan(self, problem: Any, previous: Any = None) -> Any:
        return self.solve(problem, previous)


_REGISTRY: dict[str, Policy] = {}


def register(policy: Policy) -> Policy:
    if policy.name in _REGISTRY:
        raise ValueError(f"policy {policy.name!r} is registered twice")
    _REGISTRY[policy.name] = policy
    return policy


def policy_names(system: str | None = None) -> tuple[str, ...]:
    """Every registered policy's name (of one system, if given), in registration order."""
    return tuple(n for n, p in _REGISTRY.items() if system is None or p.system == system)


def get_policy(name: str, *, where: str = "policy") -> Policy:
    """The named policy; ConfigError naming ``where`` and the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ConfigError(f"{where} must be one of {known}, got {name!r}") from None


def baselines_of(system: str) -> dict[str, str]:
    """The baselines a solve reports beside its plan: JSON key -> policy name."""
    return {p.baseline: n for n, p in _REGISTRY.items() if p.system == system and p.baseline}


def plan_for(name: str, problem: Problem, previous: Plan | None = None) -> Plan:
    """Plan DiP-SD's ``problem`` with the named policy; ConfigError for an unknown name."""
    plan: Plan = get_policy(name).plan(problem, previous)
    return plan


for _policy in (
    SolverPolicy(
        "dipsd",
        "DiP-SD's joint planner (batches, order and draft lengths), improved; re-plans warm",
        lambda problem, previous: dipsd(problem, previous=previous),
    ),
    SolverPolicy(
        "jitter-aware",
        "dipsd's plan searched further for the expected throughput when each batch waits for "
        "its members' random link times (their jitter and retransmissions, or as measured)",
        jitter_aware,
    ),
    SolverPolicy(
        "dipsd-published",
        "DiP-SD's alternating optimisation as published",
        lambda problem, previous: dipsd(problem, improve=False),
    ),
    SolverPolicy(
        "exact",
        "the optimal plan by MILP (HiGHS), a reference for small instances",
        lambda problem, previous: exact(problem),
        max_users=MAX_EXACT_USERS,
    ),
    SolverPolicy(
        "ad",
        "the target alone, one user per forward",
        lambda problem, previous: baselines.ad(problem),
        baseline="ad",
    ),
    SolverPolicy(
        "ad-batch",
        "the target alone, as many users per forward as memory allows",
        lambda problem, previous: baselines.ad_batch(problem),
        baseline="ad_batch",
    ),
    SolverPolicy(
        "sd",
        "speculative decoding, each user verified alone",
        lambda problem, previous: baselines.sd(problem),
        baseline="sd",
    ),
    SolverPolicy(
        "fixed",
        "DiP-SD's batching with one fixed draft length (planner.fixed_draft_len)",
        lambda problem, previous: baselines.fixed(problem),
        baseline="fixed",
    ),
    *HETNET_POLICIES,
    *DSD_POLICIES,
):
    register(_policy)
