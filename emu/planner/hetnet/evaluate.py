"""The heterogeneous-edge system's ground truth: an event-driven evaluator of a plan
(hetnet.md section 3.5), against which the planner, the simulation and the emulation are
checked.

Layer: pure (emu.planner).

Four resources, each serving one stage at a time without preemption: the small cell's server
(SBS), the macro cell's (MBS), and the fronthaul each way. With several small cells each has
its own server and fronthaul, and they share the macro cell's server. Batch m is released when its
uploads end (U_m), prefills its drafts at the SBS, then runs R_m = ceil(O_m / L_m) rounds:
draft l_m tokens at the SBS, send them (and their distributions; the prompt in round 1) up the
fronthaul, verify at the MBS (with the target's prefill in round 1), send the verdicts down.
Round r + 1 waits for round r's verdicts. A resource serves the stages ready for it by the
problem's ``discipline``: ``priority`` (the default), the earliest batch of the plan first, so
batches finish in turn as the DP's recursion assumes, or ``fifo``, by ready time (ties: the
lower batch), as hetnet.md 3.5 has it (at 100 tasks the same planner's mean latency is 29.6 s
under fifo against 22.2 s under priority: fifo shares the servers among all the batches, so
all finish late). Batches overlap because one drafts while another verifies. Task k's latency
T_k is its batch's last verdict's arrival.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emu.errors import ConfigError
from emu.planner.hetnet.bandwidth import release_times_ms
from emu.planner.hetnet.model import (
    HetnetProblem,
    Stage,
    expected_max_rounds,
    expected_tokens_per_round,
    prefill_flops,
)
from emu.planner.model import draft_flops, verify_flops

__all__ = [
    "RESOURCES",
    "Chains",
    "HetnetEvaluation",
    "HetnetPlan",
    "Scores",
    "Stage",
    "chain_of",
    "evaluate",
    "scored",
    "stages_of",
]

RESOURCES = ("sbs", "fh_up", "mbs", "fh_down")
BANDWIDTH_MODES = ("batch-ordered", "uniform")


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetPlan:
    """Batches of task indices in the order they run, each batch's speculation length (0:
    autoregressive decoding at the MBS, the AD baseline), and how the band is split. Under
    arrivals, ``opens_ms`` gives each batch's window: when it was planned, the earliest its
    users may upload (``emu.planner.hetnet.online``; empty: every batch at 0)."""

    batches: tuple[tuple[int, ...], ...]
    spec_len: tuple[int, ...]
    bandwidth: str = "batch-ordered"  # or "uniform"
    opens_ms: tuple[float, ...] = ()

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
            if len({problem.tasks[k].cell for k in b}) > 1:
                raise ConfigError(f"plan.batches[{m}] mixes tasks of different small cells")
            if len(b) > problem.batch_cap:
                raise ConfigError(
                    f"plan.batches[{m}] holds {len(b)} tasks, over hetnet.max_batch "
                    f"{problem.batch_cap}"
                )
        if self.opens_ms:
            if len(self.opens_ms) != len(self.batches):
                raise ConfigError("plan.opens_ms must give one time a batch")
            if any(b < a for a, b in zip(self.opens_ms, self.opens_ms[1:], strict=False)):
                raise ConfigError("plan.opens_ms must not decrease: windows run in turn")
            for m, b in enumerate(self.batches):
                late = max(problem.tasks[k].arrival_ms for k in b)
                if late > self.opens_ms[m]:
                    raise ConfigError(
                        f"plan.batches[{m}] opens at {self.opens_ms[m]:g} ms, before its task "
                        f"arrives at {late:g} ms"
                    )
        elif problem.online:
            raise ConfigError("plan.opens_ms must give each batch's window: tasks arrive over time")
        if self.bandwidth not in BANDWIDTH_MODES:
            raise ConfigError(
                f"plan.bandwidth must be one of {', '.join(BANDWIDTH_MODES)}, "
                f"got {self.bandwidth!r}"
            )


@dataclass(frozen=True, slots=True)
class Timed:
    batch: int
    stage: Stage
    ready_ms: float
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetEvaluation:
    """The evaluator's account of a plan [ms]."""

    latency_ms: tuple[float, ...]  # T_k per task, from its arrival
    arrival_ms: tuple[float, ...]  # a_k per task
    release_ms: tuple[float, ...]  # U_m per batch
    rounds: tuple[int, ...]  # R_m per batch
    timeline: tuple[Timed, ...]  # every stage as it ran

    @property
    def total_ms(self) -> float:
        return math.fsum(self.latency_ms)

    @property
    def makespan_ms(self) -> float:
        """When the last task ends (from the start, its arrival and latency)."""
        return max(a + t for a, t in zip(self.arrival_ms, self.latency_ms, strict=True))

    def objective(self, problem: HetnetProblem) -> float:
        return self.total_ms if problem.objective == "sum" else self.makespan_ms

    def summary_ms(self) -> dict[str, float]:
        """``latency_ms`` of the solve, sim and run JSON: the total (the sum over tasks),
        the mean, the percentiles and the makespan."""
        lat = np.array(self.latency_ms)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {
            "total": self.total_ms,
            "mean": float(lat.mean()),
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "makespan": self.makespan_ms,
        }

    def breakdown_ms(self, plan: HetnetPlan) -> dict[str, float]:
        """Where a task's latency goes, the mean over tasks: waiting for its batch's uploads
        (from its arrival: its window's close too), drafting (and the drafts' prefill), the
        fronthaul (holding it, and its latency), verifying, and queueing for a busy server or
        link (the rest)."""
        spent = {
            m: dict.fromkeys(("draft", "fronthaul", "verify"), 0.0)
            for m in range(len(plan.batches))
        }
        for t in self.timeline:
            r = t.stage.resource
            kind = "verify" if r == "mbs" else "draft" if r.startswith("sbs") else "fronthaul"
            spent[t.batch][kind] += t.end_ms - t.start_ms + t.stage.after_ms
        out = dict.fromkeys(("upload_wait", "draft", "fronthaul", "verify", "queue"), 0.0)
        size = len(self.latency_ms)
        for m, batch in enumerate(plan.batches):
            share = len(batch) / size
            work = sum(spent[m].values())
            for kind, ms in spent[m].items():
                out[kind] += share * ms
            for k in batch:
                wait = self.release_ms[m] - self.arrival_ms[k]
                out["upload_wait"] += wait / size
                out["queue"] += (self.latency_ms[k] - wait - work) / size
        return out


