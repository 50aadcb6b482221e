"""DSD's wire (``nodes.protocol.dsd``): every message round-trips through the framing in pieces,
a message that breaks a rule is refused on construction and on decoding, and bytes that are
not a message are the peer's fault."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgpack
import numpy as np
import pytest

from emu.errors import RemoteProtocolError
from nodes.protocol.dsd import (
    DSD_TYPES,
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

MESSAGES: list[DsdEvent] = [
    Route(drafter=3, conversation=7),
    Routed(drafter=3, conversation=7, verifier=1),
    Done(drafter=3, conversation=7),
    QueueReport(verifier=1, enqueued=4, busy=True, busy_left_ms=12.5, mean_batch_ms=30.0),
    QueueReport(verifier=0, enqueued=0, busy=False, idle=True),
    Prefill(drafter=3, conversation=7, prompt=(1, 2, 151000), answer=140),
    Round(drafter=3, conversation=7, round=2, context=76, drafts=(5, 6, 7, 8)),
    Round(drafter=3, conversation=7, round=3, context=81, drafts=()),
    Bye(drafter=3, conversation=7),
    Prefilled(
        drafter=3,
        conversation=7,
        token=9,
        queue_len=2,
        pending_tokens=10,
        utils=(0.25, 0.5),
        queued_ms=1.5,
        verify_ms=20.0,
    ),
    Verdict(
        drafter=3,
        conversation=7,
        round=2,
        accepted=3,
        token=11,
        queue_len=1,
        utils=(1.0,),
        verify_ms=22.5,
    ),
]


def test_every_message_survives_the_wire_in_pieces() -> None:
    assert {type(m) for m in MESSAGES} == set(DSD_TYPES.values())
    frames = Frames()
    wire = b"".join(frames.pack(m) for m in MESSAGES)
    got: list[DsdEvent] = []
    for i in range(0, len(wire), 5):  # in pieces, as a stream delivers them
        got += frames.feed(wire[i : i + 5])
    assert got == MESSAGES and not frames.partial
    assert Frames().feed(wire[:-1])[-1] == MESSAGES[-2]  # the last frame is not whole yet


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Route(drafter=-1, conversation=0), "drafter"),
        (lambda: Routed(drafter=0, conversation=0, verifier=70000), "verifier"),
        (lambda: QueueReport(verifier=0, enqueued=-1, busy=False), "enqueued"),
        (lambda: QueueReport(verifier=0, enqueued=0, busy=1), "busy"),  # type: ignore[arg-type]
        (lambda: Prefill(drafter=0, conversation=0, prompt=(), answer=4), "prompt"),
        (lambda: Prefill(drafter=0, conversation=0, prompt=(1,), answer=0), "answer"),
        (lambda: Round(drafter=0, conversation=0, round=0, context=5, drafts=()), "round"),
        (lambda: Round(drafter=0, conversation=0, round=1, context=5, drafts=(-2,)), "drafts"),
        (
            lambda: Round(drafter=0, conversation=0, round=1, context=5, drafts=(1,) * 300),
            "drafts",
        ),
        (lambda: Verdict(drafter=0, conversation=0, round=1, accepted=-1, token=1), "accepted"),
        (
            lambda: Verdict(drafter=0, conversation=0, round=1, accepted=0, token=1, utils=(1.5,)),
            "utils",
        ),
        (lambda: Prefilled(drafter=0, conversation=0, token=1, verify_ms=-1.0), "verify_ms"),
    ],
)
def test_a_message_that_breaks_a_rule_is_refused(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        make()


def _frame(obj: object) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"\x00\x00\x00\x01\xc1", "malformed"),  # not msgpack
        (_frame([99, 1]), "unknown message type 99"),
        (_frame({"a": 1}), "malformed"),
        (_frame([41, 1, 2, 3]), "at most 2 fields"),
        (_frame([41, 1]), "malformed"),  # a field missing
        (_frame([46, 0, 0, 1, 5, [[1]]]), "nests"),
        (_frame([49, 0, 0, 1, 300, 1]), "accepted must be"),  # a rule broken on the wire
        (_frame([44, 0, 0, "yes"]), "busy must be"),
    ],
)
def test_bytes_that_are_not_a_message_are_the_peers_fault(wire: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        Frames().feed(wire)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    frames = Frames(max_frame=64)
    big = Frames().pack(Prefill(drafter=0, conversation=0, prompt=(1,) * 100, answer=4))
    with pytest.raises(RemoteProtocolError, match="over the limit of 64"):
        frames.feed(big[:8])  # its header says enough


def test_random_bytes_never_escape_as_anything_but_a_protocol_error() -> None:
    rng = np.random.default_rng(18)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        body = bytes(rng.integers(0, 256, size=n, dtype=np.uint8))
        with contextlib.suppress(RemoteProtocolError):  # and nothing else
            Frames().feed(len(body).to_bytes(4, "big") + body)
