"""DiP-SD planner: the cost model, policies and solvers.

Layer: pure. No I/O, no trio, no clock, no global randomness; imports numpy and scipy only.
"""

from __future__ import annotations

from emu.planner.cost import Evaluation, Plan, evaluate
from emu.planner.model import Edge, LatencyModel, ModelArch, Problem, User, expected_tokens
from emu.planner.policies import BASELINES, POLICIES, plan_for

__all__ = [
    "BASELINES",
    "POLICIES",
    "Edge",
    "Evaluation",
    "LatencyModel",
    "ModelArch",
    "Plan",
    "Problem",
    "User",
    "evaluate",
    "expected_tokens",
    "plan_for",
]
