"""One side of a user-edge session, sans I/O (the h11 pattern).

Layer: pure (nodes.protocol): bytes in, events out; events in, bytes out. No sockets, no clock.

    conn = Connection(Role.USER)
    stream.send_all(conn.send(Hello(...)))
    conn.receive_data(await stream.receive_some())      # b"" at end of stream
    while (event := conn.next_event()) is not NEED_DATA: ...

Framing: a 4-byte big-endian length, then one msgpack message: a SessionStart or a Resume (which
carry a prompt) of at most ``max_frame`` bytes, every other message of at most
``max_small_frame``. A frame over ``max_small_frame`` has its message type checked against the
limits and the session's state as soon as its first bytes arrive, before its body is buffered or
decoded.
Both sides track one shared session state, advanced by the events either side sends, through
the single transition table ``_TRANSITIONS``; an event the table does not allow is a
LocalProtocolError when we send it and a RemoteProtocolError (with an ErrorCode) when the peer
does. After a remote error the connection only lets us send an Error and close.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import msgpack

from emu.errors import LocalProtocolError, RemoteProtocolError
from nodes.protocol.events import (
    EVENT_TYPES,
    PROTOCOL_VERSION,
    Bye,
    ClockEcho,
    ClockProbe,
    Closed,
    Draft,
    Error,
    ErrorCode,
    Event,
    Heartbeat,
    Hello,
    PlanUpdate,
    Redirect,
    Report,
    Resume,
    SessionStart,
    Verdict,
    Welcome,
    from_wire,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_SMALL_FRAME",
    "NEED_DATA",
    "Connection",
    "Role",
    "State",
]

DEFAULT_MAX_FRAME = 1 << 20
DEFAULT_MAX_SMALL_FRAME = 1 << 16  # a 20-token draft with its top-64 distributions is ~18 KB
_HEADER = struct.Struct(">I")
# A message's first bytes: an array header (fixarray, array 16, array 32), then its type code.
_ARRAY_HEADER = {0xDC: 3, 0xDD: 5}


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class Role(enum.Enum):
    USER = "user"
    EDGE = "edge"


class State(enum.Enum):
    START = "start"  # nothing yet; the user says Hello
    GREETED = "greeted"  # Hello seen; the edge answers Welcome (a router: Redirect)
    READY = "ready"  # between sessions; the user may start one
    PREFILL = "prefill"  # SessionStart seen; the edge answers with Verdict round 0
    DRAFTING = "drafting"  # the user is drafting (or, at length 0, the edge decodes alone)
    VERIFYING = "verifying"  # a draft is at the edge; the next message is its Verdict
    CLOSED = "closed"  # Bye or Error seen, or the stream ended


_U, _E = Role.USER, Role.EDGE
# (who sends, state, message) -> next state. The messages of _ANYTIME keep the state.
_TRANSITIONS: dict[tuple[Role, State, type[Event]], State] = {
    (_U, State.START, Hello): State.GREETED,
    (_E, State.GREETED, Welcome): State.READY,
    (_E, State.GREETED, Redirect): State.CLOSED,  # a router's answer: ask that verifier
    (_E, State.READY, Resume): State.READY,  # after a Welcome that said resume
    (_U, State.READY, SessionStart): State.PREFILL,
    (_E, State.PREFILL, Verdict): State.DRAFTING,
    (_U, State.DRAFTING, Draft): State.VERIFYING,
    (_E, State.DRAFTING, Verdict): State.DRAFTING,  # only after next_draft_len == 0
    (_E, State.VERIFYING, Verdict): State.DRAFTING,
}
# The messages that carry a prompt, and only they, may be over max_small_frame.
_LARGE: frozenset[type[Event]] = frozenset({SessionStart, Resume})
_ANYTIME: dict[type[Event], Role | None] = {
    Heartbeat: None,
    Bye: None,
    Error: None,
    PlanUpdate: _E,
    ClockProbe: _U,
    ClockEcho: _E,
    Report: _U,
}


class _Rejected(Exception):
    """The table (or a session rule) refuses an event; carries the ErrorCode to report."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.OUT_OF_ORDER) -> None:
        super().__init__(message)
        self.code = code


