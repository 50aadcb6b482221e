"""``draftnet sim`` of DSD: many drafters, a router and many verifiers on a discrete-event
clock, one window policy at a time.

Layer: emu (orchestration); no I/O. The loop is a heap of timed calls (``scripts/
bench_dsd_clock.py``: trio's scheduling alone would take most of the minute the baseline
experiment is allowed); what happens at each event is the sans-I/O cores', the emulation's:
``nodes.core.dsd`` (the verifier's queue, a conversation's accounting), ``emu.planner.dsd``
(the window policies, the router, the acceptance curve, the compute model, the links).

A drafter serves one conversation at a time. Its conversations come from the regenerated trace
(each record to a drafter drawn in proportion to its capability); one starts at its record's
time, or once the drafter's user has thought after the last. The router picks the verifier
once a conversation (sticky). The prefill goes to the verifier; then each round the drafter
chooses a window, drafts (its compute model), sends the drafts, and the verifier batches them
with others (``nodes.core.dsd.TargetQueue``) and verifies (its compute model); the verdict's
accepted count is drawn from the position curve at the conversation's context. A job leaves
its lane (or, without lanes, arrives) for its verifier's queue once the verifier's KV cache
holds its tokens until its batch ends (``nodes.core.dsd.KvLedger``); refused past its retries,
its conversation fails and the drafter goes on to its next. Links take each
pair's one-way base times (1 + u), u ~ U(-jitter, jitter) per transfer. The run stops at
``duration_s``; what a conversation had by then counts, and only finished ones give TTFT and
TPOT.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emu.files import write_atomic
from emu.planner import get_policy
from emu.planner.dsd.acceptance import PositionCurve, sample_accepted
from emu.planner.dsd.awc import HISTORY
from emu.planner.dsd.compute import Work
from emu.planner.dsd.links import (
    PairLink,
    prefill_request_bytes,
    prefill_response_bytes,
    round_request_bytes,
    round_response_bytes,
)
from emu.planner.dsd.model import DrafterSpec, DsdProblem, VerifierSpec
from emu.planner.dsd.routing import DsdRouter, VerifierState
from emu.planner.dsd.windows import Choice, WindowPolicy
from emu.planner.dsd.workload import Arrival, regenerate
from emu.scenario import Scenario, scenario_toml
from emu.scenario.dsd import DsdConfig
from nodes.core.dsd import (
    Conversation,
    DrafterCore,
    DsdJob,
    KvLedger,
    Lane,
    QueueView,
    RoundTally,
    TargetQueue,
)
from nodes.core.systems import get_system

__all__ = [
    "DsdRun",
    "Observer",
    "deal",
    "dsd_problem_of",
    "simulate_dsd",
    "simulate_dsd_policy",
    "with_acceptance",
]

Observer = Callable[[float, Choice, int], None]  # (simulated s, what was read, the window)

BATCH_HISTORY = 20  # a verifier's recent batches the router's work-left estimate averages


@dataclass(slots=True)
class _Drafter:
    spec: DrafterSpec
    links: dict[str, PairLink]
    core: DrafterCore
    rng: np.random.Generator
    arrivals: deque[Arrival] = field(default_factory=deque)
    conv: Conversation | None = None
    conv_id: str = ""
    verifier: str = ""
    gamma: int = 0  # the window of the round in flight (or of the conversation)
    drafts: int = 0
    round_start_s: float = 0.0
    count: int = 0


@dataclass(slots=True)
class _Verifier:
    spec: VerifierSpec
    queue: TargetQueue
    kv: KvLedger
    busy_until_s: float = 0.0
    batches: deque[float] = field(default_factory=lambda: deque(maxlen=BATCH_HISTORY))
    utils: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    busy_s: float = 0.0
    routed: int = 0


@dataclass(slots=True, kw_only=True)
class DsdRun(RoundTally):
    """What one policy's run measured: every drafter's rounds (``RoundTally``), and more."""

    duration_s: float
    finished: list[Conversation] = field(default_factory=list)
    queue_wait_s: list[float] = field(default_factory=list)
    lane_wait_s: list[float] = field(default_factory=list)
    routed: dict[str, int] = field(default_factory=dict)
    utilisation: dict[str, float] = field(default_factory=dict)
    kv_peak: dict[str, int] = field(default_factory=dict)
    kv_refusals: int = 0  # dispatches a verifier's KV cache refused (each retry counts)
    lane_deferrals: int = 0  # jobs that found their lane too deep and waited outside it
    failed: int = 0  # conversations whose job the KV cache refused past its retries

    def summary(self) -> dict[str, Any]:
        ttft = [c.ttft_s * 1e3 for c in self.finished if c.ttft_s is not None]
        tpot = [c.tpot_s * 1e3 for c in self.finished if c.tpot_s is not None]
        return {
            "throughput_tok_s": self.tokens / self.duration_s,
            "tokens": self.tokens,
            "conversations": len(self.finished),
            "rounds": self.rounds,
            "fused_rounds": self.fused_rounds,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            # vLLM's speculative-decoding counters, under its names
            "spec_decode_num_drafts": self.drafts,
            "spec_decode_num_draft_tokens": self.drafted,
            "spec_decode_num_accepted_tokens": self.accepted,
            "accepted_per_pos": list(self.per_position),
            "mean_window": float(np.mean(self.windows)) if self.windows else 0.0,
            "ttft_ms": _percentiles(ttft),
            "tpot_ms": _percentiles(tpot),
            "itl_ms": _percentiles([g * 1e3 for c in self.finished for g in c.itl_s]),
            "queue_wait_ms": _percentiles([w * 1e3 for w in self.queue_wait_s]),
            "lane_wait_ms": _percentiles([w * 1e3 for w in self.lane_wait_s]),
            "routed": dict(self.routed),
            "verifier_utilisation": dict(self.utilisation),
            "kv_peak_tokens": dict(self.kv_peak),
            "kv_refusals": self.kv_refusals,
            "lane_deferrals": self.lane_deferrals,
            "failed_conversations": self.failed,
        }


def _percentiles(xs: list[float]) -> dict[str, float]:
    """Mean and nearest-rank percentiles at index round(p (n - 1)) (dsd.md section 7)."""
    if not xs:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    s = sorted(xs)
    at = {f"p{int(p * 100)}": s[round(p * (len(s) - 1))] for p in (0.5, 0.95, 0.99)}
    return {"mean": float(np.mean(s)), **at}


def deal(
    problem: DsdProblem, *, duration_s: float, seed: int
) -> dict[str, tuple[list[Arrival], np.random.Generator]]:
    """Each drafter's conversations (the regenerated trace's records, each to a drafter drawn
    in proportion to its capability, from the first of the run's streams) and its own stream
    (the streams after it): the simulation's and the emulation's drafters alike."""
    streams = np.random.SeedSequence([seed, 18]).spawn(len(problem.drafters) + 1)
    rng = np.random.default_rng(streams[0])
    caps = np.array([d.capability for d in problem.drafters], dtype=float)
    arrivals = regenerate(problem.trace, list(caps), rng, horizon_s=duration_s)
    weights = caps / caps.sum() if caps.sum() > 0 else np.full(caps.size, 1 / caps.size)
    out: dict[str, tuple[list[Arrival], np.random.Generator]] = {
        d.name: ([], np.random.default_rng(s))
        for d, s in zip(problem.drafters, streams[1:], strict=True)
    }
    names = list(out)
    for a, k in zip(arrivals, rng.choice(len(names), size=len(arrivals), p=weights), strict=True):
        out[names[int(k)]][0].append(a)
    return out


class _Loop:
    def __init__(self, problem: DsdProblem, make_policy: Callable[[], WindowPolicy],
                 duration_s: float, seed: int, observe: Observer | None) -> None:  # fmt: skip
        self.p = problem
        self.observe = observe
        self.end_s = duration_s
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.order = itertools.count()
        self.run = DsdRun(duration_s=duration_s)
        self.router = DsdRouter(problem.router, seed=seed)
        self.owner: dict[str, _Drafter] = {}  # each conversation in flight: its drafter
        # The global phase lanes (dsd.md 4.2's first level), one a phase, before the queues.
        self.lanes = {
            phase: Lane(depth=problem.lane_depth, poll_s=problem.lane_poll_ms / 1e3)
            for phase in (("prefill", "decode") if problem.lanes else ())
        }
        self.wakes: dict[object, float] = {}  # each lane's and verifier's wake-up on the heap
        self.verifiers = {
            v.name: _Verifier(
                v,
                TargetQueue(
                    batch_size=v.batch_size, window_s=v.window_ms / 1e3, order=problem.batching
                ),
                KvLedger(
                    capacity=v.kv_tokens,
                    retries=problem.kv_retries,
                    retry_s=problem.kv_retry_ms / 1e3,
                ),
            )
            for v in problem.verifiers
        }
        dealt = deal(problem, duration_s=duration_s, seed=seed)
        self.drafters = {
            d.name: _Drafter(
                d,
                {lk.verifier: lk for lk in problem.reachable(d.name)},
                DrafterCore(d, problem, make_policy(), self.run),
                dealt[d.name][1],
                deque(dealt[d.name][0]),
            )
            for d in problem.drafters
        }
        for d in self.drafters.values():
            if d.arrivals:
                self.at(d.arrivals[0].at_ms / 1e3, self._next_conversation, d)

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.order), fn, args))

    def _wake(self, now: float, t: float | None, poll: Callable[..., None], who: Any) -> None:
        """Poll ``who`` (a lane or a verifier collecting a batch) again at ``t``, unless that
        wake-up is on the heap already."""
        if t is not None and t > now and self.wakes.get(id(who)) != t:
            self.wakes[id(who)] = t
            self.at(t, poll, who)

    def go(self) -> DsdRun:
        while self.heap:
            now, _, fn, args = heapq.heappop(self.heap)
            if now > self.end_s:
                break
            fn(now, *args)
        for name, v in self.verifiers.items():
            self.run.routed[name] = v.routed
            self.run.kv_peak[name] = v.kv.peak
            self.run.utilisation[name] = min(v.busy_s, self.end_s) / self.end_s
        return self.run

    # --- the drafter ------------------------------------------------------------------------

    def _next_conversation(self, now: float, d: _Drafter) -> None:
        if d.conv is not None or not d.arrivals:
            return
        if d.arrivals[0].at_ms / 1e3 > now:  # thought, but the next record is not due yet
            self.at(d.arrivals[0].at_ms / 1e3, self._next_conversation, d)
            return
        req = d.arrivals.popleft().request
        d.count += 1
        d.conv_id = f"{d.spec.name}/{d.count}"
        self.owner[d.conv_id] = d
        d.conv = Conversation(prompt=req.prompt_tokens, answer=req.answer_tokens, started_s=now,
                              accounting=self.p.compat.round_accounting)  # fmt: skip
        allowed = [self._state(self.verifiers[v], now) for v in d.links]
        d.verifier = self.router.route(d.conv_id, d.spec.name, allowed)
        self.verifiers[d.verifier].routed += 1
        d.gamma = 0
        link = d.links[d.verifier]
        job = DsdJob(conversation=d.conv_id, phase="prefill", tokens=req.prompt_tokens,
                     context=0, enqueued_s=0.0, target=d.verifier)  # fmt: skip
        self.at(now + link.forward(prefill_request_bytes(req.prompt_tokens), d.rng) / 1e3,
                self._arrive, job)  # fmt: skip

    def _round(self, now: float, d: _Drafter) -> None:
        """The next round: drafted here and sent (distributed), or drafted and verified at the
        verifier, one token a round, with no network (fused: always; hybrid: at a window of
        1)."""
        conv = d.conv
        assert conv is not None
        v = self.verifiers[d.verifier]
        queue = QueueView(
            queue_len=v.queue.queue_len,
            batch_size=v.spec.batch_size,
            utils=tuple(v.utils),
            pending_tokens=sum(j.tokens for j in v.queue.jobs),
        )
        d.gamma, fused, choice = d.core.window(conv, d.verifier, d.gamma, queue)
        if choice is not None and self.observe is not None:
            self.observe(now, choice, d.gamma)
        d.drafts = conv.drafts(d.gamma)
        d.round_start_s = now
        job = DsdJob(conversation=d.conv_id, phase="decode", tokens=d.drafts + 1,
                     context=conv.context, enqueued_s=now, target=d.verifier,
                     fused=fused)  # fmt: skip
        if fused:
            self._dispatch(now, job)
            return
        draft_s = d.spec.compute.draft_ms(d.drafts, conv.context, self.p.compat) / 1e3
        send_s = d.links[d.verifier].forward(round_request_bytes(d.drafts), d.rng) / 1e3
        self.at(now + draft_s + send_s, self._arrive, job)

    def _reply(self, now: float, d: _Drafter, job: DsdJob) -> None:
        conv = d.conv
        assert conv is not None
        if job.phase == "prefill":
            d.core.prefilled(conv, now)
        else:
            p = self.p.curve.probabilities(job.context, d.drafts)
            accepted = sample_accepted(p, d.rng) if d.drafts else 0
            d.core.verdict(conv, d.verifier, drafted=d.drafts, accepted=accepted, now=now,
                           round_s=now - d.round_start_s)  # fmt: skip
        if conv.done:
            self.run.finished.append(conv)
            self._end_conversation(now, d)
        else:
            self._round(now, d)

    def _end_conversation(self, now: float, d: _Drafter) -> None:
        """The drafter's conversation is over (whole, or failed); its user thinks, then the
        next one starts."""
        self.router.forget(d.conv_id)
        del self.owner[d.conv_id]
        d.conv = None
        self.at(now + self.p.think.sample_ms(d.rng) / 1e3, self._next_conversation, d)

    # --- the verifier -----------------------------------------------------------------------

    def _state(self, v: _Verifier, now: float) -> VerifierState:
        return VerifierState(
            name=v.spec.name, enqueued=len(v.queue.jobs), busy=v.queue.busy,
            busy_left_ms=max(0.0, v.busy_until_s - now) * 1e3, batch_size=v.spec.batch_size,
            mean_batch_ms=float(np.mean(v.batches)) if v.batches else 37.0,
            weight=v.spec.weight,
        )  # fmt: skip

    def _arrive(self, now: float, job: DsdJob) -> None:
        """A job reaches the cloud: its phase's lane, or straight to its verifier."""
        job.enqueued_s = now
        lane = self.lanes.get(job.phase)
        if lane is None:
            self._dispatch(now, job)
        else:
            self._offer(now, lane, job)

    def _offer(self, now: float, lane: Lane, job: DsdJob, deferred: bool = False) -> None:
        """Into the lane, unless it is too deep: then ask again in the lane's poll."""
        if lane.full:
            self.run.lane_deferrals += not deferred
            self.at(now + lane.poll_s, self._offer, lane, job, True)
            return
        lane.put(job)
        self._poll_lane(now, lane)

    def _poll_lane(self, now: float, lane: Lane) -> None:
        for job in lane.take(now):
            self.run.lane_wait_s.append(now - job.enqueued_s)
            job.enqueued_s = now
            self._dispatch(now, job)
        self._wake(now, lane.wake_s(), self._poll_lane, lane)

    def _dispatch(self, now: float, job: DsdJob) -> None:
        """To its verifier's queue once its KV cache holds the job's tokens; refused, tried
        again later, or the conversation fails."""
        kv = self.verifiers[job.target].kv
        if kv.reserve(job):
            self._enqueue(now, job)
            return
        self.run.kv_refusals += 1
        wait_s = kv.retry_in_s(job)
        if wait_s is not None:
            self.at(now + wait_s, self._dispatch, job)
            return
        d = self.owner[job.conversation]
        self.run.failed += 1
        self._end_conversation(now, d)

    def _enqueue(self, now: float, job: DsdJob) -> None:
        v = self.verifiers[job.target]
        v.queue.put(job)
        self._poll(now, v)

    def _poll(self, now: float, v: _Verifier) -> None:
        batch = v.queue.take(now)
        if batch is None:
            self._wake(now, v.queue.wake_s(), self._poll, v)
            return
        v.utils.append(len(batch) / v.spec.batch_size)
        work = [Work(j.tokens, j.context, prefill=j.phase == "prefill") for j in batch]
        took_ms = v.spec.compute.batch_ms(work, self.p.compat)
        fused = [Work(1, j.context) for j in batch if j.fused]
        if fused and v.spec.fused_draft is not None:  # the fused drafts first, on the same GPU
            took_ms += v.spec.fused_draft.pass_ms(fused)
        took_s = took_ms / 1e3
        v.busy_until_s = now + took_s
        v.busy_s += took_s
        v.batches.append(took_s * 1e3)
        self.run.queue_wait_s += [now - j.enqueued_s for j in batch]
        self.at(now + took_s, self._done, v, batch)

    def _done(self, now: float, v: _Verifier, batch: list[DsdJob]) -> None:
        v.queue.finished(now)
        for job in batch:
            v.kv.free(job)
            d = self.owner[job.conversation]
            if job.fused:  # no network: the verdict is the drafter's now, after this batch ends
                self.at(now, self._reply, d, job)
                continue
            size = (prefill_response_bytes(job.tokens) if job.phase == "prefill"
                    else round_response_bytes(job.tokens))  # fmt: skip
            self.at(now + d.links[v.spec.name].response(size, d.rng) / 1e3, self._reply, d, job)
        if not v.queue.jobs:
            self.router.became_idle(v.spec.name)
        self._poll(now, v)


