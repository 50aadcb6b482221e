"""DSD's nodes: a drafter (its users' closed loop of conversations), the router and a verifier,
as trio shells over the simulation's cores (../shared/systems/dsd.md).

Layer: nodes (trio shells over ``nodes.core.dsd``, ``emu.planner.dsd`` and
``nodes.protocol.dsd``; model backends behind ``nodes.backends``' two interfaces).

- **Drafter.** One conversation at a time, from its dealt records (``emu.planner.dsd.workload``
  arrivals, on the node's clock from ``t0``): it waits for the record and for its user's
  think time after the last conversation, asks the router for the verifier (sticky), sends the
  prompt, then each round chooses a window (its window policy, every round or once a
  conversation by ``compat.gamma_granularity``), drafts (its backend; paced to the backend's
  time), sends the drafts and counts the verdict (``Conversation``, the same accounting as
  the simulation). A fused round (``dsd.mode`` fused: every round, at a window of 1; hybrid:
  a round at a window of 1) is drafted on the verifier's GPU in the simulation, with no round
  network: here its one draft is made by the drafter's backend (the same draft model) but
  not paced, the round goes through the router (unshaped: the cloud's ingress), and the
  verifier's batch pays the fused drafting pass (``VerifierSpec.fused_draft``). The
  ``Situation`` AWC reads is the drafter's own: the pair's round times, and the verifier's
  queue as its last answer reported it.
- **Router.** ``DsdRouter`` on the verifiers' ``QueueReport``s (a busy batch's time left
  counts down from its report); it relays fused rounds and their verdicts.
- **Verifier.** ``TargetQueue`` makes each batch; the batch's prefills and rounds go through
  the backend (one prefill pass, one verify pass), and the batch takes the compute model's
  time (``VerifierSpec.compute.batch_ms``, as in the simulation, plus the fused drafts'
  pass; the backend's own time is what the host took, and a batch that took longer is an
  overrun of the pacer).

The global phase lanes of the simulation (``nodes.core.dsd.Lane``, in front of every
verifier) are not here: drafters send to their verifiers directly. A stream is written by one
writer task, so a slow or gone peer never blocks a node; a peer that breaks its connection or
its protocol costs only its own conversations.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import trio

from emu.errors import RemoteProtocolError
from emu.planner.dsd.acceptance import PositionCurve, sample_accepted
from emu.planner.dsd.awc import HISTORY
from emu.planner.dsd.compute import Compat, Work
from emu.planner.dsd.model import DsdProblem, VerifierSpec
from emu.planner.dsd.routing import DsdRouter, VerifierState
from emu.planner.dsd.windows import WindowPolicy
from emu.planner.dsd.workload import Arrival
from nodes.backends import DraftBackend, DraftOut, VerifyBackend, VerifyItem, VerifyOut
from nodes.core.dsd import (
    Conversation,
    DrafterCore,
    DsdJob,
    QueueView,
    RoundTally,
    TargetQueue,
)
from nodes.pacing import Pacer
from nodes.protocol.dsd import (
    Bye,
    Done,
    DsdEvent,
    Frames,
    Prefill,
    Prefilled,
    QueueReport,
    Round,
    Route,
    Routed,
    Verdict,
)
from nodes.stream import Outbox, Sink, frame_events

__all__ = [
    "DrafterNode",
    "RouterNode",
    "SyntheticDsdDrafter",
    "SyntheticDsdVerifier",
    "VerifierNode",
    "check_sender",
    "conversation_key",
]

BATCH_HISTORY = 20  # a verifier's recent batches the router's work-left estimate averages
SYNTHETIC_VOCAB = 32000


def conversation_key(drafter: int, conversation: int) -> int:
    """A conversation's key at a verifier's backend (its ``user``)."""
    return drafter * 2**32 + conversation


# --- streams ------------------------------------------------------------------------------


# --- synthetic backends -------------------------------------------------------------------


class DraftCost(Protocol):
    """A drafter's compute model (``emu.planner.dsd.compute``): what drafting costs [ms]."""

    def draft_ms(self, gamma: int, context: int, compat: Compat) -> float: ...


