"""The verifier's core, sans I/O: its users' sessions, the plan in force, what to verify next
and what to tell each user.

Layer: pure (nodes.core): no sockets, no clock, no models. Events come in as calls with ``now``
(a Hello, a session, a draft, a leave, a plan, a verify step's results); what the shell must do
comes out as actions, drained with ``actions()`` (send an event to a user, close a user with an
Error, forget a user's model state) and records for the run's sink. The trio shells own the
streams and the timers (``nodes.peers``: the connections) and the model backend and the planner's
thread (``nodes.edge``: the pipeline), and do what the core says; the same core would run under
any event loop.

What to verify together and when is the batch scheduler's (``nodes.core.schedule``), how long
each user drafts next the length controller's, and when to plan again the re-plan rule's
(``nodes.core.replan``); peers are held to the ``Limits`` (``nodes.core.guard``).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emu.errors import RemoteProtocolError
from emu.planner.cost import Plan, evaluate
from emu.planner.model import Edge, Problem, User
from nodes.core.estimate import UserEstimate
from nodes.core.guard import Limits, check_device
from nodes.core.ledger import SessionLedger
from nodes.core.replan import believed, edge_plan, in_force, per_token, planning_problem
from nodes.core.runtime import RuntimeConfig
from nodes.core.schedule import BatchScheduler, EdgePlan, LengthController, Waiting
from nodes.protocol import (
    PROTOCOL_VERSION,
    Connection,
    Draft,
    ErrorCode,
    Event,
    Hello,
    PlanUpdate,
    Resume,
    SessionStart,
    State,
    Verdict,
    Welcome,
)

__all__ = [
    "EdgeSettings",
    "EdgeStats",
    "Evict",
    "Forget",
    "Member",
    "Persist",
    "Record",
    "Refusal",
    "Send",
    "VerifierCore",
    "user_node",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeSettings:
    max_draft_len: int = 20
    initial_draft_len: int = 7
    fixed_draft_len: int = 7
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # deadlines, re-planning
    expected_users: int = 0  # wait for this many sessions before the first plan
    join_window_s: float = 1.0  # ... but no longer than this after the first
    # Each node's pre-shared token, by node name (u0, u1, ...): a user's Hello.auth must be
    # its own (empty: no token asked, as over mutual TLS, whose certificate names the node).
    tokens: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``event`` to ``member`` (on its connection; nothing if it has left by then)."""

    member: Member
    event: Event


@dataclass(frozen=True, slots=True)
class Evict:
    """Close ``member``'s connection, with an Error saying ``said`` where there is a code."""

    member: Member
    code: ErrorCode | None
    said: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop user ``uid``'s state in the model backend (its KV cache)."""

    uid: int


@dataclass(frozen=True, slots=True)
class Record:
    rec: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Persist:
    """Write ``entry`` to the session journal durably, before any action after it (a verdict
    it records) is done (``nodes.core.ledger``)."""

    entry: Mapping[str, Any]


Action = Send | Evict | Forget | Record | Persist


class Refusal(Exception):
    """The verifier refuses a peer (a limit, an unknown id): its connection closes with
    ``code``."""

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


@dataclass(slots=True)
class Member:
    """A user in the verifier's care: its session, its estimates, its draft in hand."""

    uid: int
    conn: Connection  # the wire's state machine (pure): round, position, state
    drafter: str = ""  # the node drafting for it, when not the user itself (Hello.drafter)
    est: UserEstimate = field(default_factory=UserEstimate)
    prompt: tuple[int, ...] | None = None  # a session waiting for its prefill
    max_new_tokens: int = 0
    generated: int = 0
    decoding: bool = False
    draft: Draft | None = None
    draft_len: int = 0  # what the last verdict asked for
    last_verdict: float = 0.0
    heard: float = 0.0  # when its connection last carried a message
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Planning:
    """What the planner is asked: the problem over ``uids`` (as now believed), and the plan in
    force in its indices (None when the users changed)."""

    uids: tuple[int, ...]
    users: tuple[User, ...]
    problem: Problem
    previous: Plan | None
    reason: str


