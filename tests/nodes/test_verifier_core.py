"""The verifier's core without trio: events in (with ``now``), actions out. A small driver plays
the shell: it sends each event the core says on the member's pure Connection, and keeps the
records."""

from __future__ import annotations

from typing import Any

import pytest

from emu.planner import plan_for
from emu.planner.model import Problem
from nodes.core.guard import Limits
from nodes.core.runtime import RuntimeConfig
from nodes.core.schedule import PlanLengths
from nodes.core.verifier import (
    EdgeSettings,
    Evict,
    Forget,
    Member,
    Persist,
    Record,
    Refusal,
    Send,
    VerifierCore,
)
from nodes.protocol import (
    PROTOCOL_VERSION,
    Connection,
    Draft,
    ErrorCode,
    Hello,
    PlanUpdate,
    Resume,
    Role,
    SessionStart,
    Verdict,
    Welcome,
)
from tests.planner.conftest import paper_problem


class Shell:
    """What the trio shell does with the core's actions, minus the I/O."""

    def __init__(
        self, problem: Problem, tokens: dict[str, str] | None = None, **limits: Any
    ) -> None:
        self.core = VerifierCore(
            edge=problem.edge,
            priors=dict(enumerate(problem.users)),
            settings=EdgeSettings(
                expected_users=problem.size, limits=Limits(**limits), tokens=tokens or {}
            ),
            scheduler=RuntimeConfig().pipeline,
            lengths=PlanLengths(),
        )
        self.sent: list[tuple[int, Any]] = []
        self.evicted: list[tuple[int, ErrorCode | None]] = []
        self.forgotten: list[int] = []
        self.records: list[dict[str, Any]] = []
        self.journal: list[tuple[int, dict[str, Any]]] = []  # (events sent before it, entry)

    def apply(self) -> None:
        for a in self.core.actions():
            if isinstance(a, Persist):
                self.journal.append((len(self.sent), dict(a.entry)))
            elif isinstance(a, Send):
                a.member.conn.send(a.event)  # the wire's state advances as it would
                self.sent.append((a.member.uid, a.event))
            elif isinstance(a, Evict):
                self.evicted.append((a.member.uid, a.code))
            elif isinstance(a, Forget):
                self.forgotten.append(a.uid)
            elif isinstance(a, Record):
                self.records.append(dict(a.rec))

    def hello(
        self, uid: int, now: float, drafter: str = "", auth: str = "", proved: str | None = None
    ) -> Member:
        hello = Hello(version=PROTOCOL_VERSION, user_id=uid, drafter=drafter, auth=auth)
        conn = Connection(Role.EDGE)
        conn.receive_data(Connection(Role.USER).send(hello))
        assert isinstance(conn.next_event(), Hello)
        m = self.core.join(hello, conn, now, proved)
        self.apply()
        return m

    def start(self, m: Member, prompt: tuple[int, ...] = (1, 2, 3), resumes: int = 0) -> None:
        ev = SessionStart(session=0, prompt=prompt, max_new_tokens=0, resumes=resumes)
        m.conn.receive_data(_user_bytes(m, ev))
        assert m.conn.next_event() == ev
        self.core.session(m, ev)

    def plan(self, now: float, policy: str = "dipsd") -> None:
        asked = self.core.planning("start")
        assert asked is not None
        self.core.planned(asked, plan_for(policy, asked.problem, asked.previous), now)
        self.apply()


