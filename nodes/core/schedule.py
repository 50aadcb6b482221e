"""The verifier's batch scheduler and length controller, behind protocols a system supplies.

DiP-SD's are the staged pipeline (``StagedPipeline``: the plan's batches verified one after
another in its cyclic order, each closing when its last member's draft arrives or at a deadline
from the plan) and the plan's own lengths (``PlanLengths``). Another system brings its own
(DSD's queues and batching, an adaptive window such as AWC) without touching the shell.

Layer: pure (times in seconds on the caller's clock, passed in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emu.planner.model import CloseRule

__all__ = [
    "BatchScheduler",
    "EdgePlan",
    "LengthController",
    "PlanLengths",
    "StagedPipeline",
    "Waiting",
]


@dataclass(frozen=True, slots=True)
class EdgePlan:
    """A plan in user ids, with what it was made from."""

    plan_id: int
    batches: tuple[tuple[int, ...], ...]
    draft_len: Mapping[int, int]
    draft_ms_per_token: Mapping[int, float]  # what the plan believes of each user's device
    comm_ms: Mapping[int, float]  # ... and of its link, both ways, per round
    cycle_ms: float
    predicted_tok_s: float
    reason: str
    close_tolerance: tuple[float, ...] = ()  # each batch's, where the planner chose them

    def ready_ms(self, uid: int, draft_len: int) -> float:
        """When a draft of ``draft_len`` tokens is expected after its verdict [ms]: the
        length the user was asked for, which is the plan's only once a verdict carried it."""
        if draft_len <= 0:
            return 0.0
        return draft_len * self.draft_ms_per_token.get(uid, 0.0) + self.comm_ms.get(uid, 0.0)

    def slot_of(self, uid: int) -> int:
        """The batch ``uid`` is verified in (0 for a user the plan does not cover)."""
        return next((k for k, b in enumerate(self.batches) if uid in b), 0)

    def close_rule(self, slot: int, edge: CloseRule) -> CloseRule:
        """How batch ``slot`` closes: the edge's rule, with the batch's own tolerance where
        the plan chose one."""
        if not self.close_tolerance or not 0 <= slot < len(self.close_tolerance):
            return edge
        return edge.with_tolerance(self.close_tolerance[slot])


@dataclass(frozen=True, slots=True)
class Waiting:
    """A member of a batch as the scheduler sees it: the draft length its last verdict asked
    for, when that verdict left, and whether its draft is in."""

    uid: int
    asked: int
    last_verdict_s: float
    has_draft: bool


class BatchScheduler(Protocol):
    """Which users are verified together, in what order, and how long a batch waits."""

    def cycle(self, plan: EdgePlan) -> Sequence[tuple[int, tuple[int, ...]]]:
        """One cycle's batches in order, as (slot, user ids)."""
        ...

    def deadline(self, plan: EdgePlan, members: Sequence[Waiting]) -> float:
        """When the batch of ``members`` is verified without those whose draft is not in."""
        ...


@dataclass(frozen=True, slots=True)
class StagedPipeline:
    """DiP-SD's staged pipeline: the plan's batches in its cyclic order; a batch closes when
    every draft is in, or by its ``close`` rule (``emu.planner.model.CloseRule``: the planner's
    stochastic model knows the same rule), with the batch's own tolerance where the plan chose
    one: at the latest of its members' last verdict plus the rule's deadline for the draft
    each was asked for. A member at length 0 needs no draft and never holds a batch."""

    close: CloseRule = field(default_factory=CloseRule)

    def cycle(self, plan: EdgePlan) -> Sequence[tuple[int, tuple[int, ...]]]:
        return list(enumerate(plan.batches))

    def deadline(self, plan: EdgePlan, members: Sequence[Waiting]) -> float:
        waited = [m for m in members if m.asked > 0]
        if not waited:
            return -float("inf")
        rule = plan.close_rule(plan.slot_of(waited[0].uid), self.close)
        return max(
            m.last_verdict_s + rule.deadline_ms(plan.ready_ms(m.uid, m.asked)) / 1e3 for m in waited
        )


class LengthController(Protocol):
    """How many tokens a user drafts next: the advice a verdict carries."""

    def next_length(self, plan: EdgePlan, uid: int) -> int: ...


@dataclass(frozen=True, slots=True)
class PlanLengths:
    """The plan's lengths (DiP-SD: the planner chose them for the whole cycle)."""

    def next_length(self, plan: EdgePlan, uid: int) -> int:
        return plan.draft_len.get(uid, 0)
