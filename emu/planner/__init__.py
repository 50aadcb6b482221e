"""DiP-SD planner: the cost model, policies and solvers.

Layer: pure. No I/O, no trio, no clock, no global randomness; imports numpy and scipy only.
"""

from __future__ import annotations

from emu.planner.cost import Evaluation, Plan, evaluate
from emu.planner.model import Edge, LatencyModel, ModelArch, Problem, User, expected_tokens
from emu.planner.policies import (
    Policy,
    baselines_of,
    get_policy,
    plan_for,
    policy_names,
    register,
)

__all__ = [
    "Edge",
    "Evaluation",
    "LatencyModel",
    "ModelArch",
    "Plan",
    "Policy",
    "Problem",
    "User",
    "baselines_of",
    "evaluate",
    "expected_tokens",
    "get_policy",
    "plan_for",
    "policy_names",
    "register",
]