def _batch_shape(problem: HetnetProblem, batch: Sequence[int]) -> tuple[int, int, float]:
    """I_m, O_m (padding to the longest) and the mean acceptance."""
    tasks = [problem.tasks[k] for k in batch]
    alpha = math.fsum(t.alpha for t in tasks) / len(tasks)
    return max(t.input_len for t in tasks), max(t.output_len for t in tasks), alpha


def rounds_of(problem: HetnetProblem, batch: Sequence[int], spec_len: int) -> int:
    """R_m = ceil(O_m / L_m), or (``problem.rounds = "sampled"``) the nearest whole number to
    the expected rounds of the batch's slowest task under sampled acceptance; with no
    speculation, one round (a pass) a token."""
    _, out, alpha = _batch_shape(problem, batch)
    if spec_len == 0:
        return out
    if problem.rounds == "sampled":
        members = [(problem.tasks[k].output_len, problem.tasks[k].alpha) for k in batch]
        return max(1, round(expected_max_rounds(members, spec_len)))
    return math.ceil(out / expected_tokens_per_round(alpha, spec_len) - 1e-12)


def stages_of(problem: HetnetProblem, batch: Sequence[int], spec_len: int) -> list[Stage]:
    """A batch's stages in their order (each kind's pass times computed over its rounds at
    once)."""
    n = len(batch)
    prompt, _, alpha = _batch_shape(problem, batch)
    cell = problem.tasks[batch[0]].cell
    tau = problem.fronthaul(cell)[1]
    hold = functools.partial(problem.fronthaul_transfer_ms, cell=cell)
    on_sbs, on_up, on_down = (r + problem.cell_suffix(cell) for r in ("sbs", "fh_up", "fh_down"))
    down_ms = float(hold(problem.fronthaul_down_bits(n)))
    rounds = rounds_of(problem, batch, spec_len)
    if spec_len == 0:  # AD: the prompt to the MBS, then a target pass a token
        kv = prompt + np.arange(rounds, dtype=np.float64)
        passes = problem.pass_ms("verify", n, verify_flops(problem.target, 1.0, kv), kv)
        up = float(hold(problem.fronthaul_up_bits(n, 0, prompt=prompt)))
        stages = [
            Stage(0, "up", on_up, up, tau),
            Stage(0, "prefill", "mbs", problem.verify_prefill_ms(n, prompt)),
        ]
        stages += [Stage(r + 1, "verify", "mbs", float(t)) for r, t in enumerate(passes)]
        stages.append(Stage(rounds, "down", on_down, down_ms, tau))
        return stages
    per_round = expected_tokens_per_round(alpha, spec_len)
    # Round r's KV length, as the evaluator always had it: round(prompt + (r - 1) L).
    context = np.array([round(prompt + r * per_round) for r in range(rounds)], dtype=np.float64)
    steps = context[:, None] + np.arange(spec_len)[None, :]  # the l decode steps of each round
    drafts = problem.pass_ms("draft", n, draft_flops(problem.draft, steps), steps).sum(axis=1)
    verify_f = verify_flops(problem.target, spec_len + 1.0, context)
    verify_f[0] += float(prefill_flops(problem.target, prompt))  # the target's prefill, round 1
    verifies = problem.pass_ms("verify", n, verify_f, context)
    up_first = float(hold(problem.fronthaul_up_bits(n, spec_len, prompt=prompt)))
    up_next = float(hold(problem.fronthaul_up_bits(n, spec_len)))
    stages = [Stage(0, "prefill", on_sbs, problem.draft_prefill_ms(n, prompt))]
    for r in range(1, rounds + 1):
        stages += [
            Stage(r, "draft", on_sbs, float(drafts[r - 1])),
            Stage(r, "up", on_up, up_first if r == 1 else up_next, tau),
            Stage(r, "verify", "mbs", float(verifies[r - 1])),
            Stage(r, "down", on_down, down_ms, tau),
        ]
    return stages