def user_node(uid: int) -> str:
    """The node name of user ``uid`` (the deployment's, the lab's certificates')."""
    return f"u{uid}"


class VerifierCore:
    def __init__(
        self,
        *,
        edge: Edge,
        priors: Mapping[int, User],
        settings: EdgeSettings,
        scheduler: BatchScheduler,
        lengths: LengthController,
        vocab: int | None = None,
        ledger: SessionLedger | None = None,
    ) -> None:
        self.edge = edge
        self.ledger = ledger if ledger is not None else SessionLedger()
        self.priors = dict(priors)
        self.cfg = settings
        self.scheduler = scheduler
        self.lengths = lengths
        self.vocab = vocab
        self.members: dict[int, Member] = {}
        self.plan: EdgePlan | None = None
        self.stats = EdgeStats()
        self.dirty = "start"  # why the plan must be made again ("" while it holds)
        self._plan_basis: dict[int, User] = {}
        self._joiners: dict[int, None] = {}  # ids the scenario does not name, oldest first
        self._out: list[Action] = []

    def actions(self) -> list[Action]:
        """What the shell must do now, in order (and forget)."""
        out, self._out = self._out, []
        return out

    def _record(self, rec: Mapping[str, Any]) -> None:
        self._out.append(Record(rec))

    # --- sessions ----------------------------------------------------------------------
    def join(self, hello: Hello, conn: Connection, now: float, proved: str | None = None) -> Member:
        """Admit a Hello's user (Refusal, naming what is wrong, if not). ``proved``: the node
        the connection proved to be before its Hello (its certificate's name, over mutual
        TLS); a user may only speak for itself."""
        lim, uid = self.cfg.limits, hello.user_id
        claimed = user_node(uid)
        if proved is not None and proved != claimed:
            raise Refusal(f"node {proved} may not claim user_id {uid}", ErrorCode.AUTH)
        if self.cfg.tokens:
            expected = self.cfg.tokens.get(claimed, "")
            # Constant time in the token's content: the comparison runs whatever the id.
            if not hmac.compare_digest(hello.auth.encode(), expected.encode()) or not expected:
                raise Refusal(f"auth refused for user_id {uid}", ErrorCode.AUTH)
        device = check_device(hello.device)
        if (old := self.members.get(uid)) is not None:
            # The same user on a new connection, redialled before this edge saw its old link
            # die: the new one replaces the old once that has been silent for four heartbeats
            # (a live user cannot be pushed out by someone claiming its id).
            quiet = now - old.heard
            if quiet < 4 * max(lim.heartbeat_ms, 250.0) / 1e3:
                raise Refusal(
                    f"user_id {uid} is connected and was heard {quiet:.2f} s ago",
                    ErrorCode.OUT_OF_ORDER,
                )
            said = f"user_id {uid} connected again: this connection is replaced"
            self.evict(old, ErrorCode.OUT_OF_ORDER, said, f"user {uid} reconnected", now)
        if uid not in self.priors:
            if not lim.allow_joins:
                raise Refusal(
                    f"user_id {uid} is not one of this scenario's users (limits.allow_joins)",
                    ErrorCode.AUTH,
                )
            self._remember(uid, _prior_from_hello(uid, device, self.priors))
        m = Member(uid=uid, conn=conn, drafter=hello.drafter, heard=now)
        self.members[uid] = m
        self.stats.joined += 1
        held = self.ledger.held.get(uid)
        welcome = Welcome(
            version=PROTOCOL_VERSION,
            max_draft_len=self.cfg.max_draft_len,
            heartbeat_ms=lim.heartbeat_ms,
            resume=held is not None,
        )
        self._out.append(Send(m, welcome))
        joined: dict[str, object] = {"ev": "join", "t": now, "user": uid}
        if hello.drafter:
            joined["drafter"] = hello.drafter
        if held is not None:  # its session as logged: a user that lost its own takes it back
            resume = Resume(session=held.session, prompt=held.prompt,
                            committed=tuple(held.committed))  # fmt: skip
            self._out.append(Send(m, resume))
            joined["resume"] = {"session": held.session, "committed": len(held.committed)}
        self._record(joined)
        return m

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

    def session(self, m: Member, ev: SessionStart) -> None:
        """A new session, or one resumed: its prompt waits for the next prefill."""
        self.check_ids("prompt", ev.prompt)
        m.prompt, m.max_new_tokens = ev.prompt, ev.max_new_tokens
        m.generated, m.decoding = 0, False
        cut = len(ev.prompt) - ev.resumes
        self._out.append(
            Persist(self.ledger.opened(m.uid, ev.session, ev.prompt[:cut], ev.prompt[cut:]))
        )

    def drafted(self, m: Member, ev: Draft, now: float) -> None:
        """A draft in: the member's estimates learn its device and link."""
        self.check_ids("tokens", ev.tokens, *ev.top_ids)
        gap_ms = (now - m.last_verdict) * 1e3
        m.est.observe_draft(len(ev.tokens), ev.draft_ms, gap_ms)
        m.draft = ev

    def check_ids(self, name: str, *seqs: tuple[int, ...]) -> None:
        """Token ids within the verifier's vocabulary (where it has one): an id beyond it
        fails inside the model, on CUDA for every later batch too."""
        if self.vocab is None:
            return
        for seq in seqs:
            if seq and max(seq) >= self.vocab:
                raise RemoteProtocolError(
                    f"{name}: token id {max(seq)} is outside the model's vocabulary of "
                    f"{self.vocab}",
                    code=ErrorCode.MALFORMED,
                )

    def silent_for(self, m: Member, now: float) -> float:
        """How long the verifier has waited on ``m`` without a word: for its draft (the last
        verdict asked for one) or its next session; 0 while the verifier owes it (its draft is
        in, or it decodes for it alone), since then nothing of it stalls a batch."""
        state, conn = m.conn.state, m.conn
        if state is State.READY or (state is State.DRAFTING and conn.draft_len > 0):
            return now - max(m.heard, m.last_verdict)
        return 0.0

    def leave(self, m: Member, why: str, now: float) -> None:
        """``m`` is gone (its connection ended, or it was closed): out of the plan."""
        if not m.alive:
            return
        m.alive = False
        self.members.pop(m.uid, None)
        self._out.append(Forget(m.uid))
        self.stats.left += 1
        self.dirty = why or f"user {m.uid} left"
        self._record({"ev": "leave", "t": now, "user": m.uid, "why": self.dirty})

    def evict(self, m: Member, code: ErrorCode | None, said: str, why: str, now: float) -> None:
        """Drop ``m`` from the plan and close its connection (with an Error where ``code``)."""
        self._out.append(Evict(m, code, said))
        self.leave(m, why, now)

    def send_failed(self, m: Member, event: Event, now: float) -> None:
        """``m`` stopped reading (or its connection cannot carry ``event``): drop it rather
        than stall everyone."""
        self.stats.connection_errors += 1
        self._record({"ev": "connection_error", "t": now, "user": m.uid,
                      "code": int(ErrorCode.INTERNAL),
                      "error": f"could not send {type(event).__name__}"})  # fmt: skip
        self.evict(m, None, "", f"user {m.uid} not reading", now)

    def item_failed(self, m: Member, exc: Exception, now: float) -> None:
        """``m``'s own input failed in the model (an id outside its vocabulary, say)."""
        self.stats.connection_errors += 1
        said = f"the edge could not process this user's input: {exc!r}"
        self._record({"ev": "connection_error", "t": now, "user": m.uid,
                      "code": int(ErrorCode.MALFORMED), "error": said})  # fmt: skip
        self.evict(
            m, ErrorCode.MALFORMED, said, f"user {m.uid} sent what the model cannot take", now
        )

    # --- the pipeline ------------------------------------------------------------------
    def new_sessions(self) -> list[Member]:
        """The members whose session waits for its prefill."""
        return [m for m in self.members.values() if m.prompt is not None]

    def unplanned(self, members: Sequence[Member]) -> bool:
        """Some of ``members`` are not in the plan in force (a plan must be made first)."""
        return self.plan is None or any(m.uid not in self.plan.draft_len for m in members)

    @staticmethod
    def take_prompts(members: Sequence[Member]) -> list[tuple[Member, tuple[int, ...]]]:
        """``members``' sessions to prefill now (their prompts handed over). Only these: a
        session that arrived since (during a solve) waits for a plan that has it."""
        taken = [(m, m.prompt) for m in members if m.alive and m.prompt is not None]
        for m, _ in taken:
            m.prompt = None
        return [(m, p) for m, p in taken if p is not None]

    def prefilled(
        self, members: Sequence[Member], firsts: Sequence[int | None], busy_s: float, now: float
    ) -> None:
        """Each prefilled session's first token, as round 0's verdict."""
        assert self.plan is not None
        for m, first in zip(members, firsts, strict=True):
            if not m.alive or first is None:
                continue
            m.decoding = True
            m.generated = 1
            self._verdict(m, 0, first, slot=self.plan.slot_of(m.uid), now=now)
        self._record({"ev": "prefill", "t": now, "users": sorted(m.uid for m in members),
                      "busy_ms": busy_s * 1e3})  # fmt: skip

    def cycle(self) -> Sequence[tuple[int, tuple[int, ...]]]:
        assert self.plan is not None
        return self.scheduler.cycle(self.plan)

    def batch(self, users: Sequence[int]) -> list[Member]:
        """The members of a batch that are decoding now."""
        members = [self.members[u] for u in users if u in self.members]
        return [m for m in members if m.decoding]

    def deadline(self, members: Sequence[Member]) -> float | None:
        """When the batch of ``members`` closes without the drafts not yet in (None: it
        waits for no draft)."""
        assert self.plan is not None
        waiting = [m for m in members if m.draft_len > 0]
        if not waiting:
            return None
        return self.scheduler.deadline(
            self.plan,
            [Waiting(m.uid, m.draft_len, m.last_verdict, m.draft is not None) for m in waiting],
        )

    @staticmethod
    def waiting_on(members: Sequence[Member]) -> bool:
        """Some live member's asked draft is not in yet."""
        return any(m.draft_len > 0 and m.draft is None and m.alive for m in members)

    def close(
        self, slot: int, members: Sequence[Member], waited_s: float, now: float
    ) -> tuple[list[Member], list[int]]:
        """The batch as it closes: the members ready to verify, and the late ones' ids (an
        empty slot is recorded)."""
        ready = [m for m in members if m.alive and (m.draft_len == 0 or m.draft is not None)]
        late = [m.uid for m in members if m.alive and m.draft_len > 0 and m.draft is None]
        self.stats.late += len(late)
        if not ready:
            # Every member late: a slot with nothing to verify, the worst of bubbles.
            self._record({"ev": "empty_slot", "t": now, "slot": slot, "late": late,
                          "waited_ms": waited_s * 1e3})  # fmt: skip
        return ready, late

    def verified(
        self,
        slot: int,
        ready: Sequence[Member],
        drafted: Sequence[int],
        results: Sequence[tuple[int, int] | None],
        *,
        verify_ms: float,
        busy_s: float,
        waited_s: float,
        late: Sequence[int],
        now: float,
    ) -> None:
        """A batch's results, (accepted, token) per member: the verdicts, and its record."""
        self.stats.batches += 1
        for m, n, out in zip(ready, drafted, results, strict=True):
            if not m.alive or out is None:
                continue
            accepted, token = out
            m.est.observe_round(n, accepted)
            m.generated += accepted + 1
            self._verdict(m, accepted, token, slot=slot, now=now)
        self._record({
            "ev": "batch",
            "t": now,
            "slot": slot,
            "users": [m.uid for m in ready],
            "late": list(late),
            "verify_ms": verify_ms,
            "busy_ms": busy_s * 1e3,
            "waited_ms": waited_s * 1e3,
            "padded_len": max(drafted),
        })  # fmt: skip

    def _verdict(self, m: Member, accepted: int, token: int, *, slot: int, now: float) -> None:
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
        # The journal first: a verdict never reaches a user before what it commits is logged.
        committed = (*(m.draft.tokens[:accepted] if m.draft is not None else ()), token)
        if (entry := self.ledger.added(m.uid, committed)) is not None:
            self._out.append(Persist(entry))
        if done and (entry := self.ledger.ended(m.uid)) is not None:
            self._out.append(Persist(entry))
        self._out.append(Send(m, v))
        m.draft, m.draft_len = None, v.next_draft_len
        m.last_verdict = now
        if done:
            m.decoding = False

    def end_cycle(self) -> str | None:
        """A cycle done: why to plan again, if the re-plan rule says so."""
        self.stats.cycles += 1
        estimates = {uid: m.est for uid, m in self.members.items()}
        return self.cfg.runtime.replan.reason(
            self.stats.cycles, estimates, self._plan_basis, self.priors
        )

    # --- planning ----------------------------------------------------------------------
    def planning(self, reason: str) -> Planning | None:
        """What to ask the planner (None: nobody to plan for); the plan is then clean."""
        uids = tuple(sorted(self.members))
        self.dirty = ""
        if not uids:
            return None
        c = self.cfg
        users = tuple(believed(self.priors[u], self.members[u].est, c.runtime.replan) for u in uids)
        problem = planning_problem(
            users,
            self.edge,
            max_draft_len=c.max_draft_len,
            initial=c.initial_draft_len,
            fixed=c.fixed_draft_len,
        )
        return Planning(uids, users, problem, in_force(self.plan, list(uids)), reason)

    def planned(self, asked: Planning, plan: Plan, now: float) -> None:
        """The planner's answer: in force from now, and each member told of it."""
        pid = 0 if self.plan is None else self.plan.plan_id + 1
        uids, problem = list(asked.uids), asked.problem
        self.plan = edge_plan(
            plan, uids, problem, evaluate(problem, plan), plan_id=pid, reason=asked.reason
        )
        self._plan_basis = dict(zip(uids, asked.users, strict=True))
        self.stats.replans += pid > 0
        self._record({
            "ev": "plan",
            "t": now,
            "plan_id": pid,
            "reason": asked.reason,
            "batches": [list(b) for b in self.plan.batches],
            "draft_len": [self.plan.draft_len[u] for u in uids],
            "users": uids,
            "cycle_ms": self.plan.cycle_ms,
            "predicted_tok_s": self.plan.predicted_tok_s,
            "close_tolerance": list(self.plan.close_tolerance),
        })  # fmt: skip
        cycle_ms = self.plan.cycle_ms if math.isfinite(self.plan.cycle_ms) else 0.0
        for k, b in enumerate(self.plan.batches):
            for u in b:
                m = self.members.get(u)
                if m is not None and m.conn.state not in (State.START, State.GREETED):
                    update = PlanUpdate(
                        plan_id=pid,
                        slot=k,
                        slots=len(self.plan.batches),
                        draft_len=self.plan.draft_len[u],
                        cycle_ms=cycle_ms,
                    )
                    self._out.append(Send(m, update))

    def plan_failed(self, exc: Exception, now: float) -> None:
        """No plan could be made: the last one stays in force, and every member it does not
        cover is refused."""
        self._record({"ev": "plan_failed", "t": now, "reason": str(exc)})
        why = f"no plan can take them: {exc}"
        planned = self.plan.draft_len if self.plan is not None else {}
        for m in [m for m in self.members.values() if m.uid not in planned]:
            self.stats.refused += 1
            self._record({"ev": "refused", "t": now, "user": m.uid, "error": why})
            self.evict(m, ErrorCode.OVERLOADED, why, f"user {m.uid} refused", now)


def _prior_from_hello(uid: int, device: Mapping[str, float], priors: Mapping[int, User]) -> User:
    """A joiner the scenario does not name: what its (checked) device profile says, else the
    first known user's."""
    base = next(iter(priors.values()), None)
    if base is None:
        raise Refusal(f"user_id {uid} is unknown and the edge has no prior", ErrorCode.AUTH)
    draft = device.get("draft_ms_per_token")
    return User(
        alpha=float(device.get("alpha", base.alpha)),
        prefix_len=int(device.get("prefix_len", base.prefix_len)),
        comm_ms=float(device.get("comm_ms", base.comm_ms)),
        draft=base.draft,
        device=per_token(draft, base.device),
        name=f"user{uid}",
    )
