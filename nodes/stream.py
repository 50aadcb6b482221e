"""What the node shells share: reading the next protocol event from a stream, a stream's
framed messages (hetnet's and DSD's), a stream written by one task, records, and which
refusals are final.

Layer: nodes (trio). Stream failures are mapped here, once, to ``PeerGone``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic

import trio

from emu.errors import PeerGone, RemoteProtocolError
from nodes.protocol import NEED_DATA, Connection, ErrorCode, Event
from nodes.protocol.frames import E, TypedFrames

__all__ = ["FINAL_REFUSALS", "EdgeRefused", "Outbox", "Sink", "frame_events", "receive_event"]

# Where a node sends its records (one dict per round, batch, plan...).
Sink = Callable[[Mapping[str, Any]], None]
_CHUNK = 65536
# Refusals that redialling cannot change: who the user is, or what it sends.
FINAL_REFUSALS = (ErrorCode.AUTH, ErrorCode.VERSION, ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


class EdgeRefused(PeerGone):
    """A server (an edge, a router) refused this user for good: an unknown id, a bad auth,
    another version."""


async def receive_event(conn: Connection, stream: trio.abc.Stream) -> Event:
    """The connection's next event, reading from ``stream`` as needed.

    RemoteProtocolError if the peer broke the protocol; PeerGone if the stream broke.
    """
    while True:
        ev = conn.next_event()
        if ev is not NEED_DATA:
            assert isinstance(ev, Event)
            return ev
        try:
            data = await stream.receive_some(_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__  # a TLS alert says why: the peer refused our certificate
            raise PeerGone(f"the link broke ({cause})" if cause else "the link broke") from exc
        conn.receive_data(data)


async def frame_events(
    stream: trio.abc.Stream, frames: TypedFrames[E], *, chunk: int = _CHUNK
) -> AsyncIterator[E]:
    """The stream's messages as they complete, until it ends (RemoteProtocolError for a cut
    frame or a broken rule; trio's errors if the stream breaks)."""
    while True:
        data = await stream.receive_some(chunk)
        if not data:
            if frames.partial:
                raise RemoteProtocolError("the stream ended inside a frame")
            return
        for ev in frames.feed(data):
            yield ev


class Outbox(Generic[E]):
    """A stream written by one task (``run``): ``post`` never blocks its caller, and a
    stream that breaks or closes loses only what was posted to it."""

    def __init__(self, stream: trio.abc.Stream, frames: TypedFrames[E]) -> None:
        self.stream, self.frames = stream, frames
        self._send, self._recv = trio.open_memory_channel[bytes](math.inf)

    def post(self, event: E) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait(self.frames.pack(event))

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        try:
            async with self._recv:
                async for data in self._recv:
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await self.stream.aclose()