Chains = dict[tuple[tuple[int, ...], int], list[Stage]]  # (batch, spec_len) -> its stages


def chain_of(
    problem: HetnetProblem, batch: tuple[int, ...], spec_len: int, cache: Chains | None
) -> list[Stage]:
    """A batch's stages, from ``cache`` where it holds them."""
    if cache is None:
        return stages_of(problem, batch, spec_len)
    key = (batch, spec_len)
    if key not in cache:
        cache[key] = stages_of(problem, batch, spec_len)
    return cache[key]


def _alone(
    chain: list[Stage],
    i: int,
    at: float,
    *,
    ending: bool,
    started: tuple[float, float],
    done_ms: list[float],
    m: int,
    timeline: list[Timed] | None,
    batch: int,
) -> None:
    """Batch ``m``'s stages from its ``i``-th once every other batch is done and no resource
    is held: each starts as soon as it is ready (its resource free), as the event loop would
    run them, with the same sums (an end at its start plus its hold, a ready time at that end
    plus the latency after it), so the times are the loop's to the last bit. Its one pending
    event is at ``at``: stage i's end (``ending``, ``started`` its ready and start times) or
    its ready time. Its end goes to ``done_ms``, its stages to ``timeline`` as ``batch``."""
    if ending:
        ready, start = started
        end = at
    else:  # ready then, its resource free: it starts at once
        ready = start = at
        end = at + chain[i].hold_ms
    while True:
        stage = chain[i]
        if timeline is not None:
            timeline.append(Timed(batch, stage, ready, start, end))
        i += 1
        if i == len(chain):
            done_ms[m] = end + stage.after_ms
            return
        ready = start = end + stage.after_ms if stage.after_ms else end
        end = start + chain[i].hold_ms