def _user_bytes(m: Member, ev: Any) -> bytes:
    """``ev`` framed as the user would send it (the edge's Connection checks it)."""
    import msgpack

    from nodes.protocol.connection import _HEADER

    body = msgpack.packb(ev.to_wire(), use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def test_a_hello_is_welcomed_and_an_unknown_id_refused() -> None:
    s = Shell(paper_problem(2))
    s.hello(0, now=1.0)
    assert [(u, type(e)) for u, e in s.sent] == [(0, Welcome)]
    assert s.records == [{"ev": "join", "t": 1.0, "user": 0}]
    with pytest.raises(Refusal) as info:
        s.hello(7, now=1.0)
    assert info.value.code == ErrorCode.AUTH


def test_a_user_may_only_speak_for_itself_by_certificate_or_token() -> None:
    """Over mutual TLS the connection proved a node: its Hello may claim that node's id only.
    With tokens, each id's own token, and no other, admits it. Nothing joins on a refusal."""
    s = Shell(paper_problem(2))
    with pytest.raises(Refusal, match="node u1 may not claim user_id 0") as info:
        s.hello(0, now=1.0, proved="u1")
    assert info.value.code == ErrorCode.AUTH and not s.core.members
    s.hello(1, now=1.0, proved="u1")
    assert set(s.core.members) == {1}

    tokens = {"u0": "a" * 64, "u1": "b" * 64}
    s = Shell(paper_problem(2), tokens=tokens)
    for uid, auth in ((0, "b" * 64), (0, ""), (1, "a" * 64), (0, "a" * 63)):
        with pytest.raises(Refusal, match=f"auth refused for user_id {uid}") as info:
            s.hello(uid, now=1.0, auth=auth)
        assert info.value.code == ErrorCode.AUTH
    assert not s.core.members and not s.sent
    s.hello(0, now=1.0, auth="a" * 64)
    assert set(s.core.members) == {0}


def test_clients_of_one_drafter_are_each_a_member_that_names_it() -> None:
    """A drafter serving several clients dials once per client: each is its own member (its
    own session, draft and verdicts), and the verifier knows which drafter holds it."""
    s = Shell(paper_problem(3))
    a, b = s.hello(0, now=1.0, drafter="small0"), s.hello(1, now=1.0, drafter="small0")
    c = s.hello(2, now=1.0)
    assert (a.drafter, b.drafter, c.drafter) == ("small0", "small0", "")
    assert s.records == [
        {"ev": "join", "t": 1.0, "user": 0, "drafter": "small0"},
        {"ev": "join", "t": 1.0, "user": 1, "drafter": "small0"},
        {"ev": "join", "t": 1.0, "user": 2},
    ]


def test_a_live_id_is_kept_and_a_silent_one_replaced() -> None:
    s = Shell(paper_problem(2), heartbeat_ms=250.0)
    old = s.hello(1, now=0.0)
    with pytest.raises(Refusal) as info:
        s.hello(1, now=0.5)  # heard 0.5 s ago: four heartbeats are 1 s
    assert info.value.code == ErrorCode.OUT_OF_ORDER
    new = s.hello(1, now=2.0)
    assert s.evicted == [(1, ErrorCode.OUT_OF_ORDER)] and s.forgotten == [1]
    assert not old.alive and s.core.members[1] is new
    assert s.records[-2]["ev"] == "leave" and "reconnected" in s.records[-2]["why"]


def test_a_plan_then_prefill_then_a_batch_as_the_staged_pipeline_says() -> None:
    s = Shell(paper_problem(2))
    a, b = s.hello(0, now=0.0), s.hello(1, now=0.0)
    s.start(a)
    s.start(b)
    assert s.core.unplanned(s.core.new_sessions())
    s.plan(now=0.1)
    plan = s.core.plan
    assert plan is not None and s.core.dirty == ""
    assert [r["ev"] for r in s.records][-1] == "plan"
    updates = [e for _, e in s.sent if isinstance(e, PlanUpdate)]
    assert len(updates) == 2  # both past their handshake
    taken = s.core.take_prompts(s.core.new_sessions())
    assert [m.uid for m, _ in taken] == [0, 1] and s.core.new_sessions() == []
    s.core.prefilled([a, b], [11, 12], busy_s=0.05, now=0.2)
    s.apply()
    verdicts = [(u, e) for u, e in s.sent if isinstance(e, Verdict)]
    assert [(u, v.round, v.token, v.next_draft_len) for u, v in verdicts] == [
        (0, 0, 11, plan.draft_len[0]),
        (1, 0, 12, plan.draft_len[1]),
    ]
    # The first batch waits for its members' drafts, until its deadline.
    slot, users = s.core.cycle()[0]
    members = s.core.batch(users)
    deadline = s.core.deadline(members)
    assert deadline is not None and deadline > 0.2
    assert s.core.waiting_on(members)
    first = members[0]
    draft = Draft(round=1, base_len=4, tokens=(5,) * first.draft_len, draft_ms=30.0)
    first.conn.receive_data(_user_bytes(first, draft))
    first.conn.next_event()
    s.core.drafted(first, draft, now=0.3)
    ready, late = s.core.close(slot, members, waited_s=0.1, now=0.3)
    assert ready == [first] and late == [m.uid for m in members[1:]]
    s.core.verified(slot, ready, [first.draft_len], [(2, 9)], verify_ms=80.0, busy_s=0.08,
                    waited_s=0.1, late=late, now=0.4)  # fmt: skip
    s.apply()
    batch = s.records[-1]
    assert batch["ev"] == "batch" and batch["users"] == [first.uid] and batch["late"] == late
    last = s.sent[-1]
    assert last[0] == first.uid and isinstance(last[1], Verdict) and last[1].accepted == 2
    assert first.generated == 1 + 3 and s.core.stats.batches == 1


def test_a_leave_forgets_the_user_and_dirties_the_plan() -> None:
    s = Shell(paper_problem(2))
    a = s.hello(0, now=0.0)
    s.hello(1, now=0.0)
    s.plan(now=0.1)
    s.core.leave(a, "", now=1.0)
    s.apply()
    assert s.forgotten == [0] and 0 not in s.core.members
    assert s.core.dirty == "user 0 left"
    asked = s.core.planning(s.core.dirty)
    assert asked is not None and asked.uids == (1,) and asked.previous is None


def test_a_plan_that_cannot_be_made_refuses_whom_the_last_plan_does_not_cover() -> None:
    s = Shell(paper_problem(2))
    s.hello(0, now=0.0)
    s.core.plan_failed(ValueError("too little memory"), now=0.5)
    s.apply()
    assert s.evicted == [(0, ErrorCode.OVERLOADED)]
    assert [r["ev"] for r in s.records][-3:] == ["plan_failed", "refused", "leave"]


def test_every_verdict_is_journalled_before_it_is_sent_and_handed_back_on_a_rejoin() -> None:
    """The ledger: a session's prompt when it opens, then each verdict's committed tokens, each
    entry before the verdict it records is sent; a user that comes back (a new process, or
    after an edge restart from the journal) is told, and handed its session."""
    from nodes.core.ledger import SessionLedger

    s = Shell(paper_problem(2))
    a = s.hello(0, now=0.0)
    s.start(a, prompt=(1, 2, 3))
    s.apply()
    s.plan(now=0.1)
    s.core.take_prompts(s.core.new_sessions())
    s.core.prefilled([a], [11], busy_s=0.05, now=0.2)
    s.apply()
    slot, _ = s.core.cycle()[0]
    draft = Draft(round=1, base_len=4, tokens=(5, 6, 7)[: a.draft_len], draft_ms=30.0)
    a.conn.receive_data(_user_bytes(a, draft))
    a.conn.next_event()
    s.core.drafted(a, draft, now=0.3)
    s.core.verified(slot, [a], [a.draft_len], [(1, 9)], verify_ms=80.0, busy_s=0.08,
                    waited_s=0.0, late=[], now=0.4)  # fmt: skip
    s.apply()
    verdict_at = [k for k, (_, e) in enumerate(s.sent) if isinstance(e, Verdict)]
    entries = [e for _, e in s.journal]
    assert entries == [
        {"u": 0, "s": 0, "prompt": [1, 2, 3], "committed": []},
        {"u": 0, "add": [11]},
        {"u": 0, "add": [5, 9]},
    ]
    # Each "add" was written while only the events before its verdict had been sent.
    assert [n for n, e in s.journal if "add" in e] == verdict_at
    # The user comes back (its process restarted): Welcome says a Resume follows, and it does.
    s.core.leave(a, "user 0 left", now=0.5)
    s.apply()
    s.sent.clear()
    s.hello(0, now=0.6)
    welcome, resume = (e for _, e in s.sent)
    assert isinstance(welcome, Welcome) and welcome.resume
    assert resume == Resume(session=0, prompt=(1, 2, 3), committed=(11, 5, 9))
    # An edge restarted with the journal holds the same.
    replayed = SessionLedger.replay(entries)
    assert replayed.held[0].committed == [11, 5, 9] and replayed.held[0].prompt == (1, 2, 3)
    # The resumed session's SessionStart carries what it committed: the ledger keeps both parts.
    b = s.core.members[0]
    s.start(b, prompt=(1, 2, 3, 11, 5, 9), resumes=3)
    s.apply()
    assert s.journal[-1][1] == {"u": 0, "s": 0, "prompt": [1, 2, 3], "committed": [11, 5, 9]}
