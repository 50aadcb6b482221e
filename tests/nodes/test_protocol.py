"""The sans-I/O protocol: a pair of connections joined by a fake link, plus fuzzing."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.errors import LocalProtocolError, RemoteProtocolError
from nodes.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Bye,
    ClockEcho,
    ClockProbe,
    Closed,
    Connection,
    Draft,
    Error,
    ErrorCode,
    Event,
    Heartbeat,
    Hello,
    PlanUpdate,
    Redirect,
    Report,
    Role,
    SessionStart,
    State,
    Verdict,
    Welcome,
)
from nodes.protocol.events import EVENT_TYPES, MAX_REPORT


def _pump(a: Connection, b: Connection, ev: Event) -> Event:
    b.receive_data(a.send(ev))
    out = b.next_event()
    assert out == ev
    assert b.next_event() is NEED_DATA
    return out


def _session() -> tuple[Connection, Connection]:
    """A user and an edge connection, handshake done and one session at round 0."""
    u, e = Connection(Role.USER), Connection(Role.EDGE, max_draft_len=8)
    _pump(u, e, Hello(version=PROTOCOL_VERSION, user_id=3, device={"draft_ms_per_token": 30.0}))
    _pump(e, u, Welcome(version=PROTOCOL_VERSION, max_draft_len=8, heartbeat_ms=0.0))
    _pump(u, e, SessionStart(session=0, prompt=(5, 6, 7), max_new_tokens=0))
    _pump(e, u, Verdict(round=0, accepted=0, token=9, next_draft_len=3, slot=0))
    return u, e


def test_a_session_advances_both_sides_in_step() -> None:
    u, e = _session()
    assert u.state is e.state is State.DRAFTING
    assert u.position == e.position == 4
    _pump(u, e, Draft(round=1, base_len=4, tokens=(1, 2, 3), draft_ms=90.0))
    _pump(e, u, PlanUpdate(plan_id=1, slot=0, slots=2, draft_len=2, cycle_ms=100.0))
    _pump(e, u, Verdict(round=1, accepted=2, token=4, next_draft_len=0, slot=0))
    assert u.position == e.position == 7
    # Length 0: the edge decodes alone, with no draft in between.
    _pump(e, u, Verdict(round=2, accepted=0, token=4, next_draft_len=2, slot=1, done=True))
    assert u.state is e.state is State.READY
    _pump(u, e, Bye(reason="done"))
    assert u.state is e.state is State.CLOSED


def test_clock_probes_and_reports_go_either_way_mid_round_and_keep_the_state() -> None:
    """The clock exchange and the records' Reports travel in any state after the handshake,
    each one way only, and change nothing of the session."""
    u, e = _session()
    _pump(u, e, ClockProbe(sent_ms=1000.0))
    _pump(e, u, ClockEcho(probe_ms=1000.0, received_ms=5.0, sent_ms=5.5))
    _pump(u, e, Report(lines='{"ev": "round", "t": 1.0}'))
    assert u.state is e.state is State.DRAFTING and u.position == e.position == 4
    with pytest.raises(LocalProtocolError, match="ClockEcho may only be sent by the edge"):
        u.send(ClockEcho(probe_ms=1.0, received_ms=1.0, sent_ms=1.0))
    with pytest.raises(LocalProtocolError, match="Report may only be sent by the user"):
        e.send(Report(lines=""))
    fresh = Connection(Role.USER)
    with pytest.raises(LocalProtocolError, match="before the handshake ended"):
        fresh.send(ClockProbe(sent_ms=0.0))
    with pytest.raises(ValueError, match="sent_ms must be >= received_ms"):
        ClockEcho(probe_ms=1.0, received_ms=2.0, sent_ms=1.0)
    with pytest.raises(ValueError, match=f"lines must be a string of <= {MAX_REPORT}"):
        Report(lines="x" * (MAX_REPORT + 1))


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (Draft(round=2, base_len=4, tokens=(1,)), "draft round 2, expected 1"),
        (Draft(round=1, base_len=5, tokens=(1,)), "base_len 5, expected 4"),
        (Draft(round=1, base_len=4, tokens=tuple(range(9))), "over max_draft_len 8"),
        (SessionStart(session=1, prompt=(1,), max_new_tokens=0), "state drafting"),
        (Hello(version=PROTOCOL_VERSION, user_id=3), "state drafting"),
    ],
)
def test_out_of_order_user_messages_are_remote_errors_at_the_edge(event: Event, why: str) -> None:
    u, e = _session()
    # Encode as the user would if it skipped its own checks.
    body = msgpack.packb(event.to_wire())
    e.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match=why) as info:
        e.next_event()
    assert info.value.code == ErrorCode.OUT_OF_ORDER
    # ... and the same event is a local error when the user tries to send it.
    with pytest.raises(LocalProtocolError):
        u.send(event)


def test_verdict_must_answer_the_outstanding_draft() -> None:
    u, e = _session()
    with pytest.raises(LocalProtocolError, match="before the user's draft"):
        e.send(Verdict(round=1, accepted=0, token=1, next_draft_len=1, slot=0))
    _pump(u, e, Draft(round=1, base_len=4, tokens=(1, 2)))
    with pytest.raises(LocalProtocolError, match="accepts 3 of 2"):
        e.send(Verdict(round=1, accepted=3, token=1, next_draft_len=1, slot=0))


def test_wrong_version_is_refused_with_its_code() -> None:
    e = Connection(Role.EDGE)
    body = msgpack.packb(Hello(version=PROTOCOL_VERSION + 1, user_id=1).to_wire())
    e.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError) as info:
        e.next_event()
    assert info.value.code == ErrorCode.VERSION


def test_an_older_peers_hello_is_refused_for_its_version_not_as_malformed() -> None:
    """Version 2's Hello had no ``drafter``: its four fields still decode, so the refusal
    says what is wrong (the version). Fields with no default stay required."""
    e = Connection(Role.EDGE)
    body = msgpack.packb([Hello.code, 2, 1, {}, ""])
    e.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(
        RemoteProtocolError, match=f"protocol version 2 is not {PROTOCOL_VERSION}"
    ) as info:
        e.next_event()
    assert info.value.code == ErrorCode.VERSION
    e = Connection(Role.EDGE)
    body = msgpack.packb([Hello.code, PROTOCOL_VERSION])
    e.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match="Hello has 2 to 5 fields, got 1") as info:
        e.next_event()
    assert info.value.code == ErrorCode.MALFORMED


def test_a_drafter_serving_several_clients_says_so_in_each_hello() -> None:
    u, e = Connection(Role.USER), Connection(Role.EDGE)
    hello = Hello(version=PROTOCOL_VERSION, user_id=7, drafter="small0")
    assert _pump(u, e, hello) == hello
    with pytest.raises(ValueError, match="drafter must be a string"):
        Hello(version=PROTOCOL_VERSION, user_id=7, drafter=3)  # type: ignore[arg-type]


def test_a_router_answers_hello_with_a_redirect_and_the_connection_ends() -> None:
    u, r = Connection(Role.USER), Connection(Role.EDGE)
    _pump(u, r, Hello(version=PROTOCOL_VERSION, user_id=4))
    _pump(r, u, Redirect(node="edge1", host="10.0.1.2", port=7000))
    assert u.state is State.CLOSED and r.state is State.CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        u.send(SessionStart(session=0, prompt=(1,), max_new_tokens=0))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"node": "", "host": "h", "port": 1}, "node"),
        ({"node": "n", "host": "", "port": 1}, "host"),
        ({"node": "n", "host": "h", "port": 70000}, "port"),
    ],
)
def test_a_redirect_names_a_node_and_an_address(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Redirect(**kwargs)  # type: ignore[arg-type]


def test_only_the_edge_side_redirects_and_only_after_hello() -> None:
    _u, e = _session()
    with pytest.raises(LocalProtocolError):
        e.send(Redirect(node="edge1", host="h", port=1))  # mid-session
    fresh = Connection(Role.EDGE)
    with pytest.raises(LocalProtocolError):
        fresh.send(Redirect(node="edge1", host="h", port=1))  # before any Hello
    user = Connection(Role.USER)
    with pytest.raises(LocalProtocolError):
        user.send(Redirect(node="edge1", host="h", port=1))


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    e = Connection(Role.EDGE, max_frame=1024)
    e.receive_data(struct.pack(">I", 1 << 30))
    with pytest.raises(RemoteProtocolError) as info:
        e.next_event()
    assert info.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED),  # never-used msgpack byte
        (msgpack.packb([99, 1]), ErrorCode.UNKNOWN),
        (msgpack.packb({"t": 1}), ErrorCode.MALFORMED),
        (msgpack.packb([1, 1]), ErrorCode.MALFORMED),  # wrong arity
        (msgpack.packb([1, 1, -5, {}, ""]), ErrorCode.MALFORMED),  # negative user id
        (msgpack.packb([1, 1, 2, {}, ""]) + b"\x00", ErrorCode.MALFORMED),  # trailing byte
    ],
)
def test_malformed_messages_name_their_fault(body: bytes, code: ErrorCode) -> None:
    e = Connection(Role.EDGE)
    e.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError) as info:
        e.next_event()
    assert info.value.code == code
    # After a remote error only an Error (then close) may be sent.
    with pytest.raises(LocalProtocolError):
        e.send(Welcome(version=PROTOCOL_VERSION, max_draft_len=1, heartbeat_ms=0.0))
    assert e.send(Error(error=int(code), message="bye"))


def test_end_of_stream_is_closed_or_an_error_inside_a_frame() -> None:
    e = Connection(Role.EDGE)
    e.receive_data(b"")
    assert isinstance(e.next_event(), Closed)
    e2 = Connection(Role.EDGE)
    e2.receive_data(b"\x00\x00")
    e2.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        e2.next_event()


def test_bytes_split_anywhere_decode_the_same() -> None:
    u, e = Connection(Role.USER), Connection(Role.EDGE)
    data = u.send(Hello(version=PROTOCOL_VERSION, user_id=1)) + u.send(Heartbeat(sent_ms=5.0))
    for b in data:
        e.receive_data(bytes([b]))
    assert isinstance(e.next_event(), Hello)
    assert isinstance(e.next_event(), Heartbeat)
    assert e.next_event() is NEED_DATA


def _drain(conn: Connection) -> None:
    """Pull events until the connection needs data; only events or RemoteProtocolError."""
    for _ in range(10_000):
        try:
            ev = conn.next_event()
        except RemoteProtocolError:
            return
        if ev is NEED_DATA or isinstance(ev, Closed):
            return
        assert isinstance(ev, Event)
    raise AssertionError("next_event never asked for data")


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(Role), chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_arbitrary_bytes_yield_events_or_protocol_errors(
    role: Role, chunks: list[bytes]
) -> None:
    conn = Connection(role, max_frame=4096)
    for c in chunks:
        conn.receive_data(c)
        _drain(conn)
        if conn._errored or not c:
            break
        # Memory stays bounded: at most one partial frame is ever held.
        assert len(conn._buf) <= 4 + 4096 + 300


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    role=st.sampled_from(Role),
    code=st.sampled_from(sorted(EVENT_TYPES)) | st.integers(-3, 20),
    fields=st.lists(_values, max_size=7),
    handshake=st.booleans(),
)
def test_fuzz_valid_looking_messages_yield_events_or_protocol_errors(
    role: Role, code: int, fields: list[object], handshake: bool
) -> None:
    conn = Connection(role)
    if handshake and role is Role.EDGE:
        conn.receive_data(Connection(Role.USER).send(Hello(version=PROTOCOL_VERSION, user_id=1)))
        assert isinstance(conn.next_event(), Hello)
    body = msgpack.packb([code, *fields], use_bin_type=True)
    conn.receive_data(struct.pack(">I", len(body)) + body)
    _drain(conn)
