"""Lab mode's door for the roles whose protocols have no handshake of their own (the
heterogeneous edge's, DSD's), and the records channel every such node keeps to its collector.

Layer: emu (sockets). Behind the Gate (``emu.lab.tls``: TLS, the attempt rate, the per-node
cap), a server's ``Door`` reads the connection's first message, a ``Join``
(``nodes.protocol.lab``): the node must be the one its certificate names (mutual TLS) or hold
that node's token (token mode, compared in constant time), and open a channel the server
serves. Only then is the stream handed to the channel's handler with the node it proved; a Join
that fails is refused before any state is made, recorded (who claimed what, and why), and
closed. A node opens every connection with ``join``.

The ``records`` channel is the collector's (``serve_records``): a node measures its clock's
offset to the collector's (NTP-style, as a DiP-SD user does against its edge,
``nodes.core.clock``) and streams its records, stamped on the collector's clock and numbered
per process (``nodes.core.reports``); the collector files each once under the node the Join
proved, whatever the record says. ``RecordsLink`` is the node's side: it keeps the channel up,
redials a broken one, and sends again what the last connection may have lost.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from emu.errors import ConfigError, PeerGone, RemoteProtocolError
from emu.lab.tls import Credentials, dial
from nodes.core.clock import ClockOffset
from nodes.core.reports import ReportQueue
from nodes.protocol.events import MAX_REPORT, ClockEcho, ClockProbe, Event, Report
from nodes.protocol.lab import Join, Joined, LabFrames
from nodes.stream import Sink, frame_events

__all__ = ["Door", "RecordsLink", "join", "open_records_link", "refuse", "serve_records"]

JOIN_TIMEOUT_S = 5.0  # a connection that has not joined by then is refused
CLOCK_PROBES = 8  # exchanges per records connection; the least-delay one counts
REDIAL_S = (0.25, 4.0)  # the records link's backoff between dials: first, most
_MAX_FRAME = MAX_REPORT + 1024

# What a broken records channel raises (dialling, joining, sending).
_BROKEN = (PeerGone, OSError, trio.BrokenResourceError, trio.ClosedResourceError)

Channel = Callable[[trio.abc.Stream, str], Awaitable[None]]


def refuse(sink: Sink, why: str, claims: str | None = None) -> None:
    """Record a refusal (``ev: refused``): why, and whom the peer claimed to be."""
    rec: dict[str, Any] = {"ev": "refused", "t": trio.current_time(), "why": why}
    if claims is not None:
        rec["claims"] = claims
    sink(rec)


class Door:
    """A Gate's handler: the Join, checked, then the channel's handler (``channels``)."""

    def __init__(
        self,
        cred: Credentials,
        channels: Mapping[str, Channel],
        sink: Sink,
        *,
        join_timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        self.cred, self.channels, self.sink = cred, channels, sink
        self.join_timeout_s = join_timeout_s

    def _refuse(self, why: str, claims: str | None = None) -> None:
        refuse(self.sink, why, claims)

    async def __call__(self, stream: trio.abc.Stream, proved: str | None) -> None:
        try:
            with trio.fail_after(self.join_timeout_s):
                frames, ev = LabFrames(max_frame=4096), None
                while ev is None:
                    data = await stream.receive_some(4096)
                    if not data:
                        raise PeerGone("it closed before it joined")
                    got = frames.feed(data)
                    if got:
                        ev = got[0]
                        if len(got) > 1 or frames.partial:
                            raise RemoteProtocolError("it sent more before it was Joined")
        except trio.TooSlowError:
            self._refuse(f"no Join within {self.join_timeout_s:g} s", proved)
        except (RemoteProtocolError, PeerGone) as exc:
            self._refuse(f"no Join: {exc}", proved)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._refuse("no Join: the link broke", proved)
        else:
            node = self._admit(ev, proved)
            if node is not None:
                assert isinstance(ev, Join)
                try:
                    await stream.send_all(frames.pack(Joined(node=node)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await self.channels[ev.channel](stream, node)
                return
        with trio.move_on_after(1):
            await stream.aclose()

    def _admit(self, ev: Event, proved: str | None) -> str | None:
        """The node the Join proves, or None (refused and recorded)."""
        if not isinstance(ev, Join):
            self._refuse(f"the first message must be a Join, got {type(ev).__name__}", proved)
            return None
        if self.cred.auth == "mtls" and ev.node != proved:
            self._refuse(f"it joined as {ev.node} but its certificate names {proved}", ev.node)
            return None
        if self.cred.auth == "token":
            known = self.cred.tokens.get(ev.node, "")
            if not (known and hmac.compare_digest(known.encode(), ev.token.encode())):
                self._refuse(f"{ev.node}'s token does not match", ev.node)
                return None
        if ev.channel not in self.channels:
            served = ", ".join(self.channels)
            self._refuse(f"channel {ev.channel!r} is not served here ({served})", ev.node)
            return None
        return ev.node


async def join(stream: trio.abc.Stream, cred: Credentials, *, channel: str, epoch: int) -> None:
    """Open ``channel`` on a server's Door as ``cred.node``; PeerGone if it refuses."""
    frames = LabFrames(max_frame=4096)
    join = Join(node=cred.node, channel=channel, epoch=epoch, token=cred.token)
    try:
        await stream.send_all(frames.pack(join))
        with trio.fail_after(JOIN_TIMEOUT_S):
            async for ev in frame_events(stream, frames):
                if isinstance(ev, Joined):
                    return
                raise PeerGone(f"the server answered the Join with {type(ev).__name__}")
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
        raise PeerGone(f"the server refused {cred.node}'s {channel} channel ({exc!r})") from exc
    except RemoteProtocolError as exc:
        raise PeerGone(f"the server's answer to the Join: {exc}") from exc
    raise PeerGone(f"the server refused {cred.node}'s {channel} channel (it closed)")