def with_acceptance(problem: DsdProblem, cfg: DsdConfig) -> DsdProblem:
    """``problem`` with ``dsd.acceptance_from = "embedded"`` resolved: every draft position
    accepted at the embedded pair's greedy rate, as ``draftnet models prepare`` measured it
    (ConfigError, one line, when the pair is not prepared)."""
    if cfg.acceptance_from != "embedded":
        return problem
    from emu.models.embedded import embedded_pair

    authors = PositionCurve()
    rate = min(max(embedded_pair().acceptance, authors.floor), authors.ceiling)
    return replace(problem, curve=replace(authors, base=rate, decay=1.0, context_factors=()))


def dsd_problem_of(sc: Scenario) -> DsdProblem:
    """The scenario's deployment as the runners run it (``with_acceptance``)."""
    return with_acceptance(sc.dsd_problem(), sc.dsd)


def simulate_dsd_policy(
    problem: DsdProblem,
    make_policy: Callable[[], WindowPolicy],
    *,
    duration_s: float,
    seed: int,
    observe: Observer | None = None,
) -> DsdRun:
    """One window policy's run of ``problem`` for ``duration_s`` simulated seconds;
    ``observe`` (AWC's trainer) is told each window chosen: when, what the policy read, and
    the window."""
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    return _Loop(problem, make_policy, duration_s, seed, observe).go()


