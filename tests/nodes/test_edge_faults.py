"""The edge survives any client: one test per way a connection once took it down, the limits,
liveness, and a fuzz of the edge's connection handling (not only the decoder).

Each test runs a live ``EdgeNode`` on trio's virtual clock with one honest synthetic user over a
1.5 ms link, attacks from other connections, and checks that the edge's tasks never raised (they
share the test's nursery), that the attacker got the Error it should, and that the honest user
kept committing after the attack.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel_models.link import LinkState
from emu.errors import PeerGone
from emu.planner import Plan, Problem, plan_for
from emu.runners.simlink import link_pair
from nodes.backends import SyntheticDrafter, SyntheticVerifier
from nodes.core.guard import Limits
from nodes.edge import EdgeNode, EdgeSettings
from nodes.protocol import PROTOCOL_VERSION, ErrorCode
from nodes.protocol.events import EVENT_TYPES
from nodes.user import UserNode
from tests.planner.conftest import paper_problem

HELLO, WELCOME, START, DRAFT, VERDICT, PLAN, BEAT, STATS, BYE, ERROR = range(1, 11)
ATTACK_AT = 3.0  # the honest user has been committing for this long when an attack starts


def frame(*fields: object) -> bytes:
    """One message as its bytes on the wire, whether or not the protocol allows it."""
    body = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def hello(uid: int, device: Mapping[str, object] | None = None) -> bytes:
    return frame(HELLO, PROTOCOL_VERSION, uid, dict(device or {}), "")


def session(prompt_len: int = 16) -> bytes:
    return frame(START, 0, [1] * prompt_len, 0)


def frames(data: bytes) -> list[list[Any]]:
    """Every whole message in ``data``, decoded."""
    out = []
    while len(data) >= 4:
        (n,) = struct.unpack_from(">I", data)
        if len(data) < 4 + n:
            break
        out.append(msgpack.unpackb(data[4 : 4 + n], raw=False))
        data = data[4 + n :]
    return out


def errors(got: bytes) -> list[int]:
    return [f[1] for f in frames(got) if f[0] == ERROR]


class Edge:
    """An edge that knows users 0..known-1, with the honest user 0 connected over a link."""

    def __init__(self, known: int = 2, **settings: Any) -> None:
        self.problem = paper_problem(known)
        self.records: list[Mapping[str, Any]] = []
        rngs = np.random.default_rng(11).spawn(4)
        p = self.problem
        limits = {k: settings.pop(k) for k in list(settings) if k in Limits.__dataclass_fields__}
        self.settings = EdgeSettings(expected_users=1, limits=Limits(**limits), **settings)
        self.node = EdgeNode(
            edge=p.edge,
            verifier=SyntheticVerifier(
                edge=p.edge,
                alpha=dict.fromkeys(range(known), 0.78),
                prefix_len=dict.fromkeys(range(known), 512),
                rng=rngs[0],
            ),
            planner=self._plan,
            priors=dict(enumerate(p.users)),
            settings=self.settings,
            sink=self.records.append,
        )
        self.user_rng, self.link_rng = rngs[1], rngs[2]
        self.attack_over = ATTACK_AT
        self.stopped_at = np.inf

    def _plan(self, problem: Problem, previous: Plan | None) -> Plan:
        return plan_for("dipsd", problem, previous)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.node.run)
        state = LinkState(delay_ms=1.5)
        u_end, e_end = link_pair(lambda _t: state, lambda _t: state, self.link_rng)
        nursery.start_soon(self.node.serve_stream, e_end)
        nursery.start_soon(self.honest().run, u_end)

    def honest(self) -> UserNode:
        def prompts() -> Iterator[tuple[int, ...]]:
            while True:
                yield (1,) * 512

        drafter = SyntheticDrafter.for_user(self.problem.users[0], self.user_rng)
        return UserNode(0, drafter, prompts(), sink=self.records.append)

    def attacker(self, nursery: trio.Nursery) -> trio.testing.MemoryStapledStream[Any]:
        """A fresh connection to the edge, as a client stream."""
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(self.node.serve_stream, server)
        return client

    def commits_after(self, t: float) -> int:
        return self.commits_between(t, np.inf)

    def commits_between(self, t0: float, t1: float) -> int:
        return sum(
            r["committed"]
            for r in self.records
            if r.get("ev") == "round" and r.get("user") == 0 and t0 < r["t"] <= t1
        )

    def last_t(self) -> float:
        return max(r["t"] for r in self.records if "t" in r)

    def planned_users(self) -> list[int]:
        return [r for r in self.records if r.get("ev") == "plan"][-1]["users"]  # type: ignore[no-any-return]


async def read_all(stream: trio.abc.Stream, seconds: float = 3.0) -> bytes:
    """What the edge sends until it closes the connection (or ``seconds`` pass)."""
    got = b""
    with trio.move_on_after(seconds):
        try:
            while chunk := await stream.receive_some():
                got += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return got


Attack = Callable[[Edge, trio.Nursery], Awaitable[bytes]]


async def under_attack(edge: Edge, attack: Attack, *, after: float = 4.0) -> bytes:
    """Run the edge and its honest user, attack at ATTACK_AT, go on for ``after`` seconds."""
    async with trio.open_nursery() as n:
        edge.start(n)
        await trio.sleep(ATTACK_AT)
        got = await attack(edge, n)
        edge.attack_over = trio.current_time()
        await trio.sleep(after)
        edge.stopped_at = trio.current_time()
        n.cancel_scope.cancel()
    return got


def still_serving(edge: Edge) -> None:
    """The honest user commits after the attack at no less than half its rate before it, and
    the edge plans for it alone."""
    since = edge.attack_over + 0.5
    before = edge.commits_between(1.0, ATTACK_AT) / (ATTACK_AT - 1.0)
    after = edge.commits_after(since) / (edge.last_t() - since)
    assert before > 5 and after > 0.5 * before
    assert edge.planned_users() == [0]


def sends(*messages: bytes, wait: float = 3.0) -> Attack:
    async def attack(edge: Edge, n: trio.Nursery) -> bytes:
        s = edge.attacker(n)
        for m in messages:
            try:
                await s.send_all(m)
            except trio.BrokenResourceError:
                break  # the edge has already closed it
            await trio.sleep(0.01)
        return await read_all(s, wait)

    return attack


# --- one test per crash found --------------------------------------------------------------


async def test_a_message_out_of_order_after_hello_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge()
    # A Draft right after the handshake: the member must leave the plan with its connection
    # (it once stayed, and the next PlanUpdate to it raised in the edge).
    got = await under_attack(edge, sends(hello(1), frame(DRAFT, 1, 17, [5, 6], 0.0, [], [])))
    assert errors(got) == [ErrorCode.OUT_OF_ORDER]
    still_serving(edge)
    assert 1 not in edge.node.members


async def test_a_draft_for_a_round_that_is_not_current_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge()
    got = await under_attack(
        edge, sends(hello(1), session(), frame(DRAFT, 9, 17, [5], 0.0, [], []))
    )
    assert errors(got) == [ErrorCode.OUT_OF_ORDER]
    still_serving(edge)


async def test_a_prompt_over_the_limit_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge()
    got = await under_attack(edge, sends(hello(1), session(40_000)))
    assert errors(got) == [ErrorCode.MALFORMED]
    still_serving(edge)


@pytest.mark.parametrize(
    "device",
    [{"prefix_len": -1}, {"prefix_len": 1e15}, {"alpha": 7.0}, {"comm_ms": -3}, {"warp": 1.0}],
)
async def test_a_device_profile_out_of_range_is_refused_at_hello(
    autojump_clock: trio.testing.MockClock, device: dict[str, float]
) -> None:
    edge = Edge(allow_joins=True)
    got = await under_attack(edge, sends(hello(5, device), session()))
    assert errors(got) == [ErrorCode.MALFORMED]
    still_serving(edge)
    assert not any(r.get("ev") == "plan_failed" for r in edge.records)


async def test_an_unknown_user_id_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    edge = Edge()
    got = await under_attack(
        edge, sends(hello(99), session(), frame(DRAFT, 1, 17, [5], 0.0, [], []))
    )
    assert errors(got) == [ErrorCode.AUTH]
    still_serving(edge)


@pytest.mark.parametrize("known_ids", [1024, 0])
async def test_a_joiner_the_scenario_allows_is_verified_like_the_others(
    autojump_clock: trio.testing.MockClock, known_ids: int
) -> None:
    """With joins allowed a new id gets a session (the synthetic verifier once raised
    KeyError for an id it had no rate for, and the edge died; with no room for joiners'
    priors the joiner once evicted its own, and the next plan died of a KeyError)."""
    edge = Edge(allow_joins=True, max_known_ids=known_ids)

    async def join(e: Edge, n: trio.Nursery) -> bytes:
        u_end, e_end = link_pair(lambda _t: LinkState(), lambda _t: LinkState(), e.link_rng)
        n.start_soon(e.node.serve_stream, e_end)
        user = e.honest()
        user.user_id = 99
        n.start_soon(user.run, u_end)
        return b""

    await under_attack(edge, join)
    assert edge.commits_after(ATTACK_AT + 1.0) > 20
    assert edge.planned_users() == [0, 99]
    assert sum(r["committed"] for r in edge.records if r.get("user") == 99 and "committed" in r)


async def test_a_token_id_outside_the_vocabulary_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge()
    got = await under_attack(edge, sends(hello(1), frame(START, 0, [1, 40_000], 0)))
    assert errors(got) == [ErrorCode.MALFORMED]
    still_serving(edge)


async def test_a_user_refused_again_and_again_backs_off_and_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Redials back off even when every connection is refused at once, and stop after
    ``give_up_s`` (they once went on at ten a second, for ever)."""
    edge = Edge(known=1)
    dials: list[float] = []

    async def refused() -> trio.abc.Stream:
        dials.append(trio.current_time())
        client, server = trio.testing.memory_stream_pair()
        await server.send_all(frame(ERROR, int(ErrorCode.OVERLOADED), "full"))
        await server.aclose()
        return client

    user = edge.honest()
    user.stats.sessions, user.stats.committed_tokens = 1, 100  # as if it had served before
    with trio.fail_after(60), pytest.raises(PeerGone, match="no link to the edge for 5 s"):
        await user.serve(refused, give_up_s=5.0)
    assert 5.0 <= dials[-1] - dials[0] <= 7.0
    assert len(dials) < 14  # 0.1, 0.2, 0.4, 0.8, then a second apart (jittered)


