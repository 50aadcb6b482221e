"""The heterogeneous-edge system's messages: a task's user and the small cell (over the radio
uplink), and the small cell and the macro cell (over the fronthaul).

Layer: pure (nodes.protocol): no I/O, no clock, no randomness.

A user attaches (``Attach``), waits for the small cell's uplink grant (``Grant``: the band the
plan gives it, at its batch's turn), uploads its prompt (``Upload``) and receives its tokens as
they are verified (``Tokens``, the last with ``done``). The small cell sends each round of a
batch to the macro cell (``BatchDraft``: each task's drafts, their distributions as the bytes the
fronthaul carries, and in round 1 the prompts) and gets the verdicts back (``BatchVerdict``).
Token sequences that the uplink carries travel packed (``pack_ids``): ``width`` bytes a token,
as many as the scenario's ``bits_per_token`` need, so the upload's size is the planner's.

Framing is the user-edge protocol's (a 4-byte big-endian length, then one msgpack array: the
type code, then the fields); ``Frames`` checks each frame against its size limit before
buffering it, and every message validates itself on construction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

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
    "HETNET_TYPES",
    "Attach",
    "BatchDraft",
    "BatchVerdict",
    "Frames",
    "Grant",
    "HetnetEvent",
    "Tokens",
    "Upload",
    "pack_ids",
    "token_width",
    "unpack_ids",
]

MAX_BATCH = 4096
MAX_TASK = 2**31 - 1


def token_width(bits_per_token: int) -> int:
    """Bytes a packed token takes: 2 up to 16 bits, else 4."""
    return 2 if bits_per_token <= 16 else 4


def pack_ids(ids: tuple[int, ...] | list[int], width: int) -> bytes:
    """Token ids as big-endian unsigned integers of ``width`` bytes each."""
    if width not in (2, 4):
        raise ValueError(f"width must be 2 or 4, got {width!r}")
    top = 1 << (8 * width)
    for t in ids:
        if not 0 <= t < top:
            raise ValueError(f"token id {t} does not fit {width} bytes")
    return struct.pack(f">{len(ids)}{'H' if width == 2 else 'I'}", *ids)


def unpack_ids(data: bytes, width: int) -> tuple[int, ...]:
    if width not in (2, 4) or len(data) % width:
        _fail("packed ids", f"{len(data)} bytes", f"a whole number of {width}-byte ids")
    return struct.unpack(f">{len(data) // width}{'H' if width == 2 else 'I'}", data)


HetnetEvent = Event  # the user-edge protocol's base: validated on construction, to_wire


def _tasks(name: str, v: object) -> None:
    _ids(name, v, 1, MAX_BATCH)
    assert isinstance(v, tuple)
    if len(set(v)) != len(v):
        _fail(name, v, "distinct task ids")


def _per_task(name: str, v: object, n: int) -> None:
    if type(v) is not tuple or len(v) != n:
        _fail(name, type(v).__name__, f"one entry per task ({n})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach(HetnetEvent):
    """User to small cell, first: the task it carries."""

    code: ClassVar[int] = 21
    task: int

    def validate(self) -> None:
        _int("task", self.task, 0, MAX_TASK)


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant(HetnetEvent):
    """Small cell to user: upload now, on ``bandwidth_hz`` of the band."""

    code: ClassVar[int] = 22
    task: int
    bandwidth_hz: float

    def validate(self) -> None:
        _int("task", self.task, 0, MAX_TASK)
        _float("bandwidth_hz", self.bandwidth_hz, 0.0, 1e12)


@dataclass(frozen=True, slots=True, kw_only=True)
class Upload(HetnetEvent):
    """User to small cell: the prompt (packed, ``width`` bytes a token) and how many tokens
    the task wants."""

    code: ClassVar[int] = 23
    task: int
    prompt: bytes
    width: int
    max_new_tokens: int

    def validate(self) -> None:
        _int("task", self.task, 0, MAX_TASK)
        _int("width", self.width, 2, 4)
        if type(self.prompt) is not bytes:
            _fail("prompt", type(self.prompt).__name__, "bytes")
        n = len(unpack_ids(self.prompt, self.width))
        if not 1 <= n <= MAX_PROMPT_TOKENS:
            _fail("prompt", f"{n} tokens", f"1..{MAX_PROMPT_TOKENS} tokens")
        _int("max_new_tokens", self.max_new_tokens, 1, 2**31 - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens(HetnetEvent):
    """Small cell to user: the tokens a verification committed to its task; ``done`` with the
    last of them (when the task's batch ends)."""

    code: ClassVar[int] = 24
    task: int
    tokens: tuple[int, ...]
    done: bool = False

    def validate(self) -> None:
        _int("task", self.task, 0, MAX_TASK)
        _ids("tokens", self.tokens, 0, MAX_PROMPT_TOKENS)
        if type(self.done) is not bool:
            _fail("done", self.done, "a boolean")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchDraft(HetnetEvent):
    """Small cell to macro cell: round ``round`` of batch ``batch``.

    ``drafts[i]`` is task ``tasks[i]``'s draft (empty: the target alone decodes the batch,
    ``wanted[i]`` tokens each, and answers once at the end); ``probs`` the drafts'
    distributions as the fronthaul carries them; in round 1, ``prompts[i]`` (packed,
    ``width`` bytes a token) and ``wanted``, the tokens each task still wants."""

    code: ClassVar[int] = 25
    batch: int
    round: int
    tasks: tuple[int, ...]
    drafts: tuple[tuple[int, ...], ...]
    probs: bytes = b""
    prompts: tuple[bytes, ...] = ()
    width: int = 2
    wanted: tuple[int, ...] = ()

    def validate(self) -> None:
        _int("batch", self.batch, 0, 2**20)
        _int("round", self.round, 1, 2**31 - 1)
        _tasks("tasks", self.tasks)
        n = len(self.tasks)
        _per_task("drafts", self.drafts, n)
        lengths = {len(d) for d in self.drafts}
        if len(lengths) != 1:
            _fail("drafts", sorted(lengths), "drafts of one length (the batch's)")
        for d in self.drafts:
            _ids("drafts", d, 0, MAX_DRAFT_TOKENS)
        if type(self.probs) is not bytes:
            _fail("probs", type(self.probs).__name__, "bytes")
        _int("width", self.width, 2, 4)
        if self.round == 1:
            _per_task("prompts", self.prompts, n)
            for p in self.prompts:
                if type(p) is not bytes or not p:
                    _fail("prompts", type(p).__name__, "non-empty bytes")
                unpack_ids(p, self.width)
            _per_task("wanted", self.wanted, n)
            for w in self.wanted:
                _int("wanted", w, 1, 2**31 - 1)
        elif self.prompts or self.wanted:
            _fail("prompts", f"round {self.round}", "prompts and wanted in round 1 only")

    @property
    def draft_len(self) -> int:
        return len(self.drafts[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchVerdict(HetnetEvent):
    """Macro cell to small cell: per task, how many drafts it accepted and the tokens that
    follow them (the correction or bonus; every token when the target decoded alone), with
    what the round cost at the macro cell: waiting for it, and verifying [ms]."""

    code: ClassVar[int] = 26
    batch: int
    round: int
    accepted: tuple[int, ...]
    tokens: tuple[tuple[int, ...], ...]
    queued_ms: float = 0.0
    verify_ms: float = 0.0

    def validate(self) -> None:
        _int("batch", self.batch, 0, 2**20)
        _int("round", self.round, 1, 2**31 - 1)
        if type(self.accepted) is not tuple or not 1 <= len(self.accepted) <= MAX_BATCH:
            _fail("accepted", type(self.accepted).__name__, f"1..{MAX_BATCH} counts")
        for a in self.accepted:
            _int("accepted", a, 0, MAX_DRAFT_TOKENS)
        _per_task("tokens", self.tokens, len(self.accepted))
        for t in self.tokens:
            _ids("tokens", t, 1, MAX_PROMPT_TOKENS)
        _float("queued_ms", self.queued_ms, 0.0, 1e12)
        _float("verify_ms", self.verify_ms, 0.0, 1e12)


HETNET_TYPES: dict[int, type[HetnetEvent]] = {
    cls.code: cls for cls in (Attach, Grant, Upload, Tokens, BatchDraft, BatchVerdict)
}


class Frames(TypedFrames[HetnetEvent]):
    """Framing, both ways, of one stream of this protocol's messages (``TypedFrames``): a
    frame over ``max_frame`` bytes, bytes that are not a message, or a message that breaks a
    rule raise RemoteProtocolError."""

    def __init__(self, *, max_frame: int = 1 << 20) -> None:
        super().__init__(HETNET_TYPES, depth=2, max_frame=max_frame)
