"""``draftnet solve``: plan one scenario with the analytic cost model, against its system's
baselines.

Layer: emu (orchestration); no I/O.
"""

from __future__ import annotations

import time
from typing import Any

from emu.planner import baselines_of, evaluate, plan_for
from emu.scenario import Scenario

__all__ = ["solve"]


def solve(scenario: Scenario, policy: str | None = None) -> dict[str, Any]:
    """The ``solve --json`` object: ``policy`` (the scenario's ``planner.policy`` if None)'s
    plan, its predicted throughput and cycle, and the baselines' throughputs and speed-ups."""
    problem = scenario.problem()
    policy = policy or scenario.planner.policy
    t0 = time.perf_counter()
    plan = plan_for(policy, problem)
    solve_ms = 1000 * (time.perf_counter() - t0)
    ev = evaluate(problem, plan)
    baselines = {
        key: evaluate(problem, plan_for(name, problem)).throughput_tok_s
        for key, name in baselines_of(scenario.deployment.system).items()
    }
    return {
        "scenario": scenario.name,
        "policy": policy,
        "users": problem.size,
        "throughput_tok_s": ev.throughput_tok_s,
        "cycle_ms": ev.cycle_ms,
        "tokens_per_cycle": ev.tokens_per_cycle,
        "plan": {
            "batches": [list(b) for b in plan.batches],
            "draft_len": list(plan.draft_len),
            "verify_ms": list(ev.verify_ms),
            "ready_ms": list(ev.ready_ms),
            "memory_bytes": list(ev.memory_bytes),
        },
        "baselines": baselines,
        "speedup": {k: ev.throughput_tok_s / v for k, v in baselines.items()},
        "solve_ms": solve_ms,
    }
