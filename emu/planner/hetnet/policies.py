"""The heterogeneous-edge system's policies, registered beside DiP-SD's in
``emu.planner.policies``: its planner, the DP as reconstructed, the exact reference and the
paper's baselines (hetnet.md sections 4 and 5).

Layer: pure (emu.planner).

``hetnet`` (the default) is the reconstructed DP improved by local search on the evaluator
(``refine.planned``); ``hetnet-dp`` is the DP alone, reported beside it. Each baseline is given the
same search within its own rule, so a gain over it is the rule's, not a weaker search's:
uniform bandwidth and fixed length refine their DP's plan under their rule, AD (``spec_len``
0: the target alone, a pass a token) refines the partition of its own plans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emu.planner.hetnet import baselines
from emu.planner.hetnet.baselines import FIXED_LENGTH
from emu.planner.hetnet.cells import planned_by_cell
from emu.planner.hetnet.dp import dp_plan
from emu.planner.hetnet.evaluate import HetnetPlan
from emu.planner.hetnet.exact import EXACT_MAX_TASKS, exact_plan
from emu.planner.hetnet.model import HetnetProblem
from emu.planner.hetnet.online import planned_online
from emu.planner.hetnet.refine import planned, refined_plan

__all__ = ["HETNET_POLICIES", "HetnetPolicy"]


@dataclass(frozen=True, slots=True)
class HetnetPolicy:
    """A hetnet policy: one planning function of the problem (``emu.planner.Policy``)."""

    name: str
    about: str
    solve: Callable[[HetnetProblem], HetnetPlan]
    baseline: str = ""
    max_users: int | None = None
    system: str = "hetnet"

    def plan(self, problem: HetnetProblem, previous: HetnetPlan | None = None) -> HetnetPlan:
        """The policy's plan; with several small cells, each cell's, merged (``cells``); with
        arrivals, a window at a time (``online``); with the acceptance the planner is told
        (``HetnetProblem.believed``)."""
        problem = problem.believed()
        if self.name == "hetnet":  # its window plan, the DP's or max batching's, looking ahead
            return planned_online(
                self._offline,
                problem,
                lambda w: planned_by_cell(dp_plan, w),
                lambda w: planned_by_cell(baselines.max_batching, w),
            )
        return planned_online(self._offline, problem)

    def _offline(self, problem: HetnetProblem) -> HetnetPlan:
        if self.name == "hetnet-exact":  # exact over the whole network, or refused
            return self.solve(problem)
        if self.name == "hetnet":  # never worse than the DP's cell plans merged alike
            return planned_by_cell(self.solve, problem, dp_plan, lengths=True)
        return planned_by_cell(self.solve, problem)


def _ad(problem: HetnetProblem) -> HetnetPlan:
    start = baselines.ad(problem, dp_plan(problem))
    return refined_plan(problem, lengths=(0,), start=start)


def _uniform(problem: HetnetProblem) -> HetnetPlan:
    return refined_plan(problem, start=baselines.uniform(problem))


def _fixed(problem: HetnetProblem) -> HetnetPlan:
    length = (min(FIXED_LENGTH, problem.max_draft_len),)
    return refined_plan(problem, lengths=length, start=baselines.fixed_length(problem))


HETNET_POLICIES = (
    HetnetPolicy(
        "hetnet",
        "the heterogeneous-edge planner: the DP over sorted tasks (batches, speculation "
        "lengths, the batch-ordered band split), improved by local search on the evaluator",
        planned,
    ),
    HetnetPolicy(
        "hetnet-dp",
        "the heterogeneous-edge DP as draftnet reconstructs the paper's, alone",
        dp_plan,
    ),
    HetnetPolicy(
        "hetnet-exact",
        "the best plan over every batching and length, by branch and bound (small instances)",
        exact_plan,
        max_users=EXACT_MAX_TASKS,
    ),
    HetnetPolicy(
        "hetnet-ad",
        "autoregressive decoding at the macro cell, its batches searched like the planner's",
        _ad,
        baseline="ad",
    ),
    HetnetPolicy(
        "hetnet-uniform",
        "the band split evenly (B / K a task), batches and lengths planned for it",
        _uniform,
        baseline="uniform_bandwidth",
    ),
    HetnetPolicy(
        "hetnet-max-batching",
        "as few batches as hetnet.max_batch allows, at the best common length",
        baselines.max_batching,
        baseline="max_batching",
    ),
    HetnetPolicy(
        "hetnet-fixed",
        "every batch at 4 draft tokens, batches planned for it",
        _fixed,
        baseline="fixed_length",
    ),
)