async def test_a_deeply_nested_frame_is_malformed_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nested: list[Any] = []
    for _ in range(500):
        nested = [nested]
    edge = Edge()
    got = await under_attack(edge, sends(hello(1), frame(DRAFT, 1, 17, nested, 0.0, [], [])))
    assert errors(got) == [ErrorCode.MALFORMED]
    still_serving(edge)


async def test_a_large_frame_is_refused_by_its_header_before_its_body_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 1 MiB Draft is refused on its first bytes: the edge neither buffers nor decodes it."""
    edge = Edge()
    body_start = msgpack.packb([DRAFT, 1, 17], use_bin_type=True)[:2]  # array header, type code
    got = await under_attack(edge, sends(hello(1), struct.pack(">I", 1 << 20) + body_start))
    assert errors(got) == [ErrorCode.TOO_LARGE]
    still_serving(edge)


# --- limits and liveness ----------------------------------------------------------------


async def test_a_half_sent_hello_is_closed_after_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge(handshake_timeout_s=2.0)
    t: list[float] = []

    async def slowloris(e: Edge, n: trio.Nursery) -> bytes:
        s = e.attacker(n)
        await s.send_all(hello(1)[:7])
        got = await read_all(s, 30.0)
        t.append(trio.current_time())
        return got

    got = await under_attack(edge, slowloris)
    assert errors(got) == [ErrorCode.TIMEOUT]
    assert t[0] - ATTACK_AT == pytest.approx(2.0, abs=0.1)
    still_serving(edge)


async def test_a_silent_user_is_dropped_and_the_plan_recomputed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user that stops sending (no draft, no heartbeat) leaves the plan after the idle
    timeout; its committed tokens stay in the records."""
    edge = Edge(idle_timeout_s=1.5, heartbeat_ms=250.0)

    async def silent(e: Edge, n: trio.Nursery) -> bytes:
        s = e.attacker(n)
        await s.send_all(hello(1) + session())
        return await read_all(s, 10.0)

    got = await under_attack(edge, silent)
    assert ErrorCode.TIMEOUT in errors(got)
    plans = [r for r in edge.records if r.get("ev") == "plan"]
    assert any(p["users"] == [0, 1] for p in plans)
    assert plans[-1]["users"] == [0] and "silent" in plans[-1]["reason"]
    still_serving(edge)


