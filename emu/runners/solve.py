"""``draftnet solve``: plan one scenario with its system's cost model, against the system's
baselines.

Layer: emu (orchestration); no I/O. Each system has its solve: DiP-SD's reports throughput
(tokens per second, the analytic cycle), the heterogeneous-edge system's reports latency
(the event-driven evaluator's, per task).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from emu.planner import Problem, baselines_of, evaluate, get_policy
from emu.planner.hetnet.bandwidth import allocation_hz
from emu.planner.hetnet.evaluate import evaluate as evaluate_hetnet
from emu.planner.hetnet.model import HetnetProblem
from emu.planner.stochastic import stochastic_evaluate
from emu.scenario import Scenario

__all__ = ["solve", "solve_each"]


def solve(scenario: Scenario, policy: str | None = None) -> dict[str, Any]:
    """The ``solve --json`` object of ``policy`` (the scenario's ``planner.policy`` if None)."""
    return solve_each(scenario, [policy or scenario.planner.policy])[0]


def solve_each(scenario: Scenario, policies: list[str]) -> list[dict[str, Any]]:
    """The ``solve --json`` object of each policy of ``policies`` on one scenario, each plan
    (the baselines' too) made once (a study's case)."""
    problem_of, solves = _SOLVES[scenario.deployment.system]
    problem = problem_of(scenario)
    plans: dict[str, Any] = {}  # a policy's name -> its plan and solve time [ms]

    def plan_of(name: str, problem: Any) -> tuple[Any, float]:
        if name not in plans:
            t0 = time.perf_counter()
            plans[name] = (get_policy(name).plan(problem), 1000 * (time.perf_counter() - t0))
        return plans[name]  # type: ignore[no-any-return]

    return [solves(scenario, problem, policy, plan_of) for policy in policies]


PlanOf = Callable[[str, Any], tuple[Any, float]]


def _dipsd_problem(scenario: Scenario) -> Problem:
    """The scenario's instance; on radio links, with each user's link time and its noise from
    the radio series that the simulation draws from the same seed, as it plans with them."""
    problem = scenario.problem()
    if scenario.network.model != "radio":
        return problem
    from channel_models.cell import generate
    from emu.deploy.runtime import with_radio
    from emu.scenario.streams import Streams

    radio = generate(
        scenario.radio, problem.size, scenario.sim.duration_s, Streams(scenario.sim.seed).radio()
    )
    return with_radio(problem, scenario, radio.up, radio.down)


def _solve_dipsd(
    scenario: Scenario, problem: Problem, policy: str, plan_of: PlanOf
) -> dict[str, Any]:
    """DiP-SD: the plan, its predicted throughput and cycle, and the baselines' throughputs
    and speed-ups."""
    plan, solve_ms = plan_of(policy, problem)
    ev = evaluate(problem, plan)
    expected = stochastic_evaluate(problem, plan)
    baselines = {
        key: evaluate(problem, plan_of(name, problem)[0]).throughput_tok_s
        for key, name in baselines_of(scenario.deployment.system).items()
    }
    return {
        "scenario": scenario.name,
        "system": "dipsd",
        "policy": policy,
        "users": problem.size,
        "throughput_tok_s": ev.throughput_tok_s,
        "cycle_ms": ev.cycle_ms,
        "tokens_per_cycle": ev.tokens_per_cycle,
        # With the links' noise and the edge's deadline (the mean model's without noise).
        "expected_tok_s": expected.throughput_tok_s,
        "expected_cycle_ms": expected.cycle_ms,
        "plan": {
            "batches": [list(b) for b in plan.batches],
            "draft_len": list(plan.draft_len),
            "close_tolerance": list(plan.close_tolerance),
            "verify_ms": list(ev.verify_ms),
            "ready_ms": list(ev.ready_ms),
            "memory_bytes": list(ev.memory_bytes),
        },
        "baselines": baselines,
        "speedup": {k: ev.throughput_tok_s / v for k, v in baselines.items()},
        "solve_ms": solve_ms,
    }


def _solve_hetnet(
    scenario: Scenario, problem: HetnetProblem, policy: str, plan_of: PlanOf
) -> dict[str, Any]:
    """The heterogeneous edge: the plan (batches in order, their speculation lengths, each
    task's band), its latencies as the evaluator scores them with their breakdown, the
    reconstructed DP's beside it, and each baseline's latencies and the plan's gain on it
    (how much lower its total latency is, in percent)."""
    from emu.errors import ConfigError

    chosen = get_policy(policy, where="planner.policy")
    if chosen.max_users is not None and problem.size > chosen.max_users:
        raise ConfigError(
            f"planner.policy {policy!r} plans at most {chosen.max_users} tasks (users.count), "
            f"got {problem.size}"
        )
    plan, solve_ms = plan_of(policy, problem)
    ev = evaluate_hetnet(problem, plan)

    def scored(name: str) -> dict[str, Any]:
        return {"latency_ms": evaluate_hetnet(problem, plan_of(name, problem)[0]).summary_ms()}

    baselines = {key: scored(name) for key, name in baselines_of("hetnet").items()}
    total = ev.total_ms
    return {
        "scenario": scenario.name,
        "system": "hetnet",
        "policy": policy,
        "tasks": problem.size,
        "small_cells": problem.cells,
        "latency_ms": ev.summary_ms(),
        "breakdown_ms": ev.breakdown_ms(plan),
        "plan": {
            "batches": [list(b) for b in plan.batches],
            "cell": [problem.tasks[b[0]].cell for b in plan.batches],
            "spec_len": list(plan.spec_len),
            "bandwidth": plan.bandwidth,
            "bandwidth_hz": [
                float(b)
                for b in allocation_hz(problem, plan.batches, plan.bandwidth, plan.opens_ms)
            ],
            "opens_ms": list(plan.opens_ms),
            "release_ms": list(ev.release_ms),
            "rounds": list(ev.rounds),
        },
        "dp": scored("hetnet-dp"),
        "baselines": baselines,
        "gain_pct": {
            key: 100.0 * (1.0 - total / b["latency_ms"]["total"]) for key, b in baselines.items()
        },
        "solve_ms": solve_ms,
    }


# Per system: its planning instance (built once per scenario), and one policy's solve of it.
_SOLVES: dict[str, tuple[Callable[[Scenario], Any], Callable[..., dict[str, Any]]]] = {
    "dipsd": (_dipsd_problem, _solve_dipsd),
    "hetnet": (Scenario.hetnet_problem, _solve_hetnet),
}