@dataclass(slots=True)
class SyntheticDsdDrafter:
    """Random drafts in the drafter's compute model's time (synthetic: tests and runs
    without models)."""

    compute: DraftCost
    compat: Compat
    rng: np.random.Generator
    context: int = 0

    def start(self, prompt: Sequence[int]) -> None:
        self.context = len(prompt)

    def draft(self, n: int) -> DraftOut:
        tokens = tuple(int(t) for t in self.rng.integers(0, SYNTHETIC_VOCAB, size=n))
        return DraftOut(
            tokens=tokens, compute_ms=self.compute.draft_ms(n, self.context, self.compat)
        )

    def commit(self, accepted: int, token: int) -> None:
        self.context += accepted + 1


@dataclass(slots=True)
class SyntheticDsdVerifier:
    """Acceptance drawn from the position curve at the draft's context (as the simulation
    draws it), from a stream of each conversation's own (``stream(key)``); random tokens."""

    curve: PositionCurve
    stream: Callable[[int], np.random.Generator]
    _rngs: dict[int, np.random.Generator] = field(default_factory=dict)

    def _rng(self, user: int) -> np.random.Generator:
        if user not in self._rngs:
            self._rngs[user] = self.stream(user)
        return self._rngs[user]

    def prefill(self, prompts: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        return {u: int(self._rng(u).integers(0, SYNTHETIC_VOCAB)) for u in prompts}, 0.0

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        out = []
        for it in batch:
            rng = self._rng(it.user)
            p = self.curve.probabilities(it.base_len, len(it.tokens))
            accepted = sample_accepted(p, rng) if it.tokens else 0
            out.append(VerifyOut(accepted=accepted, token=int(rng.integers(0, SYNTHETIC_VOCAB))))
        return out, 0.0

    def drop(self, user: int) -> None:
        self._rngs.pop(user, None)


# --- the verifier -------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """A conversation a verifier holds: its drafter's connection and the context both sides
    hold."""

    box: Outbox[DsdEvent]
    context: int
    answer: int


class _PeerBreaks:
    """A node's count of broken peers. A stream that broke once the run's workload was over
    (``ends_at``, on the node's clock; None: not known) is a peer that left with a message
    unread (``dsd_left``); a protocol error, or a break before the end, is a fault."""

    faults: int
    ends_at: float | None
    sink: Sink

    def _peer_broke(self, exc: Exception) -> None:
        now = trio.current_time()
        over = self.ends_at is not None and now >= self.ends_at
        if over and isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
            self.sink({"ev": "dsd_left", "t": now, "why": str(exc)})
        else:
            self.faults += 1
            self.sink({"ev": "dsd_fault", "t": now, "why": str(exc)})


class VerifierNode(_PeerBreaks):
    """A verifier: serves its drafters' connections (``serve_drafter``), runs one batch at a
    time (``work``) and reports its queue to the router (``report_to``)."""

    def __init__(
        self,
        index: int,
        spec: VerifierSpec,
        backend: VerifyBackend,
        *,
        compat: Compat,
        order: str = "fifo",
        pacer: Pacer,
        sink: Sink,
    ) -> None:
        self.index, self.spec, self.backend = index, spec, backend
        self.compat, self.pacer, self.sink = compat, pacer, sink
        self.queue = TargetQueue(
            batch_size=spec.batch_size, window_s=spec.window_ms / 1e3, order=order
        )
        self.held: dict[int, _Held] = {}
        # each queued job's message and where its answer goes, by id(job)
        self.payload: dict[int, tuple[Prefill | Round, Outbox[DsdEvent]]] = {}
        self.utils: deque[float] = deque(maxlen=HISTORY)
        self.batches: deque[float] = deque(maxlen=BATCH_HISTORY)
        self.queue_wait_s: list[float] = []
        self.busy_ms = 0.0
        self.busy_until_s = 0.0
        self.prefills = 0
        self.batch_count = 0
        self.faults = 0
        self.ends_at: float | None = None  # when the run's workload ends (_PeerBreaks)
        self._router: Outbox[DsdEvent] | None = None
        self._wake = trio.Event()
        self._seq = 0

    def _report(self, now: float, *, idle: bool = False) -> None:
        if self._router is None:
            return
        self._router.post(
            QueueReport(
                verifier=self.index,
                enqueued=len(self.queue.jobs),
                busy=self.queue.busy,
                busy_left_ms=max(0.0, self.busy_until_s - now) * 1e3,
                mean_batch_ms=float(np.mean(self.batches)) if self.batches else 37.0,
                idle=idle,
            )
        )

    async def report_to(self, router: trio.abc.Stream) -> None:
        """Push the queue to the router as it changes, and take the fused rounds it relays,
        until the stream ends."""
        box = self._router = Outbox(router, Frames())
        self._report(trio.current_time(), idle=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run)
            try:
                async for ev in frame_events(router, Frames()):
                    if not (isinstance(ev, Round) and ev.fused):
                        raise RemoteProtocolError(f"{type(ev).__name__} from the router")
                    self._take(ev, box, set(), trio.current_time())
            except (RemoteProtocolError, trio.BrokenResourceError) as exc:
                self._peer_broke(exc)
            finally:
                box.close()

    async def serve_drafter(self, stream: trio.abc.Stream, *, drafter: int | None = None) -> None:
        """One drafter's connection until it ends; whatever it does costs only its own
        conversations. Lab mode binds it to the ``drafter`` it proved to be."""
        frames = Frames()
        box = Outbox(stream, Frames())
        mine: set[int] = set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run)
            try:
                async for ev in frame_events(stream, frames):
                    check_sender(ev, drafter=drafter)
                    self._take(ev, box, mine, trio.current_time())
            except (RemoteProtocolError, trio.BrokenResourceError) as exc:
                self._peer_broke(exc)
            finally:
                box.close()
                for key in mine:  # its conversations' state can go (a queued job is answered
                    self.held.pop(key, None)  # to no one)
                    self.backend.drop(key)

    def _take(self, ev: DsdEvent, box: Outbox[DsdEvent], mine: set[int], now: float) -> None:
        if isinstance(ev, Prefill):
            key = conversation_key(ev.drafter, ev.conversation)
            if key in self.held:
                raise RemoteProtocolError(f"conversation {ev.drafter}/{ev.conversation} twice")
            self.held[key] = _Held(box, len(ev.prompt), ev.answer)
            mine.add(key)
            job = DsdJob(conversation=str(key), phase="prefill", tokens=len(ev.prompt),
                         context=0, enqueued_s=now, target=self.spec.name)  # fmt: skip
        elif isinstance(ev, Round):
            key = conversation_key(ev.drafter, ev.conversation)
            held = self.held.get(key)
            if held is None or (not ev.fused and (held.box is not box or key not in mine)):
                raise RemoteProtocolError(f"a round of unknown conversation {key}")
            if ev.context != held.context:
                raise RemoteProtocolError(
                    f"round {ev.round} of {ev.drafter}/{ev.conversation} after {ev.context} "
                    f"tokens, where the verifier holds {held.context}"
                )
            job = DsdJob(conversation=str(key), phase="decode", tokens=len(ev.drafts) + 1,
                         context=ev.context, enqueued_s=now, target=self.spec.name,
                         fused=ev.fused)  # fmt: skip
        elif isinstance(ev, Bye):
            key = conversation_key(ev.drafter, ev.conversation)
            if key in mine:
                mine.discard(key)
                self.held.pop(key, None)
                self.backend.drop(key)
            return
        else:
            raise RemoteProtocolError(f"{type(ev).__name__} sent to a verifier")
        self._seq += 1
        job.seq = self._seq
        self.payload[id(job)] = (ev, box)
        self.queue.put(job)
        self._report(now)
        self._wake.set()

    async def work(self) -> None:
        """The verifier's server: its queue's next batch, until cancelled."""
        while True:
            now = trio.current_time()
            batch = self.queue.take(now)
            if batch is None:
                wake = self.queue.wake_s()
                with trio.move_on_at(wake if wake is not None else math.inf):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self._run(batch, now)

    async def _run(self, batch: list[DsdJob], now: float) -> None:
        self.utils.append(len(batch) / self.spec.batch_size)
        self.queue_wait_s += [now - j.enqueued_s for j in batch]
        work = [Work(j.tokens, j.context, prefill=j.phase == "prefill") for j in batch]
        took_ms = self.spec.compute.batch_ms(work, self.compat)
        fused = [Work(1, j.context) for j in batch if j.fused]
        if fused and self.spec.fused_draft is not None:  # the fused drafts first, on this GPU
            took_ms += self.spec.fused_draft.pass_ms(fused)
        self.busy_until_s = now + took_ms / 1e3
        self._report(now)
        msgs = [self.payload.pop(id(j)) for j in batch]
        live = [(j, m, box) for j, (m, box) in zip(batch, msgs, strict=True)
                if int(j.conversation) in self.held]  # fmt: skip
        t0 = time.perf_counter()
        prompts = {int(j.conversation): m.prompt for j, m, _ in live if isinstance(m, Prefill)}
        items = [VerifyItem(user=int(j.conversation), base_len=m.context, tokens=m.drafts)
                 for j, m, _ in live if isinstance(m, Round)]  # fmt: skip
        first, _ = self.backend.prefill(prompts) if prompts else ({}, 0.0)
        outs, _ = self.backend.verify(items) if items else ([], 0.0)
        await self.pacer.pace(took_ms, (time.perf_counter() - t0) * 1e3)
        end = trio.current_time()
        self.busy_ms += took_ms
        self.batches.append(took_ms)
        self.queue.finished(end)
        self.prefills += len(prompts)
        self.batch_count += 1
        queue_len = self.queue.queue_len
        pending = sum(j.tokens for j in self.queue.jobs)
        utils = tuple(self.utils)
        verdicts = iter(outs)
        for j, m, box in live:
            key = int(j.conversation)
            held = self.held.get(key)
            if held is None:  # its drafter left during the batch
                continue
            queued_ms = (now - j.enqueued_s) * 1e3
            if isinstance(m, Prefill):
                held.context += 1
                box.post(Prefilled(drafter=m.drafter, conversation=m.conversation,
                                        token=first[key], queue_len=queue_len,
                                        pending_tokens=pending, utils=utils,
                                        queued_ms=queued_ms, verify_ms=took_ms))  # fmt: skip
            else:
                out = next(verdicts)
                held.context += out.accepted + 1
                box.post(Verdict(drafter=m.drafter, conversation=m.conversation,
                                      round=m.round, accepted=out.accepted, token=out.token,
                                      queue_len=queue_len, pending_tokens=pending, utils=utils,
                                      queued_ms=queued_ms, verify_ms=took_ms))  # fmt: skip
        self.sink({"ev": "dsd_batch", "t": end, "size": len(batch), "ms": took_ms,
                   "prefills": len(prompts)})  # fmt: skip
        self._report(end, idle=not self.queue.jobs)

    def outcome(self, duration_s: float) -> dict[str, Any]:
        return {
            "queue_wait_s": self.queue_wait_s,
            "busy_s": self.busy_ms / 1e3,
            "utilisation": min(self.busy_ms / 1e3, duration_s) / duration_s,
            "prefills": self.prefills,
            "batches": self.batch_count,
            "faults": self.faults,
            "overruns": self.pacer.overruns,
        }


# --- the router ---------------------------------------------------------------------------


def check_sender(ev: DsdEvent, *, drafter: int | None = None, verifier: int | None = None) -> None:
    """Lab mode: a connection proved to be drafter ``drafter`` (or verifier ``verifier``)
    carries only that node's messages (RemoteProtocolError otherwise); None: not bound."""
    if drafter is not None and (
        not isinstance(ev, Route | Done | Prefill | Round | Bye) or ev.drafter != drafter
    ):
        raise RemoteProtocolError(f"{type(ev).__name__} on drafter {drafter}'s connection")
    if verifier is not None and (
        not isinstance(ev, QueueReport | Verdict)
        or (isinstance(ev, QueueReport) and ev.verifier != verifier)
    ):
        raise RemoteProtocolError(f"{type(ev).__name__} on verifier {verifier}'s connection")


class RouterNode(_PeerBreaks):
    """The router: each conversation's verifier (``DsdRouter``, sticky) from the verifiers'
    latest reports; drafters and verifiers alike connect to ``serve``."""

    def __init__(self, problem: DsdProblem, *, seed: int, sink: Sink) -> None:
        self.problem = problem
        self.router = DsdRouter(problem.router, seed=seed)
        self.names = [v.name for v in problem.verifiers]
        self.specs = {v.name: v for v in problem.verifiers}
        self.reports: dict[str, tuple[QueueReport, float]] = {}
        self.routed: dict[str, int] = dict.fromkeys(self.names, 0)
        self.sink = sink
        self.faults = 0
        self.ends_at: float | None = None  # when the run's workload ends (_PeerBreaks)
        self.relayed = 0
        self._routes: dict[tuple[int, int], int] = {}  # each routed conversation's verifier
        # each drafter's connection, and each verifier's
        self._drafters: dict[int, Outbox[DsdEvent]] = {}
        self._verifiers: dict[int, Outbox[DsdEvent]] = {}

    def state(self, name: str, now: float) -> VerifierState:
        spec = self.specs[name]
        seen = self.reports.get(name)
        if seen is None:
            return VerifierState(name=name, batch_size=spec.batch_size, weight=spec.weight)
        r, at = seen
        return VerifierState(
            name=name, enqueued=r.enqueued, busy=r.busy,
            busy_left_ms=max(0.0, r.busy_left_ms - (now - at) * 1e3),
            batch_size=spec.batch_size, mean_batch_ms=r.mean_batch_ms, weight=spec.weight,
        )  # fmt: skip

    def _relay(self, ev: DsdEvent, box: Outbox[DsdEvent]) -> bool:
        """Pass a fused round to its verifier, or a verdict to its drafter (True: relayed)."""
        if isinstance(ev, Round) and ev.fused:
            self._drafters[ev.drafter] = box
            k = self._routes.get((ev.drafter, ev.conversation))
            if k is None or k not in self._verifiers:
                raise RemoteProtocolError(f"a fused round of unrouted {ev.drafter}/"
                                          f"{ev.conversation}")  # fmt: skip
            self._verifiers[k].post(ev)
        elif isinstance(ev, Verdict):
            to = self._drafters.get(ev.drafter)
            if to is None:
                raise RemoteProtocolError(f"a verdict for unknown drafter {ev.drafter}")
            to.post(ev)
        else:
            return False
        self.relayed += 1
        return True

    def take(self, ev: DsdEvent, now: float) -> DsdEvent | None:
        """An event from a drafter or a verifier; the answer to send back (None: none)."""
        if isinstance(ev, QueueReport):
            if not ev.verifier < len(self.names):
                raise RemoteProtocolError(f"a report from unknown verifier {ev.verifier}")
            name = self.names[ev.verifier]
            self.reports[name] = (ev, now)
            if ev.idle:
                self.router.became_idle(name)
            return None
        if not isinstance(ev, (Route, Done)) or not ev.drafter < len(self.problem.drafters):
            raise RemoteProtocolError(f"{type(ev).__name__} sent to the router")
        drafter = self.problem.drafters[ev.drafter].name
        conv = f"{drafter}/{ev.conversation}"
        if isinstance(ev, Done):
            self.router.forget(conv)
            self._routes.pop((ev.drafter, ev.conversation), None)
            return None
        allowed = [self.state(link.verifier, now) for link in self.problem.reachable(drafter)]
        name = self.router.route(conv, drafter, allowed)
        self.routed[name] += 1
        self.sink({"ev": "dsd_route", "t": now, "conversation": conv, "verifier": name,
                   "queues": {s.name: s.queue_len for s in allowed}})  # fmt: skip
        k = self._routes[ev.drafter, ev.conversation] = self.names.index(name)
        return Routed(drafter=ev.drafter, conversation=ev.conversation, verifier=k)

    async def serve(
        self, stream: trio.abc.Stream, *, drafter: int | None = None, verifier: int | None = None
    ) -> None:
        """One connection until it ends; a peer that breaks the protocol loses only it. Lab
        mode binds a connection to the ``drafter`` or ``verifier`` it proved to be."""
        box = Outbox(stream, Frames())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run)
            try:
                async for ev in frame_events(stream, Frames()):
                    check_sender(ev, drafter=drafter, verifier=verifier)
                    if self._relay(ev, box):
                        continue
                    answer = self.take(ev, trio.current_time())  # checks who it is from
                    if isinstance(ev, QueueReport):
                        self._verifiers[ev.verifier] = box
                    elif isinstance(ev, (Route, Done)):
                        self._drafters[ev.drafter] = box
                    if answer is not None:
                        box.post(answer)
            except (RemoteProtocolError, trio.BrokenResourceError) as exc:
                self._peer_broke(exc)
            finally:
                box.close()


# --- the drafter --------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class DrafterRecord(RoundTally):
    """What a drafter measured: its rounds (the simulation's counters, ``RoundTally``), its
    finished conversations as ``Conversation`` fields, and each conversation's prompt and
    tokens (for the losslessness check)."""

    finished: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    routed: dict[str, int] = field(default_factory=dict)


class DrafterNode(_PeerBreaks):
    """A drafter serving its users' conversations in turn (see the module), from ``t0`` on its
    clock: ``arrivals`` are its dealt records, ``prompt(count, tokens)`` gives a
    conversation's prompt ids (``tokens``: the record's length), ``answer_cap`` caps an
    answer's tokens (a real model's context)."""

    def __init__(
        self,
        index: int,
        problem: DsdProblem,
        backend: DraftBackend,
        *,
        policy: WindowPolicy,
        arrivals: Sequence[Arrival],
        rng: np.random.Generator,
        prompt: Callable[[int, int], tuple[int, ...]],
        pacer: Pacer,
        sink: Sink,
        t0: float,
        answer_cap: int = 2**31 - 1,
    ) -> None:
        self.index, self.problem, self.spec = index, problem, problem.drafters[index]
        self.backend, self.rng = backend, rng
        self.arrivals = deque(arrivals)
        self.prompt, self.pacer, self.sink, self.t0 = prompt, pacer, sink, t0
        self.answer_cap = answer_cap
        self.verifiers = [v.name for v in problem.verifiers]
        self.batch_sizes = {v.name: v.batch_size for v in problem.verifiers}
        self.record = DrafterRecord()
        self.core = DrafterCore(self.spec, problem, policy, self.record)
        self.seen: dict[str, tuple[int, int, tuple[float, ...]]] = {}  # the queue last reported
        self._inbox_send, self._inbox = trio.open_memory_channel[DsdEvent](math.inf)
        self._boxes: dict[str, Outbox[DsdEvent]] = {}
        self.faults = 0
        self.ends_at: float | None = None  # run's end_s (_PeerBreaks)

    async def run(
        self, router: trio.abc.Stream, verifiers: Mapping[str, trio.abc.Stream], *, end_s: float
    ) -> DrafterRecord:
        """Serve conversations until ``end_s`` on the node's clock, over the router's stream
        and each reachable verifier's; what it measured (a conversation in flight at the end
        counts what it had)."""
        self.ends_at = end_s
        async with trio.open_nursery() as nursery:
            for name, stream in (("router", router), *verifiers.items()):
                box = self._boxes[name] = Outbox(stream, Frames())
                nursery.start_soon(box.run)
                nursery.start_soon(self._read, stream)
            with trio.move_on_at(end_s):
                await self._serve()
            for box in self._boxes.values():
                box.close()
            nursery.cancel_scope.cancel()
        return self.record

    async def _read(self, stream: trio.abc.Stream) -> None:
        """A peer's messages into the inbox; a peer that goes or breaks the protocol is
        recorded, and a conversation waiting on it waits until the end."""
        try:
            async for ev in frame_events(stream, Frames()):
                self._inbox_send.send_nowait(ev)
        except (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._peer_broke(exc)

    async def _answer(self, kind: type[DsdEvent], conversation: int) -> Any:
        async for ev in self._inbox:
            if isinstance(ev, kind) and getattr(ev, "conversation", None) == conversation:
                return ev
            raise RemoteProtocolError(f"{type(ev).__name__} where a {kind.__name__} was due")
        raise RemoteProtocolError("the drafter's inbox closed")

    async def _serve(self) -> None:
        ready = self.t0
        count = 0
        while self.arrivals:
            arrival = self.arrivals.popleft()
            await trio.sleep_until(max(ready, self.t0 + arrival.at_ms / 1e3))
            await self._conversation(count, arrival)
            count += 1
            ready = trio.current_time() + self.problem.think.sample_ms(self.rng) / 1e3

    async def _conversation(self, count: int, arrival: Arrival) -> None:
        p = self.problem
        ids = self.prompt(count, arrival.request.prompt_tokens)
        answer = min(arrival.request.answer_tokens, self.answer_cap)
        now = trio.current_time()
        conv = Conversation(prompt=len(ids), answer=answer, started_s=now,
                            accounting=p.compat.round_accounting)  # fmt: skip
        session: dict[str, Any] = {"prompt": list(ids), "tokens": []}
        self.record.sessions.append(session)
        self._boxes["router"].post(Route(drafter=self.index, conversation=count))
        routed: Routed = await self._answer(Routed, count)
        verifier = self.verifiers[routed.verifier]
        if verifier not in self._boxes:
            raise RemoteProtocolError(f"the router sent {self.spec.name} to {verifier}, "
                                      "which it does not reach")  # fmt: skip
        self.record.routed[verifier] = self.record.routed.get(verifier, 0) + 1
        box = self._boxes[verifier]
        box.post(Prefill(drafter=self.index, conversation=count, prompt=ids, answer=answer))
        pre: Prefilled = await self._answer(Prefilled, count)
        now = trio.current_time()
        self._saw(verifier, pre)
        self.core.prefilled(conv, now)
        self.backend.start(ids)
        self.backend.commit(0, pre.token)
        session["tokens"].append(pre.token)
        gamma = 0
        rounds = 0
        while not conv.done:
            gamma, fused, _ = self.core.window(conv, verifier, gamma, self._queue(verifier))
            n = conv.drafts(gamma)
            start = trio.current_time()
            drafts: tuple[int, ...] = ()
            if n:
                t = time.perf_counter()
                out = self.backend.draft(n)
                if not fused:  # a fused draft is the verifier's GPU's, in its batch's time
                    await self.pacer.pace(out.compute_ms, (time.perf_counter() - t) * 1e3)
                drafts = out.tokens
            rounds += 1
            via = self._boxes["router"] if fused else box
            via.post(Round(drafter=self.index, conversation=count, round=rounds,
                           context=conv.context, drafts=drafts, fused=fused))  # fmt: skip
            v: Verdict = await self._answer(Verdict, count)
            now = trio.current_time()
            self._saw(verifier, v)
            self._verdict(conv, verifier, drafts, v, round_s=now - start, now=now)
            session["tokens"] += [*drafts[: v.accepted], v.token]
        box.post(Bye(drafter=self.index, conversation=count))
        self._boxes["router"].post(Done(drafter=self.index, conversation=count))
        self.record.finished.append(asdict(conv))
        self.sink({"ev": "dsd_conversation", "t": trio.current_time(), "drafter": self.index,
                   "conversation": count, "verifier": verifier, "tokens": conv.tokens,
                   "ttft_ms": (conv.ttft_s or 0.0) * 1e3})  # fmt: skip

    def _saw(self, verifier: str, ev: Prefilled | Verdict) -> None:
        self.seen[verifier] = (ev.queue_len, ev.pending_tokens, ev.utils)

    def _verdict(self, conv: Conversation, verifier: str, drafts: tuple[int, ...], v: Verdict,
                 *, round_s: float, now: float) -> None:  # fmt: skip
        if v.accepted > len(drafts):
            raise RemoteProtocolError(f"{v.accepted} accepted of {len(drafts)} drafts")
        self.core.verdict(conv, verifier, drafted=len(drafts), accepted=v.accepted, now=now,
                          round_s=round_s)  # fmt: skip
        self.backend.commit(v.accepted, v.token)
        self.sink({"ev": "dsd_round", "t": now, "drafter": self.index, "verifier": verifier,
                   "drafted": len(drafts), "accepted": v.accepted, "round_ms": round_s * 1e3,
                   "queued_ms": v.queued_ms, "verify_ms": v.verify_ms})  # fmt: skip

    def _queue(self, verifier: str) -> QueueView:
        """What the verifier's last answer said of its queue."""
        queue_len, pending, utils = self.seen.get(verifier, (0, 0, ()))
        return QueueView(queue_len=queue_len, batch_size=self.batch_sizes[verifier], utils=utils,
                         pending_tokens=pending)  # fmt: skip
