"""The edge node: accepts users, runs the plan as a staged pipeline, verifies, re-plans.

Layer: nodes (trio shell over ``nodes.protocol``; the planner is called, never imported by the
protocol). The same code serves in-memory links in the simulation and TCP in emulation.

What to verify together, when, and how long each user drafts next are the pure core's
(``nodes.core``): a batch scheduler (DiP-SD's staged pipeline by default: the plan's batches one
after another in its cyclic order, each as ONE verify call while the other batches' users draft,
closing when its last member's draft arrives or at a deadline from the plan; a member that
misses it is late, counted, and verified in its next slot), a length controller (the plan's
lengths by default) and the re-plan rule. A user at length 0 needs no draft: the edge decodes
for it alone. This shell does the waiting, the verifying and the talking.

Faults stay local, whatever a peer sends: every exception from one connection's handling is
caught at that connection's boundary, counted and recorded, and the connection is closed with an
Error; a user that leaves (or falls silent past ``idle_timeout_s``) is dropped from its batch
and the plan is recomputed; the others go on. Each peer is held to the ``Limits``
(``nodes.core.guard``): a handshake deadline, heartbeats, frame sizes, a message rate, a cap on
connections, and no user id the scenario does not name unless it allows joins.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from emu.planner.cost import Plan, evaluate
from emu.planner.model import Edge, Problem, User
from nodes.backends import VerifyBackend, VerifyItem
from nodes.core.estimate import UserEstimate
from nodes.core.guard import Limits, RateLimit, check_device
from nodes.core.replan import (
    believed,
    edge_plan,
    in_force,
    per_token,
    planning_problem,
)
from nodes.core.runtime import RuntimeConfig
from nodes.core.schedule import (
    BatchScheduler,
    EdgePlan,
    LengthController,
    PlanLengths,
    Waiting,
)
from nodes.pacing import Pacer
from nodes.protocol import (
    PROTOCOL_VERSION,
    Bye,
    Closed,
    Connection,
    Draft,
    Error,
    ErrorCode,
    Event,
    Heartbeat,
    Hello,
    PlanUpdate,
    Role,
    SessionStart,
    State,
    Verdict,
    Welcome,
)
from nodes.stream import Sink, receive_event

__all__ = ["EdgeNode", "EdgeSettings"]

# The planner gets the problem and, when the users are the same, the plan in force (in the
# problem's user indices), from which it may re-plan warm.
Planner = Callable[[Problem, Plan | None], Plan]
_T = TypeVar("_T")
_R = TypeVar("_R")
_OUTBOX = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeSettings:
    max_draft_len: int = 20
    initial_draft_len: int = 7
    fixed_draft_len: int = 7
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # deadlines, re-planning
    expected_users: int = 0  # wait for this many sessions before the first plan
    join_window_s: float = 1.0  # ... but no longer than this after the first
    auth: str = ""  # required Hello.auth ("" accepts any)
    limits: Limits = field(default_factory=Limits)


@dataclass(slots=True)
class _Member:
    uid: int
    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    est: UserEstimate = field(default_factory=UserEstimate)
    prompt: tuple[int, ...] | None = None
    max_new_tokens: int = 0
    generated: int = 0
    decoding: bool = False
    draft: Draft | None = None
    draft_len: int = 0  # what the last verdict asked for
    last_verdict: float = 0.0
    heard: float = 0.0  # when its connection last carried a message
    alive: bool = True


@dataclass(slots=True)
class _Peer:
    """One connection, joined or not."""

    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    rate: RateLimit
    member: _Member | None = None
    opened: float = 0.0
    left_because: str = ""


class _Refusal(Exception):
    """The edge refuses a peer (a limit, an unknown id): the connection closes with ``code``."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class EdgeStats:
    cycles: int = 0
    batches: int = 0
    late: int = 0
    replans: int = 0
    protocol_errors: int = 0
    connection_errors: int = 0  # exceptions from one connection's handling, caught there
    refused: int = 0  # peers closed for a limit, an unknown id or a timeout
    joined: int = 0
    left: int = 0


