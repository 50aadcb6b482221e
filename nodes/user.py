"""The user node: drafts on its device, uploads drafts, applies the edge's verdicts.

Layer: nodes (trio shell over ``nodes.protocol`` and its core, ``nodes.core.client``, which
keeps the sessions, what survives a broken link, and the records). The same code runs in the
simulation (an in-memory link, virtual clock), in a Mininet host (a TCP socket) and on lab
hardware.

One round: draft ``next_draft_len`` tokens (the backend's time passes through the pacer), send
the Draft, wait for its Verdict, commit. A length of 0 means the edge decodes for this user
alone: the user only receives. Every round is emitted as one ``round`` record to the sink.

Liveness: the edge heartbeats a user it has sent nothing for ``heartbeat_ms`` (the Welcome says
how often), and the user takes an edge silent for ``silence_s`` (the scenario's idle timeout;
else eight heartbeats) as a broken link. The user sends no heartbeats: the edge only waits on it
for a draft or a session, and those are its signs of life. ``serve`` redials a broken
link with exponential backoff and resumes the session in flight as the same user: its prompt is
the old prompt plus every token committed so far. An edge that holds a session of this user in
its ledger hands it back (Welcome.resume, then Resume): a restarted user goes on from there.

Lab mode (``emu.lab``): the Hello carries the user's token (``auth``) where the lab uses tokens;
after each Welcome the user measures its clock's offset to the edge's (``clock_probes``
NTP-style exchanges, ``nodes.core.clock``), and from then on its records carry times on the
edge's clock; with ``report`` it also streams them to the edge (Report, at most every
``REPORT_EVERY_S``, whenever it has some and is not drafting, and before it says Bye). A new
connection carries again what the last one sent in its last ``RESEND_S`` (a broken link, or an
edge that died, may have lost it); each record is numbered, and the edge drops what it has
(``nodes.core.reports``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from nodes.backends import DraftBackend
from nodes.core.client import ClientCore, UserStats
from nodes.core.clock import ClockOffset
from nodes.core.reports import ReportQueue
from nodes.pacing import Pacer
from nodes.protocol import (
    PROTOCOL_VERSION,
    Bye,
    ClockEcho,
    ClockProbe,
    Closed,
    Connection,
    Draft,
    Error,
    Event,
    Hello,
    PlanUpdate,
    Report,
    Resume,
    Role,
    State,
    Verdict,
    Welcome,
)
from nodes.protocol.events import MAX_REPORT
from nodes.stream import FINAL_REFUSALS, EdgeRefused, Sink, receive_event

__all__ = ["FINAL_REFUSALS", "Dial", "EdgeRefused", "Sink", "UserNode", "UserStats"]

Dial = Callable[[], Awaitable[trio.abc.Stream]]
BACKOFF_S = (0.1, 1.0)  # the first redial's wait, and the longest
SILENT_BEATS = 8  # heartbeats an edge may miss before its link is taken for broken
PROBE_GAP_S = 0.01  # between two clock probes


class UserNode:
    """A drafting user. ``prompts`` yields token-id prompts, one per session."""

    def __init__(
        self,
        user_id: int,
        drafter: DraftBackend,
        prompts: Iterator[Sequence[int]],
        *,
        sink: Sink,
        pacer: Pacer | None = None,
        max_new_tokens: int = 0,
        device: Mapping[str, float] | None = None,
        silence_s: float = 0.0,
        auth: str = "",
        clock_probes: int = 0,
        report: bool = False,
    ) -> None:
        self.core = ClientCore(
            user_id, functools.partial(next, prompts), max_new_tokens=max_new_tokens
        )
        self.drafter = drafter
        self.sink = sink
        self.pacer = pacer or Pacer()
        self.device = dict(device or {})
        self.silence_s = silence_s  # 0: SILENT_BEATS of the edge's heartbeats
        self.auth = auth
        self.clock_probes = clock_probes
        self.clock: ClockOffset | None = None  # the last connection's estimate
        self.report = report
        # Each reported record is numbered within this process (``epoch``): the edge drops the
        # ones it has, so a new connection may carry again what the last one may have lost.
        self._reports = ReportQueue(epoch=secrets.randbits(31), max_chars=MAX_REPORT)
        self.conn = Connection(Role.USER)
        self._beat_s = 0.0

    @property
    def stats(self) -> UserStats:
        return self.core.stats

    @property
    def user_id(self) -> int:
        return self.core.user_id

    @user_id.setter
    def user_id(self, uid: int) -> None:
        self.core.user_id = uid

    async def serve(
        self,
        dial: Dial,
        *,
        first: trio.abc.Stream | None = None,
        give_up_s: float = 30.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Serve over connections from ``dial`` (``first``, if given, is the first), redialling
        a broken link with jittered exponential backoff, until cancelled, until the edge ends
        cleanly or refuses the user for good (EdgeRefused), or until ``give_up_s`` pass
        without a connection that committed a token (PeerGone)."""
        rng = rng if rng is not None else np.random.default_rng(self.user_id)
        backoff, down_since = BACKOFF_S[0], None
        stream = first
        while True:
            if stream is None:
                try:
                    with trio.move_on_after(max(give_up_s, 1.0)):
                        stream = await dial()
                except EdgeRefused:
                    raise
                except (OSError, PeerGone):  # no way through yet (a router that broke off too)
                    pass
            if stream is not None:
                committed = self.stats.committed_tokens
                try:
                    await self.run(stream)
                    return
                except EdgeRefused:
                    raise
                except PeerGone as exc:
                    self._emit({"ev": "link_lost", "t": trio.current_time(),
                                "user": self.user_id, "why": str(exc)})  # fmt: skip
                stream = None
                if self.stats.committed_tokens > committed:  # that link worked
                    backoff, down_since = BACKOFF_S[0], None
            now = trio.current_time()
            down_since = now if down_since is None else down_since
            if now - down_since > give_up_s:
                raise PeerGone(f"user {self.user_id}: no link to the edge for {give_up_s:g} s")
            await trio.sleep(backoff * float(rng.uniform(0.5, 1.5)))
            backoff = min(2 * backoff, BACKOFF_S[1])

    async def run(self, stream: trio.abc.Stream) -> None:
        """Serve sessions over ``stream`` until cancelled, the edge says Bye, or it fails
        (PeerGone for a broken link or an Error from the edge)."""
        self._stream = stream
        self.conn = Connection(Role.USER)
        self._beat_s = 0.0
        # What the last connection sent lately may not have reached the edge's directory (the
        # edge died before it read it): it goes again, and the edge drops what it has.
        self._reports.rewind()
        try:
            await self._send(
                Hello(
                    version=PROTOCOL_VERSION,
                    user_id=self.user_id,
                    device=self.device,
                    auth=self.auth,
                )
            )
            welcome = await self._next()
            if not isinstance(welcome, Welcome):
                raise RemoteProtocolError(f"expected Welcome, got {type(welcome).__name__}")
            self._beat_s = welcome.heartbeat_ms / 1e3
            if welcome.resume:  # the edge holds a session of ours: wait for it
                resume = await self._next()
                if not isinstance(resume, Resume):
                    raise RemoteProtocolError(f"expected Resume, got {type(resume).__name__}")
                self.core.resume(resume, trio.current_time())
            if self.clock_probes:
                await self._measure_clock()
            self.core.welcomed(trio.current_time())
            await self._flush()
            while True:
                await self._session()
        except _EdgeClosed:
            return
        except RemoteProtocolError as exc:
            with trio.move_on_after(1):
                await self._send_quietly(Error(error=exc.code, message=str(exc)[:1000]))
            raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                with contextlib.suppress(PeerGone, LocalProtocolError):
                    await self._send_report(force=True)
                await self._send_quietly(Bye(reason="user stopping"))
                await stream.aclose()

    async def _measure_clock(self) -> None:
        """``clock_probes`` exchanges with the edge; the least-delay one sets the offset."""
        clock = ClockOffset()
        for i in range(self.clock_probes):
            if i:
                await trio.sleep(PROBE_GAP_S)
            t1 = trio.current_time()
            await self._send(ClockProbe(sent_ms=t1 * 1e3))
            while not isinstance(echo := await self._next(), ClockEcho) or (
                echo.probe_ms != t1 * 1e3
            ):
                pass  # an older probe's echo
            clock.add(t1, echo.received_ms / 1e3, echo.sent_ms / 1e3, trio.current_time())
        self.clock = clock
        self._emit({"ev": "clock", "t": trio.current_time(), "user": self.user_id,
                    **clock.record()})  # fmt: skip

    def _emit(self, rec: Mapping[str, Any]) -> None:
        """One record to the sink (and to the next Report), its time on the edge's clock."""
        if self.clock is not None and isinstance(t := rec.get("t"), float | int):
            rec = {**rec, "t": self.clock.to_edge(float(t))}
        if self.report:
            rec = self._reports.add(rec)
        self.sink(rec)

    def _can_report(self) -> bool:
        """Records wait to be reported, and the connection may carry them now."""
        return (
            self.report
            and self._reports.pending
            and self.conn.state
            not in (
                State.START,
                State.GREETED,
                State.CLOSED,
            )
        )

    async def _send_report(self, *, force: bool = False) -> None:
        """The records not yet reported, in Reports of at most MAX_REPORT characters; only
        every REPORT_EVERY_S unless ``force``. What a broken link did not carry stays."""
        now = trio.current_time()
        if not self._can_report() or not self._reports.due(now, force=force):
            return
        while (lines := self._reports.batch()) is not None:
            await self._send(Report(lines=lines))
            self._reports.sent(now)
        self._reports.reported(now)

    async def _session(self) -> None:
        """One session, or the rest of the one a broken link interrupted."""
        core = self.core
        start = core.open_session(trio.current_time())
        self.drafter.start(start.prompt)
        await self._send(start)
        v = await self._verdict()
        self.drafter.commit(0, v.token)
        core.first_token(v, trio.current_time())
        await self._flush()
        while not v.done:
            drafted: tuple[int, ...] = ()
            draft_ms = 0.0
            if (n := v.next_draft_len) > 0:
                w0 = time.perf_counter()
                out = self.drafter.draft(n)
                await self.pacer.pace(out.compute_ms, (time.perf_counter() - w0) * 1e3)
                drafted, draft_ms = tuple(out.tokens), out.compute_ms
                await self._send(
                    Draft(
                        round=self.conn.round + 1,
                        base_len=self.conn.position,
                        tokens=out.tokens,
                        draft_ms=draft_ms,
                        top_ids=out.top_ids,
                        top_probs=out.top_probs,
                    )
                )
            v = await self._verdict()
            self.drafter.commit(v.accepted, v.token)
            core.verdict(v, drafted, draft_ms, trio.current_time())
            await self._flush()
        await self._send_report(force=True)

    async def _flush(self) -> None:
        for rec in self.core.records():
            self._emit(rec)
        await self._send_report()

    async def _verdict(self) -> Verdict:
        while True:
            ev = await self._next()
            if isinstance(ev, Verdict):
                return ev

    async def _next(self) -> Event:
        """The next event that matters to the user (heartbeats and plan notes are absorbed)."""
        while True:
            ev = await self._receive()
            if isinstance(ev, Bye):
                raise _EdgeClosed
            if isinstance(ev, Closed):
                raise PeerGone("the edge closed the connection")
            if isinstance(ev, Error):
                said = f"the edge closed the session: error {ev.error}: {ev.message}"
                if ev.error in FINAL_REFUSALS:
                    raise EdgeRefused(said)
                raise PeerGone(said)
            if isinstance(ev, Welcome | Verdict | ClockEcho | Resume):
                return ev
            if isinstance(ev, PlanUpdate):  # the plan this user's rounds now run under
                self.core.plan = ev
            # Heartbeats: only signs of life. Lengths change through Verdicts.

    async def _receive(self) -> Event:
        """The edge's next event; an edge silent past ``silence_s`` (it heartbeats a user it
        has sent nothing for ``heartbeat_ms``) is a broken link (PeerGone). A reporting user
        sends what it has not reported while it waits, every REPORT_EVERY_S (a read cut short
        loses nothing: the Connection keeps what arrived, and TLS allows it after the
        handshake)."""
        silence = self.silence_s or SILENT_BEATS * self._beat_s
        deadline = trio.current_time() + silence if silence > 0 else math.inf
        while True:
            wake = deadline
            if self._can_report():
                wake = min(wake, max(trio.current_time(), self._reports.next_at()))
            with trio.move_on_at(wake):
                return await receive_event(self.conn, self._stream)
            if trio.current_time() >= deadline:
                raise PeerGone(f"the edge was silent for {silence:g} s")
            await self._send_report(force=True)

    async def _send(self, event: Event) -> None:
        try:
            await self._stream.send_all(self.conn.send(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerGone("the edge's link broke") from exc

    async def _send_quietly(self, event: Event) -> None:
        with contextlib.suppress(PeerGone, LocalProtocolError):
            await self._send(event)


class _EdgeClosed(Exception):
    """The edge ended the connection cleanly."""
