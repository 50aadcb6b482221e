"""DSD's messages: a drafter and the router, a drafter and a verifier, a verifier and the
router (../shared/systems/dsd.md sections 2 and 3.1).

Layer: pure (nodes.protocol): no I/O, no clock, no randomness.

A conversation is named by its drafter's index and its count at that drafter
(``drafter``, ``conversation``). Once a conversation, the drafter asks the router for its
verifier (``Route``; ``Routed`` names it, sticky) and says when it ends (``Done``). To the
verifier it sends the prompt (``Prefill``: the ids, the answer's length; ``Prefilled`` carries
the target's first token), then each round's drafts after the ``context`` tokens both sides
hold (``Round``); the verdict (``Verdict``) gives how many drafts the target accepted and its
own token after them. ``Bye`` lets the verifier drop the conversation's state. Every answer
carries the verifier's queue as it stood when the answer left (``queue_len``,
``pending_tokens``, its last batches' ``utils``: what AWC reads) and what the job cost there
(``queued_ms``, ``verify_ms``). Verifiers push their queue to the router (``QueueReport``)
as it changes: what the routers of ``emu.planner.dsd.routing`` read. A fused round and its
verdict travel through the router, on the drafter's and the verifier's connections to it.

Framing is the user-edge protocol's (a 4-byte big-endian length, then one msgpack array: the
type code, then the fields); ``Frames`` checks each frame against its size limit before
buffering it, and every message validates itself on construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from nodes.protocol.events import (
    MAX_DRAFT_TOKENS,
    MAX_PROMPT_TOKENS,
    Event,
    _fail,
    _float,
    _ids,
    _int,
)
from nodes.protocol.frames import TypedFrames

__all__ = [
    "DSD_TYPES",
    "Bye",
    "Done",
    "DsdEvent",
    "Frames",
    "Prefill",
    "Prefilled",
    "QueueReport",
    "Round",
    "Route",
    "Routed",
    "Verdict",
]

MAX_NODE = 2**16 - 1  # drafters, verifiers
MAX_CONVERSATION = 2**31 - 1
MAX_HISTORY = 64  # a verifier's recent batch utilisations a message carries
MAX_MS = 1e12

DsdEvent = Event  # the user-edge protocol's base: validated on construction, to_wire


def _conv(ev: _Conv) -> None:
    _int("drafter", ev.drafter, 0, MAX_NODE)
    _int("conversation", ev.conversation, 0, MAX_CONVERSATION)


def _queue(ev: _Answer) -> None:
    _int("queue_len", ev.queue_len, 0, 2**31 - 1)
    _int("pending_tokens", ev.pending_tokens, 0, 2**31 - 1)
    if type(ev.utils) is not tuple or len(ev.utils) > MAX_HISTORY:
        _fail("utils", type(ev.utils).__name__, f"a sequence of at most {MAX_HISTORY} numbers")
    for u in ev.utils:
        _float("utils", u, 0.0, 1.0)
    _float("queued_ms", ev.queued_ms, 0.0, MAX_MS)
    _float("verify_ms", ev.verify_ms, 0.0, MAX_MS)


class _Conv(Protocol):
    @property
    def drafter(self) -> int: ...
    @property
    def conversation(self) -> int: ...


class _Answer(_Conv, Protocol):
    @property
    def queue_len(self) -> int: ...
    @property
    def pending_tokens(self) -> int: ...
    @property
    def utils(self) -> tuple[float, ...]: ...
    @property
    def queued_ms(self) -> float: ...
    @property
    def verify_ms(self) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Route(DsdEvent):
    """Drafter to router: which verifier serves this conversation?"""

    code: ClassVar[int] = 41
    drafter: int
    conversation: int

    def validate(self) -> None:
        _conv(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Routed(DsdEvent):
    """Router to drafter: the conversation's verifier (by index), for all its rounds."""

    code: ClassVar[int] = 42
    drafter: int
    conversation: int
    verifier: int

    def validate(self) -> None:
        _conv(self)
        _int("verifier", self.verifier, 0, MAX_NODE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done(DsdEvent):
    """Drafter to router: the conversation ended (its route is forgotten)."""

    code: ClassVar[int] = 43
    drafter: int
    conversation: int

    def validate(self) -> None:
        _conv(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueReport(DsdEvent):
    """Verifier to router: its queue now (``enqueued`` jobs waiting, a batch ``busy`` for
    ``busy_left_ms`` more, its recent batches' mean time); ``idle`` when a batch ended with
    nothing queued (``jiq``'s order)."""

    code: ClassVar[int] = 44
    verifier: int
    enqueued: int
    busy: bool
    busy_left_ms: float = 0.0
    mean_batch_ms: float = 37.0
    idle: bool = False

    def validate(self) -> None:
        _int("verifier", self.verifier, 0, MAX_NODE)
        _int("enqueued", self.enqueued, 0, 2**31 - 1)
        for name in ("busy", "idle"):
            if type(getattr(self, name)) is not bool:
                _fail(name, getattr(self, name), "a boolean")
        _float("busy_left_ms", self.busy_left_ms, 0.0, MAX_MS)
        _float("mean_batch_ms", self.mean_batch_ms, 0.0, MAX_MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prefill(DsdEvent):
    """Drafter to verifier: a conversation's prompt (token ids) and its answer's length."""

    code: ClassVar[int] = 45
    drafter: int
    conversation: int
    prompt: tuple[int, ...]
    answer: int

    def validate(self) -> None:
        _conv(self)
        _ids("prompt", self.prompt, 1, MAX_PROMPT_TOKENS)
        _int("answer", self.answer, 1, MAX_PROMPT_TOKENS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Round(DsdEvent):
    """Drafter to verifier: round ``round``'s drafts, after the ``context`` tokens of the
    conversation both hold (the prompt and the tokens emitted so far). A ``fused`` round
    (fused and hybrid execution) is drafted on the verifier's GPU: it goes by the router, with
    no round network, and its verdict comes back the same way."""

    code: ClassVar[int] = 46
    drafter: int
    conversation: int
    round: int
    context: int
    drafts: tuple[int, ...]
    fused: bool = False

    def validate(self) -> None:
        _conv(self)
        _int("round", self.round, 1, 2**31 - 1)
        _int("context", self.context, 1, 2 * MAX_PROMPT_TOKENS)
        _ids("drafts", self.drafts, 0, MAX_DRAFT_TOKENS)
        if type(self.fused) is not bool:
            _fail("fused", self.fused, "a boolean")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(DsdEvent):
    """Drafter to verifier: the conversation ended; its state can go."""

    code: ClassVar[int] = 47
    drafter: int
    conversation: int

    def validate(self) -> None:
        _conv(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prefilled(DsdEvent):
    """Verifier to drafter: the prompt is in; ``token`` is the target's first."""

    code: ClassVar[int] = 48
    drafter: int
    conversation: int
    token: int
    queue_len: int = 0
    pending_tokens: int = 0
    utils: tuple[float, ...] = ()
    queued_ms: float = 0.0
    verify_ms: float = 0.0

    def validate(self) -> None:
        _conv(self)
        _ids("token", (self.token,), 1, 1)
        _queue(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict(DsdEvent):
    """Verifier to drafter: round ``round`` accepted its first ``accepted`` drafts, and the
    target's own token follows them."""

    code: ClassVar[int] = 49
    drafter: int
    conversation: int
    round: int
    accepted: int
    token: int
    queue_len: int = 0
    pending_tokens: int = 0
    utils: tuple[float, ...] = ()
    queued_ms: float = 0.0
    verify_ms: float = 0.0

    def validate(self) -> None:
        _conv(self)
        _int("round", self.round, 1, 2**31 - 1)
        _int("accepted", self.accepted, 0, MAX_DRAFT_TOKENS)
        _ids("token", (self.token,), 1, 1)
        _queue(self)


DSD_TYPES: dict[int, type[DsdEvent]] = {
    cls.code: cls
    for cls in (Route, Routed, Done, QueueReport, Prefill, Round, Bye, Prefilled, Verdict)
}


class Frames(TypedFrames[DsdEvent]):
    """Framing, both ways, of one stream of this protocol's messages (``TypedFrames``): a
    frame over ``max_frame`` bytes, bytes that are not a message, or a message that breaks a
    rule raise RemoteProtocolError."""

    def __init__(self, *, max_frame: int = 1 << 20) -> None:
        super().__init__(DSD_TYPES, depth=1, max_frame=max_frame)