class EdgeNode:
    def __init__(
        self,
        *,
        edge: Edge,
        verifier: VerifyBackend,
        planner: Planner,
        priors: Mapping[int, User],
        settings: EdgeSettings,
        sink: Sink,
        pacer: Pacer | None = None,
        solve_in_thread: bool = False,
        scheduler: BatchScheduler | None = None,
        lengths: LengthController | None = None,
    ) -> None:
        self.edge = edge
        self.verifier = verifier
        self.planner = planner
        self.scheduler = scheduler or settings.runtime.pipeline
        self.lengths = lengths or PlanLengths()
        self.priors = dict(priors)
        self.cfg = settings
        self.sink = sink
        self.pacer = pacer or Pacer()
        self.solve_in_thread = solve_in_thread
        self.members: dict[int, _Member] = {}
        self.plan: EdgePlan | None = None
        self.stats = EdgeStats()
        self._dirty = "start"
        self._arrival = trio.Event()
        self._plan_basis: dict[int, User] = {}
        self._connections = 0
        self._joiners: dict[int, None] = {}  # ids the scenario does not name, oldest first

    # --- connections ---------------------------------------------------------------------
    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one peer's connection until it ends. Never raises for anything the peer
        does: the worst outcome is this connection closed with an Error."""
        lim = self.cfg.limits
        conn = Connection(
            Role.EDGE,
            max_frame=lim.max_session_frame_bytes,
            max_small_frame=lim.max_frame_bytes,
            max_draft_len=self.cfg.max_draft_len,
        )
        send, recv = trio.open_memory_channel[bytes](_OUTBOX)
        peer = _Peer(conn=conn, outbox=send, rate=RateLimit(lim.messages_per_s))
        pinger = trio.CancelScope()
        stopping = False
        self._connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, recv)
                try:
                    if self._connections > lim.connections(self.cfg.expected_users):
                        raise _Refusal(
                            f"{self._connections - 1} connections open, the most allowed",
                            ErrorCode.OVERLOADED,
                        )
                    nursery.start_soon(self._heartbeats, peer, pinger)
                    await self._read(stream, peer)
                except PeerGone:
                    pass
                except trio.Cancelled:
                    stopping = True  # the edge is stopping: nobody leaves a plan
                    raise
                except RemoteProtocolError as exc:
                    self._fault(peer, ErrorCode(exc.code), exc, "protocol_error")
                except _Refusal as exc:
                    self._fault(peer, exc.code, exc, "refused")
                except Exception as exc:  # the boundary: one peer, never the edge
                    self._fault(peer, ErrorCode.INTERNAL, exc, "connection_error")
                finally:
                    pinger.cancel()
                    if peer.member is not None and not stopping:
                        self._leave(peer.member, peer.left_because)
                    send.close()
                    nursery.cancel_scope.deadline = trio.current_time() + 1.0  # the Error's way out
        finally:
            self._connections -= 1

    def _fault(self, peer: _Peer, code: ErrorCode, exc: Exception, ev: str) -> None:
        """Record why a peer is being closed (``ev``: protocol_error, refused, or
        connection_error for an exception of the edge's own) and tell it, if it listens. A
        joined member's silence is recorded as its leave (``user N silent``), once."""
        said = (str(exc) or type(exc).__name__)[:1000]
        if code is ErrorCode.TIMEOUT and peer.member is not None:
            peer.left_because = f"user {peer.member.uid} silent"
            _post(peer.outbox, peer.conn, Error(error=int(code), message=said))
            return
        if ev == "protocol_error":
            self.stats.protocol_errors += 1
        elif ev == "refused":
            self.stats.refused += 1
        else:
            self.stats.connection_errors += 1
        uid = peer.member.uid if peer.member is not None else None
        self.sink(
            {"ev": ev, "t": trio.current_time(), "user": uid, "code": int(code), "error": said}
        )
        _post(peer.outbox, peer.conn, Error(error=int(code), message=said))

    async def _writer(
        self, stream: trio.abc.Stream, recv: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        try:
            async with recv:
                async for data in recv:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()

    async def _heartbeats(self, peer: _Peer, scope: trio.CancelScope) -> None:
        """Tell a joined peer the edge is alive when it has heard nothing else from the edge
        for ``heartbeat_ms`` (its own liveness check: a silent edge is a broken link it
        should redial). A user being verified gets verdicts, and no heartbeat."""
        every = self.cfg.limits.heartbeat_ms / 1e3
        beat = -math.inf

        def due(m: _Member | None) -> float:
            return (max(beat, m.last_verdict) if m is not None else trio.current_time()) + every

        with scope:
            while every > 0:
                await trio.sleep_until(due(peer.member))
                m = peer.member
                if m is not None and not m.alive:
                    return  # it left the plan: its connection is closing
                # The same expression as the wake-up time: a float that rounds the other way
                # must not spin this loop at one instant of a virtual clock.
                now = trio.current_time()
                if m is not None and now >= due(m):
                    beat = now
                    sent = min(max(0.0, now * 1e3), 1e15)
                    if not _post(peer.outbox, peer.conn, Heartbeat(sent_ms=sent)):
                        return

    async def _next(self, stream: trio.abc.Stream, peer: _Peer) -> Event:
        """The peer's next event, within its message rate and its deadline: the handshake's
        until it has joined, then the idle timeout whenever the edge waits on it."""
        lim = self.cfg.limits
        while True:
            if peer.member is None:
                deadline = peer.opened + lim.handshake_timeout_s
            elif lim.idle_timeout_s > 0:
                # Look again every quarter of the timeout: what the edge waits on changes
                # as it sends (a verdict asks for a draft).
                deadline = trio.current_time() + lim.idle_timeout_s / 4
            else:
                deadline = math.inf
            with trio.move_on_at(deadline):
                ev = await receive_event(peer.conn, stream)
                if not peer.rate.allow(trio.current_time()):
                    raise _Refusal(
                        f"more than {lim.messages_per_s:g} messages a second",
                        ErrorCode.OVERLOADED,
                    )
                return ev
            if peer.member is None:
                raise _Refusal(f"no Hello within {lim.handshake_timeout_s:g} s", ErrorCode.TIMEOUT)
            if (silent := self._silent_for(peer.member)) >= lim.idle_timeout_s:
                raise _Refusal(
                    f"silent for {silent:.3g} s while the edge waited on it", ErrorCode.TIMEOUT
                )

    def _silent_for(self, m: _Member) -> float:
        """How long the edge has waited on ``m`` without a word: for its draft (the last
        verdict asked for one) or its next session; 0 while the edge owes it (its draft is
        in, or the edge decodes for it alone), since then nothing of it stalls a batch."""
        state, conn = m.conn.state, m.conn
        if state is State.READY or (state is State.DRAFTING and conn.draft_len > 0):
            return trio.current_time() - max(m.heard, m.last_verdict)
        return 0.0

    async def _read(self, stream: trio.abc.Stream, peer: _Peer) -> None:
        peer.opened = trio.current_time()
        while True:
            ev = await self._next(stream, peer)
            if isinstance(ev, Closed | Bye | Error):
                return
            member = peer.member
            if member is not None:
                member.heard = trio.current_time()
            if isinstance(ev, Hello):
                self._join(ev, peer)
            elif member is None:
                continue  # only Heartbeat can come before Hello; the table enforces the rest
            elif isinstance(ev, SessionStart):
                self._check_ids("prompt", ev.prompt)
                member.prompt, member.max_new_tokens = ev.prompt, ev.max_new_tokens
                member.generated, member.decoding = 0, False
                self._wake()
            elif isinstance(ev, Draft):
                self._check_ids("tokens", ev.tokens, *ev.top_ids)
                now = trio.current_time()
                gap_ms = (now - member.last_verdict) * 1e3
                member.est.observe_draft(len(ev.tokens), ev.draft_ms, gap_ms)
                member.draft = ev
                self._wake()
            elif isinstance(ev, Heartbeat):
                pass

    def _check_ids(self, name: str, *seqs: tuple[int, ...]) -> None:
        """Token ids within the verifier's vocabulary (where it has one): an id beyond it
        fails inside the model, on CUDA for every later batch too."""
        vocab = getattr(self.verifier, "vocab_size", None)
        if vocab is None:
            return
        for seq in seqs:
            if seq and max(seq) >= vocab:
                raise RemoteProtocolError(
                    f"{name}: token id {max(seq)} is outside the model's vocabulary of {vocab}",
                    code=ErrorCode.MALFORMED,
                )

    def _join(self, hello: Hello, peer: _Peer) -> None:
        """Admit a Hello's user, or refuse it (one line, naming what is wrong)."""
        lim, uid = self.cfg.limits, hello.user_id
        if self.cfg.auth and not hmac.compare_digest(hello.auth.encode(), self.cfg.auth.encode()):
            raise _Refusal("auth refused", ErrorCode.AUTH)
        device = check_device(hello.device)
        if (old := self.members.get(uid)) is not None:
            # The same user on a new connection, redialled before this edge saw its old link
            # die: the new one replaces the old once that has been silent for four heartbeats
            # (a live user cannot be pushed out by someone claiming its id).
            quiet = trio.current_time() - old.heard
            if quiet < 4 * max(lim.heartbeat_ms, 250.0) / 1e3:
                raise _Refusal(
                    f"user_id {uid} is connected and was heard {quiet:.2f} s ago",
                    ErrorCode.OUT_OF_ORDER,
                )
            said = f"user_id {uid} connected again: this connection is replaced"
            self._evict(old, ErrorCode.OUT_OF_ORDER, said, f"user {uid} reconnected")
        if uid not in self.priors:
            if not lim.allow_joins:
                raise _Refusal(
                    f"user_id {uid} is not one of this scenario's users (limits.allow_joins)",
                    ErrorCode.AUTH,
                )
            self._remember(uid, _prior_from_hello(uid, device, self.priors))
        m = _Member(uid=uid, conn=peer.conn, outbox=peer.outbox, heard=trio.current_time())
        self.members[uid] = peer.member = m  # both at once: it leaves with its connection
        self.stats.joined += 1
        _post(
            peer.outbox,
            peer.conn,
            Welcome(
                version=PROTOCOL_VERSION,
                max_draft_len=self.cfg.max_draft_len,
                heartbeat_ms=lim.heartbeat_ms,
            ),
        )
        self.sink({"ev": "join", "t": trio.current_time(), "user": uid})

    def _remember(self, uid: int, prior: User) -> None:
        """Keep a joiner's prior; past ``max_known_ids`` joiners, forget the oldest absent."""
        self.priors[uid] = prior
        self._joiners[uid] = None
        while len(self._joiners) > self.cfg.limits.max_known_ids:
            old = next((u for u in self._joiners if u not in self.members and u != uid), None)
            if old is None:
                break
            del self._joiners[old]
            del self.priors[old]

    def _leave(self, m: _Member, why: str = "") -> None:
        if not m.alive:
            return
        m.alive = False
        self.members.pop(m.uid, None)
        self.verifier.drop(m.uid)
        self.stats.left += 1
        self._dirty = why or f"user {m.uid} left"
        self.sink({"ev": "leave", "t": trio.current_time(), "user": m.uid, "why": self._dirty})
        self._wake()

    def _evict(self, m: _Member, code: ErrorCode | None, said: str, why: str) -> None:
        """Drop ``m`` from the plan and close its connection, with an Error saying ``said``
        where there is a ``code`` (and the connection can still carry one)."""
        if code is not None:
            _post(m.outbox, m.conn, Error(error=int(code), message=said[:1000]))
        m.outbox.close()
        self._leave(m, why)

    def _wake(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    def _send(self, m: _Member, event: Event) -> None:
        if m.alive and not _post(m.outbox, m.conn, event):
            # The user stopped reading (or its connection cannot carry this): drop it and
            # close its connection rather than stall everyone.
            self.stats.connection_errors += 1
            self.sink({"ev": "connection_error", "t": trio.current_time(), "user": m.uid,
                       "code": int(ErrorCode.INTERNAL),
                       "error": f"could not send {type(event).__name__}"})  # fmt: skip
            self._evict(m, None, "", f"user {m.uid} not reading")

    # --- the pipeline ----------------------------------------------------------------------
    async def run(self) -> None:
        """The scheduler: prefill new sessions, then verify batches in the plan's order."""
        await self._await_first_users()
        while True:
            if not self.members:
                await self._arrival.wait()
                continue
            await self._prefill()
            if self._dirty or self.plan is None:
                await self._replan(self._dirty or "start")
            plan = self.plan
            if plan is None:
                continue  # no plan for anyone: they were refused
            progressed = False
            for slot, batch in self.scheduler.cycle(plan):
                await self._prefill()
                if self.plan is not plan:
                    break
                members = [self.members[u] for u in batch if u in self.members]
                members = [m for m in members if m.decoding]
                if members:
                    progressed |= await self._run_batch(slot, members)
            self.stats.cycles += 1
            estimates = {uid: m.est for uid, m in self.members.items()}
            reason = self.cfg.runtime.replan.reason(
                self.stats.cycles, estimates, self._plan_basis, self.priors
            )
            if reason:
                await self._replan(reason)
            if not progressed:
                # Nobody is decoding yet (all in prefill or between sessions): wait for news.
                with trio.move_on_after(0.05):
                    await self._arrival.wait()

    async def _await_first_users(self) -> None:
        want = self.cfg.expected_users
        while not any(m.prompt for m in self.members.values()):
            await self._arrival.wait()
        with trio.move_on_after(self.cfg.join_window_s):
            while sum(m.prompt is not None for m in self.members.values()) < want:
                await self._arrival.wait()

    async def _prefill(self) -> None:
        new = [m for m in self.members.values() if m.prompt is not None]
        if not new:
            return
        if self.plan is None or any(m.uid not in self.plan.draft_len for m in new):
            await self._replan(self._dirty or "join")
            new = [m for m in new if m.alive]  # those no plan could take were refused
            if not new or self.plan is None:
                return
        prompts = {m.uid: m.prompt for m in new if m.prompt is not None}
        for m in new:
            m.prompt = None
        t0, w0 = trio.current_time(), time.perf_counter()

        def prefill(batch: Sequence[tuple[int, Sequence[int]]]) -> tuple[list[int], float]:
            first, ms = self.verifier.prefill(dict(batch))
            return [first[u] for u, _ in batch], ms

        firsts, ms = self._isolating(prefill, new, list(prompts.items()))
        await self.pacer.pace(ms, (time.perf_counter() - w0) * 1e3)
        busy = trio.current_time() - t0
        assert self.plan is not None
        for m, first in zip(new, firsts, strict=True):
            if not m.alive or first is None:
                continue
            m.decoding = True
            m.generated = 1
            self._verdict(m, 0, first, slot=self.plan.slot_of(m.uid))
        self.sink(
            {
                "ev": "prefill",
                "t": trio.current_time(),
                "users": sorted(prompts),
                "busy_ms": busy * 1e3,
            }
        )

    def _isolating(
        self,
        step: Callable[[Sequence[_T]], tuple[list[_R], float]],
        members: Sequence[_Member],
        items: Sequence[_T],
    ) -> tuple[list[_R | None], float]:
        """``step`` on the batch; if it raises, on each member's item alone, and a member
        whose own item fails is closed (a token id outside the model's vocabulary, say):
        what one user sent must not stop the others' batch."""
        try:
            outs, ms = step(items)
            return list(outs), ms
        except Exception as exc:  # find whose item it was
            self.sink({"ev": "batch_failed", "t": trio.current_time(), "error": repr(exc)})
        results: list[_R | None] = []
        total = 0.0
        for m, item in zip(members, items, strict=True):
            try:
                (out,), ms = step([item])
            except Exception as exc:  # this member's own item
                self.stats.connection_errors += 1
                said = f"the edge could not process this user's input: {exc!r}"
                self.sink({"ev": "connection_error", "t": trio.current_time(), "user": m.uid,
                           "code": int(ErrorCode.MALFORMED), "error": said})  # fmt: skip
                self._evict(
                    m, ErrorCode.MALFORMED, said, f"user {m.uid} sent what the model cannot take"
                )
                results.append(None)
                continue
            results.append(out)
            total += ms
        return results, total

    def _verdict(self, m: _Member, accepted: int, token: int, *, slot: int) -> None:
        assert self.plan is not None
        nxt = self.lengths.next_length(self.plan, m.uid)
        done = m.max_new_tokens > 0 and m.generated >= m.max_new_tokens
        v = Verdict(
            round=0 if m.conn.state is State.PREFILL else m.conn.round + 1,
            accepted=accepted,
            token=token,
            next_draft_len=0 if done else nxt,
            slot=slot,
            done=done,
        )
        self._send(m, v)
        m.draft, m.draft_len = None, v.next_draft_len
        m.last_verdict = trio.current_time()
        if done:
            m.decoding = False

    async def _run_batch(self, slot: int, members: list[_Member]) -> bool:
        plan = self.plan
        assert plan is not None
        waiting = [m for m in members if m.draft_len > 0]
        waited = 0.0
        if waiting:
            deadline = self.scheduler.deadline(
                plan,
                [Waiting(m.uid, m.draft_len, m.last_verdict, m.draft is not None) for m in waiting],
            )
            t0 = trio.current_time()
            with trio.move_on_at(deadline):
                while any(m.draft is None and m.alive for m in waiting):
                    await self._arrival.wait()
            waited = trio.current_time() - t0
        ready = [m for m in members if m.alive and (m.draft_len == 0 or m.draft is not None)]
        late = [m.uid for m in members if m.alive and m.draft_len > 0 and m.draft is None]
        self.stats.late += len(late)
        if not ready:
            # Every member late: a slot with nothing to verify, the worst of bubbles.
            self.sink({"ev": "empty_slot", "t": trio.current_time(), "slot": slot,
                       "late": late, "waited_ms": waited * 1e3})  # fmt: skip
            return False
        items = [
            VerifyItem(
                user=m.uid,
                base_len=m.conn.position,
                tokens=m.draft.tokens if m.draft is not None else (),
                top_ids=m.draft.top_ids if m.draft is not None else (),
                top_probs=m.draft.top_probs if m.draft is not None else (),
            )
            for m in ready
        ]
        t0, w0 = trio.current_time(), time.perf_counter()
        results, ms = self._isolating(self.verifier.verify, ready, items)
        await self.pacer.pace(ms, (time.perf_counter() - w0) * 1e3)
        busy = trio.current_time() - t0
        self.stats.batches += 1
        for m, it, out in zip(ready, items, results, strict=True):
            if not m.alive or out is None:
                continue
            m.est.observe_round(len(it.tokens), out.accepted)
            m.generated += out.accepted + 1
            self._verdict(m, out.accepted, out.token, slot=slot)
        self.sink(
            {
                "ev": "batch",
                "t": trio.current_time(),
                "slot": slot,
                "users": [m.uid for m in ready],
                "late": late,
                "verify_ms": ms,
                "busy_ms": busy * 1e3,
                "waited_ms": waited * 1e3,
                "padded_len": max(len(it.tokens) for it in items),
            }
        )
        return True

    def _refuse_unplanned(self, why: str) -> None:
        """Close every member the plan in force does not cover (the edge cannot take them)."""
        planned = self.plan.draft_len if self.plan is not None else {}
        for m in [m for m in self.members.values() if m.uid not in planned]:
            self.stats.refused += 1
            self.sink({"ev": "refused", "t": trio.current_time(), "user": m.uid, "error": why})
            self._evict(m, ErrorCode.OVERLOADED, why, f"user {m.uid} refused")

    # --- estimation and re-planning ------------------------------------------------------
    def _believed(self, uid: int) -> User:
        m = self.members.get(uid)
        return believed(self.priors[uid], m.est if m is not None else None, self.cfg.runtime.replan)

    async def _solve(self, problem: Problem, previous: Plan | None) -> Plan:
        """The planner's answer. On a real clock (``solve_in_thread``) it runs in a worker
        thread, so that the connections go on meanwhile: a solve of 20-200 ms on the event
        loop held the verdicts just queued and stamped the drafts that arrived during it as
        that much later, which the edge then took for a slower link, re-planned for, and
        stalled again. On the simulation's virtual clock it runs in place, taking no time."""
        if not self.solve_in_thread:
            return self.planner(problem, previous)
        return await trio.to_thread.run_sync(self.planner, problem, previous)

    async def _replan(self, reason: str) -> None:
        uids = sorted(self.members)
        self._dirty = ""
        if not uids:
            return
        c = self.cfg
        try:
            users = tuple(self._believed(u) for u in uids)
            problem = planning_problem(
                users,
                self.edge,
                max_draft_len=c.max_draft_len,
                initial=c.initial_draft_len,
                fixed=c.fixed_draft_len,
            )
            plan = await self._solve(problem, in_force(self.plan, uids))
        except Exception as exc:  # a plan that cannot be made: the last one stays in force
            self.sink({"ev": "plan_failed", "t": trio.current_time(), "reason": str(exc)})
            self._refuse_unplanned(f"no plan can take them: {exc}")
            return
        pid = 0 if self.plan is None else self.plan.plan_id + 1
        self.plan = edge_plan(
            plan, uids, problem, evaluate(problem, plan), plan_id=pid, reason=reason
        )
        self._plan_basis = dict(zip(uids, users, strict=True))
        self.stats.replans += pid > 0
        self.sink(
            {
                "ev": "plan",
                "t": trio.current_time(),
                "plan_id": pid,
                "reason": reason,
                "batches": [list(b) for b in self.plan.batches],
                "draft_len": [self.plan.draft_len[u] for u in uids],
                "users": uids,
                "cycle_ms": self.plan.cycle_ms,
                "predicted_tok_s": self.plan.predicted_tok_s,
            }
        )
        for k, b in enumerate(self.plan.batches):
            for u in b:
                m = self.members.get(u)
                if m is not None and m.conn.state not in (State.START, State.GREETED):
                    self._send(
                        m,
                        PlanUpdate(
                            plan_id=pid,
                            slot=k,
                            slots=len(self.plan.batches),
                            draft_len=self.plan.draft_len[u],
                            cycle_ms=self.plan.cycle_ms
                            if math.isfinite(self.plan.cycle_ms)
                            else 0.0,
                        ),
                    )


def _post(send: trio.MemorySendChannel[bytes], conn: Connection, event: Event) -> bool:
    """Queue an event's bytes for the writer; False if the user is not keeping up or its
    connection can no longer carry it (closed, or failed)."""
    try:
        send.send_nowait(conn.send(event))
    except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
        return False
    except LocalProtocolError:
        return False
    return True


def _prior_from_hello(uid: int, device: Mapping[str, float], priors: Mapping[int, User]) -> User:
    """A joiner the scenario does not name: what its (checked) device profile says, else the
    first known user's."""
    base = next(iter(priors.values()), None)
    if base is None:
        raise _Refusal(f"user_id {uid} is unknown and the edge has no prior", ErrorCode.AUTH)
    draft = device.get("draft_ms_per_token")
    return User(
        alpha=float(device.get("alpha", base.alpha)),
        prefix_len=int(device.get("prefix_len", base.prefix_len)),
        comm_ms=float(device.get("comm_ms", base.comm_ms)),
        draft=base.draft,
        device=per_token(draft, base.device),
        name=f"user{uid}",
    )
