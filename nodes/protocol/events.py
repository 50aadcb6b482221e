"""The messages of a session between a user (drafter) and the edge (verifier).

Layer: pure (nodes.protocol): no I/O, no clock, no randomness.

Each message is a frozen dataclass that validates itself on construction, so a value that
breaks a rule can neither be sent (LocalProtocolError) nor received (RemoteProtocolError).
On the wire a message is a msgpack array: its type code, then its fields in declaration order.
Token ids travel, never text.
"""

from __future__ import annotations

import enum
import math
from dataclasses import MISSING, astuple, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "EVENT_TYPES",
    "MAX_DRAFT_TOKENS",
    "MAX_PROMPT_TOKENS",
    "PROTOCOL_VERSION",
    "Bye",
    "ClockEcho",
    "ClockProbe",
    "Closed",
    "Draft",
    "Error",
    "ErrorCode",
    "Event",
    "Heartbeat",
    "Hello",
    "PlanUpdate",
    "Redirect",
    "Report",
    "Resume",
    "SessionStart",
    "Verdict",
    "Welcome",
    "from_wire",
]

# 2: Redirect (a router between users and verifiers); Stats retired. 3: Hello.drafter (a drafter
# that serves several clients opens one connection, and one session at a time, per client).
# 4: ClockProbe and ClockEcho (a node's clock offset to the edge), Report (records to the edge).
# 5: Resume and Welcome.resume (a session the edge logged, handed back), SessionStart.resumes.
PROTOCOL_VERSION = 5
MAX_DRAFT_TOKENS = 256
MAX_PROMPT_TOKENS = 32768
MAX_TOKEN_ID = 2**31 - 1
MAX_TEXT = 1024
MAX_MAP_ENTRIES = 64
MAX_TOP_K = 64
MAX_REPORT = 32768  # characters of JSON lines in one Report


class ErrorCode(enum.IntEnum):
    """Why a connection is being closed; carried by ``Error``."""

    MALFORMED = 1  # bytes that are not a valid frame or message
    TOO_LARGE = 2  # a frame over the size limit
    OUT_OF_ORDER = 3  # a message the session's state does not allow now
    UNKNOWN = 4  # an unknown message type
    VERSION = 5  # a protocol version the peer does not speak
    AUTH = 6  # the auth field was refused
    INTERNAL = 7  # the sender failed on its own side
    OVERLOADED = 8  # the edge cannot take another user, or a peer sends too fast
    TIMEOUT = 9  # the peer was silent past a deadline (handshake, idle)


def _fail(name: str, value: object, rule: str) -> None:
    raise ValueError(f"{name} must be {rule}, got {value!r}")


def _int(name: str, v: object, lo: int, hi: int) -> None:
    if type(v) is not int or not lo <= v <= hi:
        _fail(name, v, f"an integer in [{lo}, {hi}]")


def _float(name: str, v: object, lo: float, hi: float) -> None:
    if type(v) not in (int, float) or not lo <= v <= hi:  # type: ignore[operator]
        _fail(name, v, f"a number in [{lo}, {hi}]")


def _text(name: str, v: object) -> None:
    if type(v) is not str or len(v) > MAX_TEXT:
        _fail(name, v if type(v) is not str else f"{len(v)} chars", f"a string of <= {MAX_TEXT}")


def _ids(name: str, v: object, lo: int, hi: int) -> None:
    if type(v) is not tuple or not lo <= len(v) <= hi:
        _fail(name, type(v).__name__, f"a sequence of {lo}..{hi} token ids")
    for t in v:  # type: ignore[attr-defined]
        if type(t) is not int or not 0 <= t <= MAX_TOKEN_ID:
            _fail(name, t, f"token ids in [0, {MAX_TOKEN_ID}]")