def evaluate(
    problem: HetnetProblem,
    plan: HetnetPlan,
    *,
    cache: Chains | None = None,
    record: bool = True,
) -> HetnetEvaluation:
    """Run the plan's stages on the four resources (discrete events, exact). ``cache`` keeps
    each batch's stages between the evaluations of one problem's plans, and ``record =
    False`` leaves the timeline empty (a search, which needs only the latencies)."""
    plan.check(problem)
    priority = problem.discipline == "priority"
    released = release_times_ms(problem, plan.batches, plan.bandwidth, plan.opens_ms)
    # The earlier windows' batches still running (``problem.carried``) come first: 0..C - 1.
    carried = len(problem.carried)
    chains = [list(c) for _, c in problem.carried] + [
        chain_of(problem, b, ln, cache) for b, ln in zip(plan.batches, plan.spec_len, strict=True)
    ]
    nxt = [0] * len(chains)  # each batch's next stage
    readies = [ready for ready, _ in problem.carried] + released
    events: list[tuple[float, int, int]] = [(u, 1, m) for m, u in enumerate(readies)]
    heapq.heapify(events)  # (time, 0: a stage ends | 1: a stage is ready, batch | 2: ...)
    resources = [
        r if r == "mbs" else r + problem.cell_suffix(c)
        for c in range(problem.cells)
        for r in RESOURCES
    ]
    resources += [stage.resource for _, c in problem.carried for stage in c]
    resources = list(dict.fromkeys(resources))
    # Resources by their index, and each stage's: the loop below runs once or more a stage,
    # thousands of times a search, so it looks up lists, not names.
    index = {r: i for i, r in enumerate(resources)}
    on = [[index[stage.resource] for stage in chain] for chain in chains]
    queues: list[list[tuple[float, float, int]]] = [[] for _ in resources]
    busy: list[int | None] = [None] * len(resources)
    free_at = dict(problem.free_at_ms)
    for i, name in enumerate(resources):  # held by earlier work until then (-1: no batch)
        held = free_at.get(name, 0.0)
        if held > 0:
            busy[i] = -1
            heapq.heappush(events, (held, 2, i))
    ready_ms = [0.0] * len(chains)  # the stage each batch has in service: when it was ready
    start_ms = [0.0] * len(chains)  # ... and when it started
    timeline: list[Timed] = []
    done_ms = [0.0] * len(chains)
    left = len(chains)  # batches not yet done
    push, pop = heapq.heappush, heapq.heappop
    while events:
        now = events[0][0]
        # Only a resource freed or queued for in this instant may start a stage in it: the
        # others are as the last dispatch left them (busy, or with nothing to serve).
        touched: list[int] = []
        while events and events[0][0] == now:  # every event of this instant, then dispatch
            _, kind, m = pop(events)
            if kind == 0:  # batch m's stage ends
                i = nxt[m]
                chain = chains[m]
                stage = chain[i]
                r = on[m][i]
                busy[r] = None
                touched.append(r)
                if record and m >= carried:
                    timeline.append(Timed(m - carried, stage, ready_ms[m], start_ms[m], now))
                i += 1
                nxt[m] = i
                if i == len(chain):
                    done_ms[m] = now + stage.after_ms
                    left -= 1
                elif stage.after_ms:
                    push(events, (now + stage.after_ms, 1, m))
                else:  # ready at once: queued as its ready event would be, in this instant
                    r = on[m][i]
                    push(queues[r], (m if priority else now, now, m))
                    touched.append(r)
            elif kind == 1:  # batch m's next stage is ready: queued, served in this order
                r = on[m][nxt[m]]
                push(queues[r], (m if priority else now, now, m))
                touched.append(r)
            else:  # a resource's earlier work ends (m is its index)
                busy[m] = None
                touched.append(m)
        for r in touched:  # the order is immaterial: each resource serves its own queue
            if busy[r] is None and queues[r]:
                _, ready, m = pop(queues[r])
                busy[r] = m
                ready_ms[m] = ready
                start_ms[m] = now
                push(events, (now + chains[m][nxt[m]].hold_ms, 0, m))
        if left == 1 and len(events) == 1 and events[0][1] != 2:
            # One batch left, nothing else pending: its stages run back to back.
            at, kind, m = events[0]
            _alone(
                chains[m],
                nxt[m],
                at,
                ending=kind == 0,
                started=(ready_ms[m], start_ms[m]),
                done_ms=done_ms,
                m=m,
                timeline=timeline if record and m >= carried else None,
                batch=m - carried,
            )
            break
    arrival = [t.arrival_ms for t in problem.tasks]
    latency = [0.0] * problem.size
    for m, batch in enumerate(plan.batches):
        for k in batch:
            latency[k] = done_ms[carried + m] - arrival[k]
    return HetnetEvaluation(
        latency_ms=tuple(latency),
        arrival_ms=tuple(arrival),
        release_ms=tuple(released),
        rounds=tuple(
            rounds_of(problem, b, ln) for b, ln in zip(plan.batches, plan.spec_len, strict=True)
        ),
        timeline=tuple(timeline),
    )


# The objective of each plan of one problem scored so far. The searches come back to the same
# plans often (a move and its reverse, the neighbours two moves share, each refit's lengths,
# the next start's path): some four evaluations in five of a small instance's planner are of
# a plan already scored, and the evaluator gives a plan the same score every time.
Scores = dict[HetnetPlan, float]


def scored(problem: HetnetProblem, plan: HetnetPlan, cache: Chains | None, scores: Scores) -> float:
    """The evaluator's objective of ``plan`` (``record = False``), from ``scores`` where it
    was scored before, and kept there."""
    value = scores.get(plan)
    if value is None:
        value = evaluate(problem, plan, cache=cache, record=False).objective(problem)
        scores[plan] = value
    return value
