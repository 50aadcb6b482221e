"""What the node shells share: reading the next protocol event from a stream, records, and
which refusals are final.

Layer: nodes (trio). Stream failures are mapped here, once, to ``PeerGone``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from emu.errors import PeerGone
from nodes.protocol import NEED_DATA, Connection, ErrorCode, Event

__all__ = ["FINAL_REFUSALS", "EdgeRefused", "Sink", "receive_event"]

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
            raise PeerGone("the link broke") from exc
        conn.receive_data(data)