def _numbers(name: str, v: object) -> None:
    if type(v) is not dict or len(v) > MAX_MAP_ENTRIES:
        _fail(name, type(v).__name__, f"a map of <= {MAX_MAP_ENTRIES} names to numbers")
    for k, x in v.items():  # type: ignore[attr-defined]
        _text(f"{name} key", k)
        if type(x) not in (int, float) or not math.isfinite(x):
            _fail(f"{name}[{k!r}]", x, "a finite number")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every message. ``code`` is the wire type."""

    code: ClassVar[int] = 0

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and the rule."""

    def __post_init__(self) -> None:
        self.validate()

    def to_wire(self) -> list[Any]:
        return [self.code, *(_plain(x) for x in astuple(self))]


def _plain(x: object) -> object:
    if isinstance(x, tuple):
        return [_plain(y) for y in x]
    return x


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Event):
    """User to edge, first: who it is, what it runs on, and the protocol it speaks.

    ``user_id`` is the client whose tokens the connection carries. ``drafter`` names the node
    that drafts for it when that is not the client itself ("": the client drafts, as in
    DiP-SD): a drafter serving several clients dials once per client, each connection its own
    user, and says so here; ``device`` is then the drafter's."""

    code: ClassVar[int] = 1
    version: int
    user_id: int
    device: dict[str, float] = field(default_factory=dict)
    auth: str = ""
    drafter: str = ""

    def validate(self) -> None:
        _int("version", self.version, 1, 2**16)
        _int("user_id", self.user_id, 0, 2**31 - 1)
        _numbers("device", self.device)
        _text("auth", self.auth)
        _text("drafter", self.drafter)


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Event):
    """Edge to user, after Hello: the limits of this connection. ``resume``: a Resume follows
    (the edge holds a session of this user that has not ended), and the user waits for it
    before it starts a session."""

    code: ClassVar[int] = 2
    version: int
    max_draft_len: int
    heartbeat_ms: float
    resume: bool = False

    def validate(self) -> None:
        _int("version", self.version, 1, 2**16)
        _int("max_draft_len", self.max_draft_len, 0, MAX_DRAFT_TOKENS)
        _float("heartbeat_ms", self.heartbeat_ms, 0.0, 3.6e6)
        if type(self.resume) is not bool:
            _fail("resume", self.resume, "a boolean")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStart(Event):
    """User to edge: a prompt (token ids) to decode, up to ``max_new_tokens`` (0: no limit).
    ``session`` numbers the user's sessions, and a session resumed over a new connection keeps
    its number: its prompt is the session's prompt and then the ``resumes`` tokens it had
    committed."""

    code: ClassVar[int] = 3
    session: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    resumes: int = 0

    def validate(self) -> None:
        _int("session", self.session, 0, 2**31 - 1)
        _ids("prompt", self.prompt, 1, MAX_PROMPT_TOKENS)
        _int("max_new_tokens", self.max_new_tokens, 0, 2**31 - 1)
        _int("resumes", self.resumes, 0, len(self.prompt) - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft(Event):
    """User to edge: draft tokens extending the committed sequence of length ``base_len``.

    ``draft_ms`` is the device's own drafting time for this round; ``top_ids``/``top_probs``
    are the draft's sparse (top-k) distributions per position, for stochastic verification.
    """

    code: ClassVar[int] = 4
    round: int
    base_len: int
    tokens: tuple[int, ...]
    draft_ms: float = 0.0
    top_ids: tuple[tuple[int, ...], ...] = ()
    top_probs: tuple[tuple[float, ...], ...] = ()

    def validate(self) -> None:
        _int("round", self.round, 1, 2**31 - 1)
        _int("base_len", self.base_len, 1, 2**31 - 1)
        _ids("tokens", self.tokens, 0, MAX_DRAFT_TOKENS)
        _float("draft_ms", self.draft_ms, 0.0, 3.6e6)
        if self.top_ids or self.top_probs:
            if len(self.top_ids) != len(self.tokens) or len(self.top_probs) != len(self.tokens):
                _fail("top_ids/top_probs", len(self.top_ids), "one entry per draft token")
            for ids, ps in zip(self.top_ids, self.top_probs, strict=True):
                _ids("top_ids", ids, 1, MAX_TOP_K)
                if type(ps) is not tuple or len(ps) != len(ids):
                    _fail("top_probs", ps, "as many probabilities as top_ids")
                for p in ps:
                    _float("top_probs", p, 0.0, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict(Event):
    """Edge to user: ``accepted`` draft tokens kept, then ``token`` (correction or bonus).

    Round 0 answers SessionStart with the first token. ``next_draft_len`` is the verifier's
    length controller's advice for the next draft (DiP-SD: the plan's length; an adaptive
    window elsewhere): the user may send fewer tokens, never more than the Welcome's
    ``max_draft_len``; 0 means the edge decodes this user alone next round and the user sends
    no draft. ``slot`` is the batch the user is in where the verifier schedules slots (0
    where it does not). ``done`` ends the session.
    """

    code: ClassVar[int] = 5
    round: int
    accepted: int
    token: int
    next_draft_len: int
    slot: int
    done: bool = False

    def validate(self) -> None:
        _int("round", self.round, 0, 2**31 - 1)
        _int("accepted", self.accepted, 0, MAX_DRAFT_TOKENS)
        _int("token", self.token, 0, MAX_TOKEN_ID)
        _int("next_draft_len", self.next_draft_len, 0, MAX_DRAFT_TOKENS)
        _int("slot", self.slot, 0, 2**20)
        if type(self.done) is not bool:
            _fail("done", self.done, "a boolean")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanUpdate(Event):
    """Edge to user, informational and optional: a new plan is in force, with the user's slot
    and draft length in it (lengths change through Verdicts). A verifier without plans sends
    none; a user records the plan its rounds ran under (``plan_id`` in its round records)."""

    code: ClassVar[int] = 6
    plan_id: int
    slot: int
    slots: int
    draft_len: int
    cycle_ms: float

    def validate(self) -> None:
        _int("plan_id", self.plan_id, 0, 2**31 - 1)
        _int("slots", self.slots, 1, 2**20)
        _int("slot", self.slot, 0, self.slots - 1)
        _int("draft_len", self.draft_len, 0, MAX_DRAFT_TOKENS)
        _float("cycle_ms", self.cycle_ms, 0.0, 3.6e6)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Event):
    code: ClassVar[int] = 7
    sent_ms: float

    def validate(self) -> None:
        _float("sent_ms", self.sent_ms, 0.0, 1e15)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(Event):
    code: ClassVar[int] = 9
    reason: str = ""

    def validate(self) -> None:
        _text("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Event):
    code: ClassVar[int] = 10
    error: int
    message: str

    def validate(self) -> None:
        _int("error", self.error, 0, 2**16)
        _text("message", self.message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect(Event):
    """Router to user, answering its Hello: dial verifier ``node`` at ``host``:``port`` and
    say Hello there. The router closes the connection after it (``nodes.router``)."""

    code: ClassVar[int] = 11
    node: str
    host: str
    port: int

    def validate(self) -> None:
        for name, v in (("node", self.node), ("host", self.host)):
            _text(name, v)
            if not v:
                _fail(name, v, "a non-empty string")
        _int("port", self.port, 0, 65535)  # 0: an in-memory transport, addressed by name


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockProbe(Event):
    """User to edge, any time after the handshake: the first of NTP's four timestamps,
    ``sent_ms`` on the user's clock. The edge answers with a ClockEcho at once."""

    code: ClassVar[int] = 12
    sent_ms: float

    def validate(self) -> None:
        _float("sent_ms", self.sent_ms, -1e15, 1e15)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockEcho(Event):
    """Edge to user, answering a ClockProbe: the probe's ``probe_ms`` (the user's clock), and
    when the edge received it and sent this (the edge's clock). The user adds the fourth time,
    this echo's arrival (``nodes.core.clock``)."""

    code: ClassVar[int] = 13
    probe_ms: float
    received_ms: float
    sent_ms: float

    def validate(self) -> None:
        for name in ("probe_ms", "received_ms", "sent_ms"):
            _float(name, getattr(self, name), -1e15, 1e15)
        if self.sent_ms < self.received_ms:
            _fail("sent_ms", self.sent_ms, f">= received_ms ({self.received_ms})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Report(Event):
    """User to edge: the user's records since its last Report, as JSON lines with times on the
    edge's clock, so that the edge's run directory holds every node's records as they happen
    (a user that dies later loses nothing it reported). The edge files them under the user
    the connection proved to be, whatever they say."""

    code: ClassVar[int] = 14
    lines: str

    def validate(self) -> None:
        if type(self.lines) is not str or len(self.lines) > MAX_REPORT:
            shown = self.lines if type(self.lines) is not str else f"{len(self.lines)} chars"
            _fail("lines", shown, f"a string of <= {MAX_REPORT} chars")


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(Event):
    """Edge to user, after a Welcome that said ``resume``: the user's session ``session`` as
    the edge logged it before sending each verdict: its prompt and every token committed. A
    user that lost its own state (it was restarted) takes it from here; one whose own state
    is that session's takes whichever has more (the edge's log is never behind a verdict the
    user saw)."""

    code: ClassVar[int] = 15
    session: int
    prompt: tuple[int, ...]
    committed: tuple[int, ...]

    def validate(self) -> None:
        _int("session", self.session, 0, 2**31 - 1)
        _ids("prompt", self.prompt, 1, MAX_PROMPT_TOKENS)
        _ids("committed", self.committed, 0, MAX_PROMPT_TOKENS - len(self.prompt))


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """Not a message: the peer closed its side of the stream cleanly."""


EVENT_TYPES: dict[int, type[Event]] = {
    cls.code: cls
    for cls in (
        Hello,
        Welcome,
        SessionStart,
        Draft,
        Verdict,
        PlanUpdate,
        Heartbeat,
        # 8 was Stats (device measurements), never sent: the edge learns a device's pace from
        # its drafts' draft_ms. Retired in version 2; the code is not reused.
        Bye,
        Error,
        Redirect,
        ClockProbe,
        ClockEcho,
        Report,
        Resume,
    )
}
_FIELDS = {code: tuple(f.name for f in fields(cls)) for code, cls in EVENT_TYPES.items()}
_REQUIRED = {
    code: sum(f.default is MISSING and f.default_factory is MISSING for f in fields(cls))
    for code, cls in EVENT_TYPES.items()
}
# from_wire leaves out trailing fields only: every field with a default comes after the others.
for _code, _cls in EVENT_TYPES.items():
    _defaulted = [
        f.default is not MISSING or f.default_factory is not MISSING for f in fields(_cls)
    ]
    if _defaulted != sorted(_defaulted):
        raise TypeError(f"{_cls.__name__}: a field without a default follows one with a default")


# The deepest a message nests: a field, a list in it, and ids in that (Draft.top_ids).
MAX_DEPTH = 2


def _tuples(x: object, depth: int = 0) -> object:
    """Lists as tuples, refusing nesting deeper than any message has (a 1 KB frame can nest
    hundreds deep, and decoding must not recurse without bound)."""
    if isinstance(x, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"a field nests deeper than {MAX_DEPTH} levels")
        return tuple(_tuples(y, depth + 1) for y in x)
    return x


def from_wire(obj: object) -> Event:
    """Build an event from a decoded msgpack object.

    Raises LookupError for an unknown type, ValueError (or TypeError) for anything malformed.
    """
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ValueError(f"a message must be an array [type, fields...], got {type(obj).__name__}")
    cls = EVENT_TYPES.get(obj[0])
    if cls is None:
        raise LookupError(f"unknown message type {obj[0]}")
    names, least = _FIELDS[obj[0]], _REQUIRED[obj[0]]
    if not least <= len(obj) - 1 <= len(names):
        counts = f"{least} to {len(names)}" if least < len(names) else f"{len(names)}"
        raise ValueError(f"{cls.__name__} has {counts} fields, got {len(obj) - 1}")
    # Trailing fields with defaults may be left out: a field added in a later version (an
    # older peer's Hello then decodes, and is refused for its version, not as malformed).
    return cls(**{n: _tuples(v) for n, v in zip(names, obj[1:], strict=False)})
