"""Policies behind one interface: a name maps to a function from a Problem to a Plan.

Layer: pure (emu.planner).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from emu.errors import ConfigError
from emu.planner import baselines
from emu.planner.cost import Plan
from emu.planner.dipsd import dipsd
from emu.planner.exact import exact
from emu.planner.model import Problem

__all__ = ["BASELINES", "POLICIES", "plan_for"]

Policy = Callable[[Problem], Plan]

POLICIES: dict[str, Policy] = {
    "dipsd": dipsd,
    "dipsd-published": partial(dipsd, improve=False),
    "exact": exact,
    "ad": baselines.ad,
    "ad-batch": baselines.ad_batch,
    "sd": baselines.sd,
    "fixed": baselines.fixed,
}

# Reported beside every solve, keyed as in the JSON output.
BASELINES: dict[str, str] = {"ad": "ad", "ad_batch": "ad-batch", "sd": "sd", "fixed": "fixed"}


def plan_for(policy: str, problem: Problem, previous: Plan | None = None) -> Plan:
    """Plan ``problem`` with the named policy; ConfigError for an unknown name.

    ``previous``, the plan in force for the same users, lets ``dipsd`` re-plan warm on large
    instances (see ``dipsd.dipsd``); the other policies plan from scratch.
    """
    try:
        fn = POLICIES[policy]
    except KeyError:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}") from None
    if policy == "dipsd" and previous is not None:
        return dipsd(problem, previous=previous)
    return fn(problem)