def simulate_dsd(
    sc: Scenario,
    policies: list[str],
    *,
    out_dir: Path | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Run each window policy on the scenario's deployment for ``sim.duration_s``; the ``sim
    --json`` object (written as each policy ends: nothing measured is lost)."""
    system = get_system("dsd")
    for p in policies:
        system.check_policy(p, where="--policy")
    problem = dsd_problem_of(sc)
    t_wall = time.perf_counter()
    if out_dir is not None:
        (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    results: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        return {
            "mode": "sim",
            "system": "dsd",
            "scenario": sc.name,
            "drafters": len(problem.drafters),
            "verifiers": len(problem.verifiers),
            "router": problem.router,
            "batching": problem.batching,
            "execution": problem.mode,
            "compat": sc.dsd.compat,
            "seed": sc.sim.seed,
            "duration_s": sc.sim.duration_s,
            "results": dict(results),
            "wall_s": time.perf_counter() - t_wall,
        }

    for policy in policies:
        t_policy = time.perf_counter()
        make = get_policy(policy).plan(problem)
        run = simulate_dsd_policy(problem, make, duration_s=sc.sim.duration_s, seed=sc.sim.seed)
        results[policy] = run.summary() | {"wall_s": time.perf_counter() - t_policy}
        if progress is not None:
            progress(policy, sc.sim.duration_s)
        if out_dir is not None:
            write_atomic(out_dir / "summary.json", json.dumps(summary(), indent=2, default=float))
    return summary()
