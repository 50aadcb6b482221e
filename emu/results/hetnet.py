"""The heterogeneous edge's measured result, the same for ``draftnet sim`` and ``run``: each
task's latency beside the evaluator's, where it went, and what the servers did.

Layer: emu (results); no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emu.planner.hetnet.evaluate import HetnetEvaluation, HetnetPlan
from emu.planner.hetnet.model import HetnetProblem
from nodes.core.hetnet import BatchStats, TaskOutcome

__all__ = ["TaskOutcome", "hetnet_result"]


def _summary_ms(latency: Sequence[float], ends: Sequence[float]) -> dict[str, float]:
    """The tasks' latencies (each from its arrival) summarised; the makespan is when the
    last one ``ends``."""
    lat = np.array(latency)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
        "total": float(lat.sum()),
        "mean": float(lat.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "makespan": float(max(ends)),
    }


def _breakdown_ms(
    problem: HetnetProblem, stats: Sequence[BatchStats], done: dict[int, float], t0: float
) -> dict[str, float]:
    """Where a finished task's latency went, the mean over them, as the small cell measured
    it: waiting for its batch's uploads (from its arrival), the small cell's steps, the
    fronthaul both ways, the macro cell's verifications, and queueing (the rest: waiting for a
    busy server)."""
    out = dict.fromkeys(("upload_wait", "draft", "fronthaul", "verify", "queue"), 0.0)
    for st in stats:
        for k in st.tasks:
            if k not in done or st.released_s is None:
                continue
            share = 1.0 / len(done)
            parts = {
                "upload_wait": (st.released_s - t0) * 1e3 - problem.tasks[k].arrival_ms,
                "draft": st.draft_ms,
                "fronthaul": st.fronthaul_ms,
                "verify": st.verify_ms,
            }
            for key, ms in parts.items():
                out[key] += share * ms
            out["queue"] += share * (done[k] - sum(parts.values()))
    return out


def hetnet_result(
    problem: HetnetProblem,
    *,
    plan: HetnetPlan,
    ev: HetnetEvaluation,
    outcomes: Sequence[TaskOutcome],
    stats: Sequence[BatchStats],
    t0: float,
    t_end: float,
    user_faults: int,
) -> dict[str, Any]:
    """A policy's result: ``latency_ms`` measured and ``predicted_latency_ms`` (the
    evaluator's), their breakdowns, and the servers' counts; ``t0`` is the start on the small
    cell's clock and ``t_end`` [s] how long the run took."""
    done = {o.task: o.latency_ms for o in outcomes if o.latency_ms is not None}
    drafted = sum(s.draft_tokens for s in stats)
    accepted = sum(s.accepted_tokens for s in stats)
    task_rounds = sum(s.rounds * len(s.tasks) for s in stats if s.spec_len > 0)
    tokens = sum(len(o.tokens) for o in outcomes)
    ttft = [o.ttft_ms for o in outcomes if o.ttft_ms is not None]
    predicted = ev.summary_ms()
    ends = [problem.tasks[k].arrival_ms + ms for k, ms in done.items()]
    measured = _summary_ms(list(done.values()), ends) if done else None
    return {
        "tasks": problem.size,
        "finished": len(done),
        "latency_ms": measured,
        "predicted_latency_ms": predicted,
        "error_pct": None
        if measured is None
        else 100.0 * (measured["mean"] / predicted["mean"] - 1.0),
        "breakdown_ms": _breakdown_ms(problem, stats, done, t0),
        "predicted_breakdown_ms": ev.breakdown_ms(plan),
        "ttft_ms": None
        if not ttft
        else dict(zip(("p50", "p95"), map(float, np.percentile(ttft, [50, 95])), strict=True)),
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_len": (accepted + task_rounds) / task_rounds if task_rounds else None,
        "mean_draft_len": drafted / task_rounds if task_rounds else None,
        "tokens": tokens,
        "rounds": sum(s.rounds for s in stats),
        "predicted_rounds": sum(ev.rounds),
        "throughput_tok_s": tokens / t_end if t_end > 0 else 0.0,
        "plan": {
            "batches": [list(b) for b in plan.batches],
            "cell": [problem.tasks[b[0]].cell for b in plan.batches],
            "spec_len": list(plan.spec_len),
            "bandwidth": plan.bandwidth,
            "opens_ms": list(plan.opens_ms),
        },
        "user_faults": user_faults,
        "duration_s": t_end,
    }
