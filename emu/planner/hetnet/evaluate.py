"""The heterogeneous-edge system's ground truth: an event-driven evaluator of a plan
(hetnet.md section 3.5), against which the planner, the simulation and the emulation are
checked.

Layer: pure (emu.planner).

Four resources, each serving one stage at a time without preemption: the small cell's server
(SBS), the macro cell's (MBS), and the fronthaul each way. Batch m is released when its
uploads end (U_m), prefills its drafts at the SBS, then runs R_m = ceil(O_m / L_m) rounds:
draft l_m tokens at the SBS, send them (and their distributions; the prompt in round 1) up the
fronthaul, verify at the MBS (with the target's prefill in round 1), send the verdicts down.
Round r + 1 waits for round r's verdicts. A resource serves the stages ready for it in order
of their ready time (ties: the lower batch); batches overlap because one drafts while another
verifies. Task k's latency T_k is its batch's last verdict's arrival.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.planner.hetnet.bandwidth import batch_ordered_release_ms, uniform_release_ms
from emu.planner.hetnet.model import HetnetProblem, expected_tokens_per_round

__all__ = ["RESOURCES", "HetnetEvaluation", "HetnetPlan", "Stage", "evaluate", "stages_of"]

RESOURCES = ("sbs", "fh_up", "mbs", "fh_down")
BANDWIDTH_MODES = ("batch-ordered", "uniform")


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetPlan:
    """Batches of task indices in the order they run, each batch's speculation length (0:
    autoregressive decoding at the MBS, the AD baseline), and how the band is split."""

    batches: tuple[tuple[int, ...], ...]
    spec_len: tuple[int, ...]
    bandwidth: str = "batch-ordered"  # or "uniform"

    def check(self, problem: HetnetProblem) -> None:
        seen = sorted(k for b in self.batches for k in b)
        if seen != list(range(problem.size)) or any(not b for b in self.batches):
            raise ConfigError(
                f"plan.batches must hold each of the {problem.size} tasks exactly once"
            )
        if len(self.spec_len) != len(self.batches):
            raise ConfigError("plan.spec_len must give one length a batch")
        for m, ln in enumerate(self.spec_len):
            if not 0 <= ln <= problem.max_draft_len:
                raise ConfigError(
                    f"plan.spec_len[{m}] must be in [0, {problem.max_draft_len}], got {ln}"
                )
        for m, b in enumerate(self.batches):
            if len(b) > problem.batch_cap:
                raise ConfigError(
                    f"plan.batches[{m}] holds {len(b)} tasks, over hetnet.max_batch "
                    f"{problem.batch_cap}"
                )
        if self.bandwidth not in BANDWIDTH_MODES:
            raise ConfigError(
                f"plan.bandwidth must be one of {', '.join(BANDWIDTH_MODES)}, "
                f"got {self.bandwidth!r}"
            )


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a batch: it holds ``resource`` for ``hold_ms``, and the next step may start
    ``after_ms`` after it ends (a fronthaul's latency)."""

    batch: int
    round: int  # 0: the prefill; 1..R: the rounds
    what: str  # prefill | draft | up | verify | down
    resource: str
    hold_ms: float
    after_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Timed:
    stage: Stage
    ready_ms: float
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetEvaluation:
    """The evaluator's account of a plan [ms]."""

    latency_ms: tuple[float, ...]  # T_k per task
    release_ms: tuple[float, ...]  # U_m per batch
    rounds: tuple[int, ...]  # R_m per batch
    timeline: tuple[Timed, ...]  # every stage as it ran

    @property
    def total_ms(self) -> float:
        return math.fsum(self.latency_ms)

    @property
    def makespan_ms(self) -> float:
        return max(self.latency_ms)

    def objective(self, problem: HetnetProblem) -> float:
        return self.total_ms if problem.objective == "sum" else self.makespan_ms


def _batch_shape(problem: HetnetProblem, batch: Sequence[int]) -> tuple[int, int, float]:
    """I_m, O_m (padding to the longest) and the mean acceptance."""
    tasks = [problem.tasks[k] for k in batch]
    alpha = math.fsum(t.alpha for t in tasks) / len(tasks)
    return max(t.input_len for t in tasks), max(t.output_len for t in tasks), alpha


def rounds_of(problem: HetnetProblem, batch: Sequence[int], spec_len: int) -> int:
    """R_m = ceil(O_m / L_m); with no speculation, one round (a pass) a token."""
    _, out, alpha = _batch_shape(problem, batch)
    if spec_len == 0:
        return out
    return math.ceil(out / expected_tokens_per_round(alpha, spec_len) - 1e-12)


