"""How the verifier runs a plan: the scenario's ``[runtime]`` section, one type for the file
and the node (``EdgeSettings.runtime``).

Layer: pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.errors import check_in
from emu.planner.model import MAX_TOLERANCE, CloseRule
from nodes.core.replan import ReplanRule
from nodes.core.schedule import StagedPipeline

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    """Deadlines (DiP-SD's staged pipeline), estimation and re-planning."""

    deadline_tolerance: float = 0.25
    grace_ms: float = 2.0
    replan_every: int = 50
    drift: float = 0.2
    min_rounds: int = 16
    comm_quantile: float = 0.0  # 0: plan with the mean link time

    def __post_init__(self) -> None:
        check_in(
            "runtime.deadline_tolerance",
            self.deadline_tolerance,
            0,
            MAX_TOLERANCE,
            f"in [0, {MAX_TOLERANCE:g}]",
        )
        check_in("runtime.grace_ms", self.grace_ms, 0, 1e5, "in [0, 1e5]")
        check_in("runtime.replan_every", self.replan_every, 0, 1e9, ">= 0 (0: never)")
        check_in("runtime.drift", self.drift, 0.01, 10, "in [0.01, 10]")
        check_in("runtime.min_rounds", self.min_rounds, 1, 1e6, ">= 1")
        check_in("runtime.comm_quantile", self.comm_quantile, 0, 0.999, "in [0, 0.999] (0: mean)")

    @property
    def close(self) -> CloseRule:
        """How the edge closes a batch whose drafts are not all in."""
        return CloseRule(tolerance=self.deadline_tolerance, grace_ms=self.grace_ms)

    @property
    def pipeline(self) -> StagedPipeline:
        return StagedPipeline(close=self.close)

    @property
    def replan(self) -> ReplanRule:
        return ReplanRule(
            every=self.replan_every,
            drift=self.drift,
            min_rounds=self.min_rounds,
            comm_quantile=self.comm_quantile or None,
        )
