"""The router node: tells each user which verifier to dial, and the user's side of asking.

Layer: nodes (trio shell over ``nodes.protocol`` and ``nodes.core.route``). A user dials the
router and says Hello; the router answers with a Redirect naming the verifier that serves it
(sticky: the same one on every redial) and closes; the user then dials that verifier and says
Hello there. The router is not on the path of drafts and verdicts. The same code runs in the
simulation (addresses are node names on an in-memory transport, port 0), in Mininet hosts and
on lab machines.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from nodes.core.guard import Limits
from nodes.core.route import RouterCore
from nodes.protocol import (
    PROTOCOL_VERSION,
    Closed,
    Connection,
    Error,
    ErrorCode,
    Event,
    Hello,
    Redirect,
    Role,
)
from nodes.stream import FINAL_REFUSALS, EdgeRefused, Sink, receive_event

__all__ = ["RouterNode", "ask_router", "via_router"]

Dial = Callable[[], Awaitable[trio.abc.Stream]]
DialNode = Callable[[Redirect], Awaitable[trio.abc.Stream]]


class RouterNode:
    """Answers each Hello with the verifier that serves its user. ``where`` maps each
    verifier's name to its (host, port). Peers are held to the ``limits``: a Hello within
    the handshake timeout, frames within their size, and at most ``limits.connections(users)``
    connections open at once (a connection is brief: one question, one answer)."""

    def __init__(
        self,
        core: RouterCore,
        where: Mapping[str, tuple[str, int]],
        *,
        sink: Sink,
        limits: Limits | None = None,
        auth: str = "",
        name: str = "router",
        users: int = 0,
    ) -> None:
        missing = [v for v in core.verifiers if v not in where]
        if missing:
            raise ValueError(f"no address for verifier(s) {', '.join(missing)}")
        self.core, self.where, self.sink = core, dict(where), sink
        self.limits = limits or Limits()
        self.auth, self.name = auth, name
        self.max_connections = self.limits.connections(users)
        self.routed = 0
        self.refused = 0
        self._open = 0

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """One user's question, answered; never raises for anything the peer does."""
        lim = self.limits
        conn = Connection(Role.EDGE, max_frame=lim.max_frame_bytes)
        self._open += 1
        try:
            async with stream:
                answer: Event
                try:
                    if self._open > self.max_connections:
                        raise _Full(f"{self._open - 1} connections open, the most allowed")
                    with trio.fail_after(lim.handshake_timeout_s):
                        hello = await receive_event(conn, stream)
                    if isinstance(hello, Closed):
                        return  # gone before it asked: nothing to answer
                    answer = self._answer(hello)
                except trio.TooSlowError:
                    answer = self._refuse(
                        None, ErrorCode.TIMEOUT, f"no Hello within {lim.handshake_timeout_s:g} s"
                    )
                except RemoteProtocolError as exc:
                    answer = self._refuse(None, ErrorCode(exc.code), str(exc))
                except _Full as exc:
                    answer = self._refuse(None, ErrorCode.OVERLOADED, str(exc))
                data = conn.send(answer)
                with trio.move_on_after(lim.handshake_timeout_s):
                    await stream.send_all(data)
        except (PeerGone, LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer is gone, or its connection can carry nothing more
        finally:
            self._open -= 1

    def _answer(self, hello: Event) -> Event:
        if not isinstance(hello, Hello):
            return self._refuse(None, ErrorCode.OUT_OF_ORDER, "the router answers only Hello")
        uid = hello.user_id
        if self.auth and not hmac.compare_digest(hello.auth.encode(), self.auth.encode()):
            return self._refuse(uid, ErrorCode.AUTH, "auth refused")
        node = self.core.route(uid)
        host, port = self.where[node]
        self.routed += 1
        self.sink(
            {"ev": "route", "t": trio.current_time(), "node": self.name, "user": uid, "to": node}
        )
        return Redirect(node=node, host=host, port=port)

    def _refuse(self, uid: int | None, code: ErrorCode, why: str) -> Error:
        self.refused += 1
        self.sink({"ev": "refused", "t": trio.current_time(), "node": self.name, "user": uid,
                   "code": int(code), "error": why})  # fmt: skip
        return Error(error=int(code), message=why[:1000])


class _Full(Exception):
    """Too many connections open at once."""


async def ask_router(stream: trio.abc.Stream, user_id: int, *, auth: str = "") -> Redirect:
    """Ask the router on ``stream`` which verifier serves ``user_id``: EdgeRefused for a
    refusal that redialling cannot change (as from an edge), PeerGone for any other failure."""
    conn = Connection(Role.USER)
    async with stream:
        try:
            await stream.send_all(conn.send(Hello(version=PROTOCOL_VERSION, user_id=user_id,
                                                  auth=auth)))  # fmt: skip
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerGone("the link to the router broke") from exc
        try:
            ev = await receive_event(conn, stream)
        except RemoteProtocolError as exc:  # a broken answer: worth another try
            raise PeerGone(f"the router broke the protocol: {exc}") from exc
    if isinstance(ev, Redirect):
        return ev
    if isinstance(ev, Error):
        said = f"the router refused: error {ev.error}: {ev.message}"
        raise EdgeRefused(said) if ev.error in FINAL_REFUSALS else PeerGone(said)
    raise PeerGone(f"the router answered {type(ev).__name__}, not a Redirect")


def via_router(user_id: int, dial_router: Dial, dial_node: DialNode, *, auth: str = "") -> Dial:
    """A user's dial through a router: ask it, then dial the verifier it names. The user node
    sees one stream, as with a direct dial; each redial asks the router again."""

    async def dial() -> trio.abc.Stream:
        redirect = await ask_router(await dial_router(), user_id, auth=auth)
        return await dial_node(redirect)

    return dial