class Connection:
    """Protocol state of one connection, seen from ``our_role``."""

    def __init__(
        self,
        our_role: Role,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_small_frame: int = DEFAULT_MAX_SMALL_FRAME,
        max_draft_len: int = 256,
    ) -> None:
        self.our_role = our_role
        self.their_role = _E if our_role is _U else _U
        self.max_frame = max_frame
        self.max_small_frame = min(max_small_frame, max_frame)
        self.max_draft_len = max_draft_len
        self.state = State.START
        self.round = 0  # last round with a Verdict
        self.position = 0  # committed sequence length (prompt + generated)
        self.draft_len = 0  # the length the last Verdict asked for
        self.pending_draft = 0  # tokens in the draft now at the edge
        self._buf = bytearray()
        self._eof = False
        self._errored = False
        self._unpacker = msgpack.Unpacker(
            max_buffer_size=max_frame, raw=False, strict_map_key=True, use_list=True
        )

    # --- sending -----------------------------------------------------------------------
    def send(self, event: Event) -> bytes:
        """Bytes to write for ``event``; LocalProtocolError if the protocol forbids it now."""
        if self._errored and not isinstance(event, Error | Bye):
            raise LocalProtocolError(f"cannot send {type(event).__name__} after a protocol error")
        try:
            self._apply(self.our_role, event)
        except _Rejected as exc:
            raise LocalProtocolError(str(exc)) from exc
        body: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
        if len(body) > self.max_frame:
            raise LocalProtocolError(
                f"message of {len(body)} bytes over max_frame {self.max_frame}"
            )
        return _HEADER.pack(len(body)) + body

    # --- receiving ---------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the stream; ``b""`` means the peer closed its side."""
        if data:
            if self._eof:
                raise RemoteProtocolError("data after end of stream")
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next complete event, ``NEED_DATA``, or ``Closed`` once the stream has ended."""
        if self._errored:
            raise RemoteProtocolError("connection already failed", code=ErrorCode.OUT_OF_ORDER)
        try:
            return self._next_event()
        except RemoteProtocolError:
            self._errored = True
            raise

    def _next_event(self) -> Event | _NeedData:
        buf = self._buf
        if len(buf) < _HEADER.size:
            return self._end_or_wait(bool(buf))
        (size,) = _HEADER.unpack_from(buf)
        if size > self.max_frame:
            raise RemoteProtocolError(
                f"frame of {size} bytes over the limit of {self.max_frame}",
                code=ErrorCode.TOO_LARGE,
            )
        if len(buf) < _HEADER.size + size:
            if size > self.max_small_frame:
                self._admit_early(buf, size)
            return self._end_or_wait(True)
        body = bytes(buf[_HEADER.size : _HEADER.size + size])
        del buf[: _HEADER.size + size]
        if size > self.max_small_frame:
            self._admit_early(body, size, offset=0)
        event = self._decode(body)
        try:
            self._apply(self.their_role, event)
        except _Rejected as exc:
            raise RemoteProtocolError(str(exc), code=exc.code) from exc
        return event

    def _admit_early(self, data: bytes | bytearray, size: int, offset: int = _HEADER.size) -> None:
        """Check a large frame by its first bytes: only a SessionStart or a Resume may exceed
        ``max_small_frame``, and only where the session's state allows one."""
        first = data[offset] if len(data) > offset else None
        if first is None:
            return  # the type is not here yet
        at = 1 if 0x90 <= first <= 0x9F else _ARRAY_HEADER.get(first)
        if at is None:
            raise RemoteProtocolError(
                "malformed message: a message must be an array [type, fields...]",
                code=ErrorCode.MALFORMED,
            )
        if len(data) <= offset + at:
            return
        kind = EVENT_TYPES.get(data[offset + at])
        if kind not in _LARGE:
            name = kind.__name__ if kind is not None else f"type {data[offset + at]}"
            raise RemoteProtocolError(
                f"{name} frame of {size} bytes over the limit of {self.max_small_frame}",
                code=ErrorCode.TOO_LARGE,
            )
        if (self.their_role, self.state, kind) not in _TRANSITIONS:
            raise RemoteProtocolError(
                f"{kind.__name__} from the {self.their_role.value} in state {self.state.value}",
                code=ErrorCode.OUT_OF_ORDER,
            )

    def _end_or_wait(self, partial: bool) -> Event | _NeedData:
        if not self._eof:
            return NEED_DATA
        if partial:
            raise RemoteProtocolError("stream ended inside a frame", code=ErrorCode.MALFORMED)
        self.state = State.CLOSED
        return Closed()

    def _decode(self, body: bytes) -> Event:
        start = self._unpacker.tell()
        try:
            self._unpacker.feed(body)
            obj = self._unpacker.unpack()
            if self._unpacker.tell() - start != len(body):
                raise ValueError("trailing bytes after the message")
            return from_wire(obj)
        except LookupError as exc:
            raise RemoteProtocolError(str(exc), code=ErrorCode.UNKNOWN) from exc
        except Exception as exc:  # whatever the bytes do (RecursionError too), it is malformed
            # A frame is decoded whole or not at all: start the next one on a clean unpacker.
            self._unpacker = msgpack.Unpacker(
                max_buffer_size=self.max_frame, raw=False, strict_map_key=True, use_list=True
            )
            raise RemoteProtocolError(
                f"malformed message: {exc}", code=ErrorCode.MALFORMED
            ) from exc

    # --- the state machine -------------------------------------------------------------
    def _apply(self, who: Role, event: Event) -> None:
        if self.state is State.CLOSED:
            raise _Rejected(f"{type(event).__name__} after the connection closed")
        kind = type(event)
        if kind in _ANYTIME:
            allowed = _ANYTIME[kind]
            if allowed is not None and allowed is not who:
                raise _Rejected(f"{kind.__name__} may only be sent by the {allowed.value}")
            if isinstance(event, Bye | Error):
                self.state = State.CLOSED
            elif self.state in (State.START, State.GREETED) and kind is not Heartbeat:
                raise _Rejected(f"{kind.__name__} before the handshake ended")
            return
        nxt = _TRANSITIONS.get((who, self.state, kind))
        if nxt is None:
            raise _Rejected(f"{kind.__name__} from the {who.value} in state {self.state.value}")
        self.state = self._check_session(event) or nxt

    def _check_session(self, event: Event) -> State | None:
        """Rules beyond the table: versions, rounds, positions and lengths."""
        if isinstance(event, Hello | Welcome) and event.version != PROTOCOL_VERSION:
            raise _Rejected(
                f"protocol version {event.version} is not {PROTOCOL_VERSION}", ErrorCode.VERSION
            )
        if isinstance(event, Welcome):
            self.max_draft_len = min(self.max_draft_len, event.max_draft_len)
        elif isinstance(event, SessionStart):
            self.round, self.position, self.draft_len = 0, len(event.prompt), 0
        elif isinstance(event, Draft):
            if self.draft_len == 0:
                raise _Rejected("a draft after the edge asked for length 0")
            if event.round != self.round + 1:
                raise _Rejected(f"draft round {event.round}, expected {self.round + 1}")
            if event.base_len != self.position:
                raise _Rejected(f"draft base_len {event.base_len}, expected {self.position}")
            if len(event.tokens) > self.max_draft_len:
                raise _Rejected(
                    f"draft of {len(event.tokens)} tokens over max_draft_len {self.max_draft_len}"
                )
            self.pending_draft = len(event.tokens)
        elif isinstance(event, Verdict):
            return self._check_verdict(event)
        return None

    def _check_verdict(self, v: Verdict) -> State | None:
        if self.state is State.PREFILL:
            expected, drafted = 0, 0
        elif self.state is State.DRAFTING:
            if self.draft_len != 0:
                raise _Rejected("a verdict before the user's draft arrived")
            expected, drafted = self.round + 1, 0
        else:
            expected, drafted = self.round + 1, self.pending_draft
        if v.round != expected:
            raise _Rejected(f"verdict round {v.round}, expected {expected}")
        if v.accepted > drafted:
            raise _Rejected(f"verdict accepts {v.accepted} of {drafted} drafted tokens")
        if v.next_draft_len > self.max_draft_len:
            raise _Rejected(f"next_draft_len {v.next_draft_len} over {self.max_draft_len}")
        self.round = v.round
        self.position += v.accepted + 1
        self.draft_len = v.next_draft_len
        self.pending_draft = 0
        # A finished session returns to READY: the user may start another.
        return State.READY if v.done else None