async def serve_records(stream: trio.abc.Stream, node: str, file: Sink) -> None:
    """The collector's side of a records channel: clock probes answered at once, and each
    reported record filed with ``file``, under ``node``. Returns when the stream ends."""
    frames = LabFrames(max_frame=_MAX_FRAME)
    try:
        async for ev in frame_events(stream, frames):
            now = trio.current_time() * 1e3
            if isinstance(ev, ClockProbe):
                echo = ClockEcho(probe_ms=ev.sent_ms, received_ms=now, sent_ms=now)
                await stream.send_all(frames.pack(echo))
            elif isinstance(ev, Report):
                for line in ev.lines.splitlines():
                    rec = json.loads(line) if line.strip() else None
                    if not isinstance(rec, dict) or not isinstance(rec.get("ev"), str):
                        raise RemoteProtocolError("a Report line must be a JSON object with an ev")
                    file({**rec, "node": node})
            else:
                raise RemoteProtocolError(f"{type(ev).__name__} on the records channel")
    except (RemoteProtocolError, ValueError) as exc:
        file({"ev": "refused", "t": trio.current_time(), "claims": node, "why": str(exc)[:300]})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


class RecordsLink:
    """A node's records channel to its collector at ``connect``: ``emit`` records (to
    ``sink`` here, and to the collector, on its clock once measured); ``run`` keeps the
    channel up until ``close``; ``flush`` sends what waits."""

    def __init__(
        self, connect: tuple[str, int], cred: Credentials, *, server: str, sink: Sink
    ) -> None:
        self.connect, self.cred, self.server, self.sink = connect, cred, server, sink
        self.queue = ReportQueue(epoch=secrets.randbits(31), max_chars=MAX_REPORT)
        self.clock: ClockOffset | None = None
        self.measured = trio.Event()  # the first connection measured the clock
        self.dials = 0
        self._stream: trio.abc.Stream | None = None
        self._frames = LabFrames(max_frame=_MAX_FRAME)
        self._lock = trio.Lock()
        self._closed = False

    def emit(self, rec: Mapping[str, Any]) -> None:
        if self.clock is not None and isinstance(t := rec.get("t"), float | int):
            rec = {**rec, "t": self.clock.to_edge(float(t))}
        self.sink(self.queue.add(rec))

    async def run(self) -> None:
        backoff = REDIAL_S[0]
        while not self._closed:
            try:
                stream = await self._connect()
                backoff = REDIAL_S[0]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_closed, stream)
                    while True:
                        await trio.sleep_until(max(trio.current_time(), self.queue.next_at()))
                        await self.flush()
                        await trio.sleep(0.05)  # nothing waits: look again soon
            except* _BROKEN:
                self._stream = None
            if not self._closed:
                self.queue.rewind()  # what the broken link may have lost goes again
                await trio.sleep(backoff)
                backoff = min(REDIAL_S[1], 2 * backoff)

    @staticmethod
    async def _until_closed(stream: trio.abc.Stream) -> None:
        """The collector says nothing after its echoes: the stream returns only when it ends
        (a collector that died), which sending alone might not notice for long."""
        await stream.receive_some(4096)
        raise PeerGone("the collector closed the records channel")

    async def _connect(self) -> trio.abc.Stream:
        self.dials += 1
        stream = await dial(*self.connect, self.cred, server=self.server)
        await join(stream, self.cred, channel="records", epoch=self.queue.epoch)
        clock = ClockOffset()
        frames = self._frames
        for _ in range(CLOCK_PROBES):
            t1 = trio.current_time()
            await stream.send_all(frames.pack(ClockProbe(sent_ms=t1 * 1e3)))
            echo = None
            while echo is None:
                data = await stream.receive_some(4096)
                if not data:
                    raise PeerGone("the collector closed the records channel")
                got = [e for e in frames.feed(data) if isinstance(e, ClockEcho)]
                echo = got[0] if got else None
            clock.add(t1, echo.received_ms / 1e3, echo.sent_ms / 1e3, trio.current_time())
        self.clock = clock
        self._stream = stream
        self.emit({"ev": "clock", "t": trio.current_time(), **clock.record()})
        self.measured.set()
        return stream

    async def flush(self, *, force: bool = True) -> None:
        """Send what waits (PeerGone, or trio's errors, if the channel breaks: it stays)."""
        async with self._lock:
            stream = self._stream
            now = trio.current_time()
            if stream is None or not self.queue.due(now, force=force):
                return
            while (lines := self.queue.batch()) is not None:
                await stream.send_all(self._frames.pack(Report(lines=lines)))
                self.queue.sent(now)
            self.queue.reported(now)

    async def close(self, *, timeout_s: float = 2.0) -> None:
        """The last records out (within ``timeout_s``), and the channel closed: ``run``
        returns."""
        self._closed = True
        with trio.move_on_after(timeout_s), contextlib.suppress(*_BROKEN):
            await self.flush()
        if self._stream is not None:
            with trio.move_on_after(1):
                await self._stream.aclose()
        self._stream = None


async def open_records_link(
    nursery: trio.Nursery, to: tuple[str, int], cred: Credentials, *, server: str, what: str,
    sink: Sink, wait_s: float,
) -> RecordsLink:  # fmt: skip
    """``cred.node``'s records channel to its collector ``what`` (certificate name ``server``)
    at ``to``, kept up in ``nursery``; its clock measured within ``wait_s`` (ConfigError if
    not; 0: not waited for)."""
    link = RecordsLink(to, cred, server=server, sink=sink)
    nursery.start_soon(link.run)
    if wait_s > 0:
        with trio.move_on_after(wait_s):
            await link.measured.wait()
        if not link.measured.is_set():
            await link.close(timeout_s=0.0)
            raise ConfigError(
                f"--connect: no {what} admitted {cred.node} at {to[0]}:{to[1]} within "
                f"{wait_s:g} s (limits.reconnect_give_up_s)"
            )
    return link
