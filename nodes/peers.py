"""The verifier's connections: one task per peer that reads its events into the core, a writer
that sends what is queued for it, heartbeats, deadlines, and the boundary that keeps every
fault of one peer to that peer.

Layer: nodes (trio shell over ``nodes.protocol`` and ``nodes.core.verifier``). The edge node
(``nodes.edge``) runs the pipeline; this module serves its peers. Whatever one connection
sends, the worst outcome is that connection closed with an Error: every exception from its
handling is caught here, counted and recorded. Each peer is held to the ``Limits``
(``nodes.core.guard``): a handshake deadline, heartbeats, frame sizes, a message rate and a cap
on connections; a joined user the edge waits on is dropped after ``idle_timeout_s`` of silence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from nodes.core.guard import RateLimit
from nodes.core.verifier import EdgeSettings, Member, Refusal, VerifierCore, user_node
from nodes.protocol import (
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
    Report,
    Role,
    SessionStart,
)
from nodes.stream import Sink, receive_event

__all__ = ["VerifierPeers"]

_OUTBOX = 64  # events queued for one peer before it counts as not keeping up


@dataclass(slots=True)
class _Peer:
    """One connection, joined or not."""

    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    rate: RateLimit
    member: Member | None = None
    proved: str | None = None  # the node its certificate names (mutual TLS)
    opened: float = 0.0
    left_because: str = ""


class VerifierPeers:
    """The connections of a verifier whose state is ``core``. After each event it hands the
    core, it calls ``apply`` (the node does the core's actions) and, for a session or a draft,
    ``wake`` (the pipeline may be waiting on it). A joined user's Reports go to ``reports``,
    each record filed under that user (dropped where there is no ``reports``)."""

    def __init__(
        self,
        core: VerifierCore,
        settings: EdgeSettings,
        sink: Sink,
        *,
        apply: Callable[[], None],
        wake: Callable[[], None],
        reports: Sink | None = None,
    ) -> None:
        self.core, self.cfg, self.sink = core, settings, sink
        self._apply, self._wake = apply, wake
        self.reports = reports
        self._outboxes: dict[Connection, trio.MemorySendChannel[bytes]] = {}
        self._open = 0

    def connected(self, conn: Connection) -> bool:
        return conn in self._outboxes

    def send(self, conn: Connection, event: Event) -> bool:
        """Queue ``event`` for ``conn``'s writer; False if it cannot take it (gone, closed,
        or not keeping up)."""
        out = self._outboxes.get(conn)
        return out is not None and _post(out, conn, event)

    def close(self, conn: Connection, error: Error | None = None) -> None:
        """Close ``conn`` once its writer has sent what is queued (``error`` last)."""
        out = self._outboxes.get(conn)
        if out is not None:
            if error is not None:
                _post(out, conn, error)
            out.close()

    def farewell(self, reason: str) -> None:
        """Say Bye on every connection and close each once its writer has sent what is
        queued: the edge is stopping, and its users should stop rather than redial."""
        for conn, out in list(self._outboxes.items()):
            _post(out, conn, Bye(reason=reason))
            out.close()

    async def serve_stream(self, stream: trio.abc.Stream, proved: str | None = None) -> None:
        """Serve one peer's connection until it ends. Never raises for anything the peer
        does: the worst outcome is this connection closed with an Error. ``proved``: the node
        the transport proved the peer to be (its certificate's name), which its Hello must
        match."""
        lim = self.cfg.limits
        conn = Connection(
            Role.EDGE,
            max_frame=lim.max_session_frame_bytes,
            max_small_frame=lim.max_frame_bytes,
            max_draft_len=self.cfg.max_draft_len,
        )
        send, recv = trio.open_memory_channel[bytes](_OUTBOX)
        peer = _Peer(conn=conn, outbox=send, rate=RateLimit(lim.messages_per_s), proved=proved)
        self._outboxes[conn] = send
        pinger = trio.CancelScope()
        stopping = False
        self._open += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_writer, stream, recv)
                try:
                    if self._open > lim.connections(self.cfg.expected_users):
                        raise Refusal(
                            f"{self._open - 1} connections open, the most allowed",
                            ErrorCode.OVERLOADED,
                        )
                    nursery.start_soon(self._heartbeats, peer, pinger)
                    await self._read(stream, peer)
                except PeerGone:
                    pass
                except trio.Cancelled:
                    stopping = True  # the edge is stopping: nobody leaves a plan
                    raise
                except RemoteProtocolError as exc:
                    self._fault(peer, ErrorCode(exc.code), exc, "protocol_error")
                except Refusal as exc:
                    self._fault(peer, exc.code, exc, "refused")
                except Exception as exc:  # the boundary: one peer, never the edge
                    self._fault(peer, ErrorCode.INTERNAL, exc, "connection_error")
                finally:
                    pinger.cancel()
                    if peer.member is not None and not stopping:
                        self.core.leave(peer.member, peer.left_because, trio.current_time())
                        self._apply()
                    send.close()
                    nursery.cancel_scope.deadline = trio.current_time() + 1.0  # the Error's way out
        finally:
            self._open -= 1
            self._outboxes.pop(conn, None)

    def _fault(self, peer: _Peer, code: ErrorCode, exc: Exception, ev: str) -> None:
        """Record why a peer is being closed (``ev``: protocol_error, refused, or
        connection_error for an exception of the edge's own) and tell it, if it listens. A
        joined member's silence is recorded as its leave (``user N silent``), once."""
        said = (str(exc) or type(exc).__name__)[:1000]
        if code is ErrorCode.TIMEOUT and peer.member is not None:
            peer.left_because = f"user {peer.member.uid} silent"
            _post(peer.outbox, peer.conn, Error(error=int(code), message=said))
            return
        stats = self.core.stats
        if ev == "protocol_error":
            stats.protocol_errors += 1
        elif ev == "refused":
            stats.refused += 1
        else:
            stats.connection_errors += 1
        uid = peer.member.uid if peer.member is not None else None
        self.sink(
            {"ev": ev, "t": trio.current_time(), "user": uid, "code": int(code), "error": said}
        )
        _post(peer.outbox, peer.conn, Error(error=int(code), message=said))

    async def _heartbeats(self, peer: _Peer, scope: trio.CancelScope) -> None:
        """Tell a joined peer the edge is alive when it has heard nothing else from the edge
        for ``heartbeat_ms`` (its own liveness check: a silent edge is a broken link it
        should redial). A user being verified gets verdicts, and no heartbeat."""
        every = self.cfg.limits.heartbeat_ms / 1e3
        beat = -math.inf

        def due(m: Member | None) -> float:
            return (max(beat, m.last_verdict) if m is not None else trio.current_time()) + every

        with scope:
            while every > 0:
                await trio.sleep_until(due(peer.member))
                m = peer.member
                if m is not None and not m.alive:
                    return  # it left the plan: its connection is closing
                # The same expression as the wake-up time: a float that rounds the other way
                # must not spin this loop at one instant of a virtual clock.
                now = trio.current_time()
                if m is not None and now >= due(m):
                    beat = now
                    sent = min(max(0.0, now * 1e3), 1e15)
                    if not _post(peer.outbox, peer.conn, Heartbeat(sent_ms=sent)):
                        return

    async def _next(self, stream: trio.abc.Stream, peer: _Peer) -> Event:
        """The peer's next event, within its message rate and its deadline: the handshake's
        until it has joined, then the idle timeout whenever the edge waits on it."""
        lim = self.cfg.limits
        while True:
            if peer.member is None:
                deadline = peer.opened + lim.handshake_timeout_s
            elif lim.idle_timeout_s > 0:
                # Look again every quarter of the timeout: what the edge waits on changes
                # as it sends (a verdict asks for a draft).
                deadline = trio.current_time() + lim.idle_timeout_s / 4
            else:
                deadline = math.inf
            with trio.move_on_at(deadline):
                ev = await receive_event(peer.conn, stream)
                if not peer.rate.allow(trio.current_time()):
                    raise Refusal(
                        f"more than {lim.messages_per_s:g} messages a second",
                        ErrorCode.OVERLOADED,
                    )
                return ev
            if peer.member is None:
                raise Refusal(f"no Hello within {lim.handshake_timeout_s:g} s", ErrorCode.TIMEOUT)
            if (silent := self.core.silent_for(peer.member, trio.current_time())) >= (
                lim.idle_timeout_s
            ):
                raise Refusal(
                    f"silent for {silent:.3g} s while the edge waited on it", ErrorCode.TIMEOUT
                )

    async def _read(self, stream: trio.abc.Stream, peer: _Peer) -> None:
        peer.opened = trio.current_time()
        while True:
            ev = await self._next(stream, peer)
            if isinstance(ev, Closed | Bye | Error):
                return
            member = peer.member
            now = trio.current_time()
            if member is not None:
                member.heard = now
            if isinstance(ev, Hello):
                peer.member = self.core.join(ev, peer.conn, now, peer.proved)
            elif member is None or isinstance(ev, Heartbeat):
                continue  # only Heartbeat can come before Hello; the table enforces the rest
            elif isinstance(ev, SessionStart):
                self.core.session(member, ev)
                self._wake()
            elif isinstance(ev, Draft):
                self.core.drafted(member, ev, now)
                self._wake()
            elif isinstance(ev, ClockProbe):
                at = now * 1e3
                sent = max(at, trio.current_time() * 1e3)
                _post(peer.outbox, peer.conn, ClockEcho(probe_ms=ev.sent_ms, received_ms=at,
                                                        sent_ms=sent))  # fmt: skip
            elif isinstance(ev, Report):
                self._file_report(member, ev)
            self._apply()

    def _file_report(self, member: Member, report: Report) -> None:
        """A user's records, each filed under that user whatever it says it is."""
        if self.reports is None:
            return
        for line in report.lines.splitlines():
            try:
                rec = json.loads(line) if line.strip() else None
            except ValueError as exc:
                raise RemoteProtocolError(
                    f"a Report line is not JSON: {exc}", code=ErrorCode.MALFORMED
                ) from exc
            if rec is None:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("ev"), str):
                raise RemoteProtocolError(
                    "a Report line must be a JSON object with a string ev",
                    code=ErrorCode.MALFORMED,
                )
            self.reports({**rec, "user": member.uid, "node": user_node(member.uid)})


async def _writer(stream: trio.abc.Stream, recv: trio.MemoryReceiveChannel[bytes]) -> None:
    try:
        async with recv:
            async for data in recv:
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await stream.aclose()


def _post(send: trio.MemorySendChannel[bytes], conn: Connection, event: Event) -> bool:
    """Queue an event's bytes for the writer; False if the user is not keeping up or its
    connection can no longer carry it (closed, or failed)."""
    try:
        send.send_nowait(conn.send(event))
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        return False
    except LocalProtocolError:
        return False
    return True