def stages_of(problem: HetnetProblem, m: int, batch: Sequence[int], spec_len: int) -> list[Stage]:
    """Batch m's stages in their order."""
    n = len(batch)
    prompt, _, alpha = _batch_shape(problem, batch)
    tau = problem.fronthaul_latency_ms
    up_ms = problem.fronthaul_transfer_ms
    if spec_len == 0:  # AD: the prompt to the MBS, then a target pass a token
        out = rounds_of(problem, batch, 0)
        stages = [
            Stage(m, 0, "up", "fh_up", up_ms(problem.fronthaul_up_bits(n, 0, prompt=prompt)), tau),
            Stage(m, 0, "prefill", "mbs", problem.verify_prefill_ms(n, prompt)),
        ]
        stages += [
            Stage(m, r, "verify", "mbs", problem.verify_ms(n, prompt + r - 1, 0))
            for r in range(1, out + 1)
        ]
        stages.append(Stage(m, out, "down", "fh_down", up_ms(problem.fronthaul_down_bits(n)), tau))
        return stages
    per_round = expected_tokens_per_round(alpha, spec_len)
    stages = [Stage(m, 0, "prefill", "sbs", problem.draft_prefill_ms(n, prompt))]
    for r in range(1, rounds_of(problem, batch, spec_len) + 1):
        context = round(prompt + (r - 1) * per_round)
        first = prompt if r == 1 else 0
        stages += [
            Stage(m, r, "draft", "sbs", problem.draft_ms(n, context, spec_len)),
            Stage(
                m,
                r,
                "up",
                "fh_up",
                up_ms(problem.fronthaul_up_bits(n, spec_len, prompt=first)),
                tau,
            ),
            Stage(m, r, "verify", "mbs", problem.verify_ms(n, context, spec_len, prefill=first)),
            Stage(m, r, "down", "fh_down", up_ms(problem.fronthaul_down_bits(n)), tau),
        ]
    return stages


def release_ms(problem: HetnetProblem, plan: HetnetPlan) -> list[float]:
    if plan.bandwidth == "uniform":
        return uniform_release_ms(problem, plan.batches)
    return batch_ordered_release_ms(problem, plan.batches)


def evaluate(problem: HetnetProblem, plan: HetnetPlan) -> HetnetEvaluation:
    """Run the plan's stages on the four resources (discrete events, exact)."""
    plan.check(problem)
    released = release_ms(problem, plan)
    chains = [
        stages_of(problem, m, b, ln)
        for m, (b, ln) in enumerate(zip(plan.batches, plan.spec_len, strict=True))
    ]
    nxt = [0] * len(chains)  # each batch's next stage
    events: list[tuple[float, int, int]] = [(u, 1, m) for m, u in enumerate(released)]
    heapq.heapify(events)  # (time, 0: a resource frees | 1: a stage is ready, batch)
    queues: dict[str, list[tuple[float, int]]] = {r: [] for r in RESOURCES}
    busy: dict[str, int | None] = dict.fromkeys(RESOURCES)
    started: dict[int, tuple[float, float]] = {}
    timeline: list[Timed] = []
    done_ms = [0.0] * len(chains)
    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # every event of this instant, then dispatch
            _, kind, m = heapq.heappop(events)
            if kind == 1:
                heapq.heappush(queues[chains[m][nxt[m]].resource], (now, m))
                continue
            stage = chains[m][nxt[m]]
            busy[stage.resource] = None
            ready, start = started.pop(m)
            timeline.append(Timed(stage, ready, start, now))
            nxt[m] += 1
            if nxt[m] < len(chains[m]):
                heapq.heappush(events, (now + stage.after_ms, 1, m))
            else:
                done_ms[m] = now + stage.after_ms
        for resource in RESOURCES:
            if busy[resource] is None and queues[resource]:
                ready, m = heapq.heappop(queues[resource])
                stage = chains[m][nxt[m]]
                busy[resource] = m
                started[m] = (ready, now)
                heapq.heappush(events, (now + stage.hold_ms, 0, m))
    latency = [0.0] * problem.size
    for m, batch in enumerate(plan.batches):
        for k in batch:
            latency[k] = done_ms[m]
    return HetnetEvaluation(
        latency_ms=tuple(latency),
        release_ms=tuple(released),
        rounds=tuple(
            rounds_of(problem, b, ln) for b, ln in zip(plan.batches, plan.spec_len, strict=True)
        ),
        timeline=tuple(timeline),
    )