async def test_a_user_the_edge_decodes_for_alone_is_never_dropped_for_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At draft length 0 (the edge decodes alone) a user only receives: the edge does not wait
    on it, so its silence is no fault."""
    edge = Edge(known=1, idle_timeout_s=0.5, heartbeat_ms=100.0)
    edge._plan = lambda problem, previous: plan_for("ad", problem, previous)  # type: ignore[method-assign]
    edge.node.planner = edge._plan
    await under_attack(edge, sends(), after=6.0)
    assert not any(r.get("ev") == "leave" and r["t"] < edge.stopped_at for r in edge.records)
    still_serving(edge)


async def test_two_hundred_unknown_ids_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    edge = Edge(max_connections=300)

    async def churn(e: Edge, n: trio.Nursery) -> bytes:
        got = b""
        for uid in range(1000, 1200):
            s = e.attacker(n)
            await s.send_all(hello(uid) + session())
            got += await read_all(s, 0.5)
        return got

    got = await under_attack(edge, churn)
    assert errors(got) == [ErrorCode.AUTH] * 200
    still_serving(edge)
    assert set(edge.node.priors) == {0, 1}  # nothing kept of them


async def test_a_heartbeat_flood_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    edge = Edge(messages_per_s=100.0)
    flood = b"".join(frame(BEAT, float(k)) for k in range(1000))
    got = await under_attack(edge, sends(hello(1), flood))
    assert errors(got) == [ErrorCode.OVERLOADED]
    still_serving(edge)


async def test_connections_over_the_cap_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    edge = Edge(max_connections=4)
    held: list[trio.abc.Stream] = []

    async def crowd(e: Edge, n: trio.Nursery) -> bytes:
        got = b""
        for _ in range(6):
            s = e.attacker(n)
            held.append(s)
            await trio.sleep(0.01)
        for s in held[3:]:  # the honest user holds one: the fourth of these is the fifth
            got += await read_all(s, 0.1)
        return got

    got = await under_attack(edge, crowd)
    assert errors(got) == [ErrorCode.OVERLOADED] * 3
    still_serving(edge)


# --- fuzz ------------------------------------------------------------------------------------

_ids = st.lists(st.integers(0, 40), max_size=8)
_field = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=4),
    st.booleans(), st.none(), _ids, st.dictionaries(st.text(max_size=12), st.floats(), max_size=3),
)  # fmt: skip
_message = st.one_of(
    # A well-formed message of a random type at a random time ...
    st.builds(hello, st.sampled_from([0, 1, 2, 99])),
    st.builds(session, st.integers(1, 40)),
    st.builds(
        lambda r, b, toks: frame(DRAFT, r, b, toks, 0.0, [], []),
        st.integers(0, 4),
        st.integers(0, 40),
        st.lists(st.integers(0, 50), max_size=25),
    ),
    st.builds(lambda t: frame(BEAT, t), st.floats(0, 1e6)),
    st.builds(lambda: frame(STATS, {"draft_ms_per_token": 5.0})),
    st.builds(lambda: frame(BYE, "")),
    # ... or any type code with arbitrary fields, or raw bytes.
    st.builds(
        lambda code, fields: frame(code, *fields),
        st.sampled_from(sorted(EVENT_TYPES)),
        st.lists(_field, max_size=7),
    ),
    st.binary(max_size=40),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(_message, max_size=8), min_size=1, max_size=3))
def test_no_message_sequence_makes_the_edge_raise(script: list[list[bytes]]) -> None:
    """Arbitrary message sequences on a few connections at once, against the live edge: it
    never raises, and the honest user keeps committing."""

    async def main() -> None:
        edge = Edge()

        async def attack(e: Edge, n: trio.Nursery) -> bytes:
            async def one(messages: list[bytes]) -> None:
                s = e.attacker(n)
                for m in messages:
                    try:
                        await s.send_all(m)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(0.05)
                await read_all(s, 0.5)

            async with trio.open_nursery() as inner:
                for messages in script:
                    inner.start_soon(one, messages)
            return b""

        await under_attack(edge, attack, after=2.0)
        assert edge.commits_after(edge.attack_over) > 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- a user that loses its link ----------------------------------------------------------


async def test_a_user_that_loses_its_link_redials_and_resumes_its_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    edge = Edge(known=1)
    ends: list[trio.abc.Stream] = []
    prompts: list[int] = []
    verifier = edge.node.verifier

    class Recording:
        def prefill(self, batch: Mapping[int, Any]) -> Any:
            prompts.extend(len(p) for p in batch.values())
            return verifier.prefill(batch)

        def __getattr__(self, name: str) -> Any:
            return getattr(verifier, name)

    edge.node.verifier = Recording()  # type: ignore[assignment]
    async with trio.open_nursery() as n:
        n.start_soon(edge.node.run)

        async def dial() -> trio.abc.Stream:
            state = LinkState(delay_ms=1.5)
            u_end, e_end = link_pair(lambda _t: state, lambda _t: state, edge.link_rng)
            ends.append(e_end)
            n.start_soon(edge.node.serve_stream, e_end)
            return u_end

        user = edge.honest()
        n.start_soon(user.serve, dial)
        await trio.sleep(ATTACK_AT)
        await ends[-1].aclose()  # the link breaks under the user
        edge.attack_over = trio.current_time()
        await trio.sleep(4.0)
        n.cancel_scope.cancel()
    assert len(ends) == 2 and user.stats.reconnects == 1
    lost = [r for r in edge.records if r.get("ev") == "link_lost"]
    back = [r for r in edge.records if r.get("ev") == "reconnected"]
    assert len(lost) == 1 and len(back) == 1 and back[0]["t"] - lost[0]["t"] < 0.5
    # The session goes on: its prompt the first one plus every token committed before the break.
    committed = sum(r["committed"] for r in edge.records if r.get("ev") == "round")
    committed_before = edge.commits_between(0.0, edge.attack_over) + 1  # + the first token
    assert prompts[0] == 512 and prompts[1] == 512 + committed_before
    assert user.stats.sessions == 1
    still_serving(edge)
    assert committed > committed_before


async def test_a_new_connection_of_a_connected_user_replaces_the_old_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user that redials before the edge saw its old link die is the same user: once the
    old connection has been silent for four heartbeats it is closed and the new one welcomed
    (it once waited out the idle timeout); a live user's id cannot be taken over."""
    edge = Edge(heartbeat_ms=250.0)

    async def twice(e: Edge, n: trio.Nursery) -> bytes:
        old = e.attacker(n)
        await old.send_all(hello(1) + session())
        await trio.sleep(0.5)
        early = e.attacker(n)
        await early.send_all(hello(1))
        assert errors(await read_all(early, 0.5)) == [ErrorCode.OUT_OF_ORDER]
        await trio.sleep(0.5)  # the old one silent for 1.5 s
        new = e.attacker(n)
        await new.send_all(hello(1))
        old_got, new_got = await read_all(old, 1.0), await read_all(new, 0.5)
        assert [f[0] for f in frames(new_got)][:1] == [WELCOME]
        assert 1 in e.node.members and e.node.connected(1)
        return old_got

    got = await under_attack(edge, twice)
    assert errors(got) == [ErrorCode.OUT_OF_ORDER]
    assert any(r.get("ev") == "leave" and "reconnected" in r["why"] for r in edge.records)
