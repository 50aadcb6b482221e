"""The user node: drafts on its device, uploads drafts, applies the edge's verdicts.

Layer: nodes (trio shell over ``nodes.protocol``). The same code runs in the simulation (an
in-memory link, virtual clock), in a Mininet host (a TCP socket) and on lab hardware.

One round: draft ``next_draft_len`` tokens (the backend's time passes through the pacer), send
the Draft, wait for its Verdict, commit. A length of 0 means the edge decodes for this user
alone: the user only receives. Every round is emitted as one ``round`` record to the sink.

Liveness: the edge heartbeats a user it has sent nothing for ``heartbeat_ms`` (the Welcome says
how often), and the user takes an edge silent for ``silence_s`` (the scenario's idle timeout;
else eight heartbeats) as a broken link. The user sends no heartbeats: the edge only waits on it
for a draft or a session, and those are its signs of life. ``serve`` redials a broken
link with exponential backoff and resumes the session in flight as the same user: its prompt is
the old prompt plus every token committed so far.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from nodes.backends import DraftBackend
from nodes.pacing import Pacer
from nodes.protocol import (
    MAX_PROMPT_TOKENS,
    PROTOCOL_VERSION,
    Bye,
    Closed,
    Connection,
    Draft,
    Error,
    ErrorCode,
    Event,
    Hello,
    PlanUpdate,
    Role,
    SessionStart,
    Verdict,
    Welcome,
)
from nodes.stream import Sink, receive_event

__all__ = ["FINAL_REFUSALS", "Dial", "EdgeRefused", "Sink", "UserNode", "UserStats"]

Dial = Callable[[], Awaitable[trio.abc.Stream]]
BACKOFF_S = (0.1, 1.0)  # the first redial's wait, and the longest
SILENT_BEATS = 8  # heartbeats an edge may miss before its link is taken for broken
# Refusals that redialling cannot change: who the user is, or what it sends.
FINAL_REFUSALS = (ErrorCode.AUTH, ErrorCode.VERSION, ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


@dataclass(slots=True)
class UserStats:
    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    committed_tokens: int = 0
    sessions: int = 0
    reconnects: int = 0
    first_token_s: list[float] = field(default_factory=list)


class EdgeRefused(PeerGone):
    """The edge refused this user for good (an unknown id, a bad auth, another version)."""


@dataclass(slots=True)
class _InFlight:
    """The session in progress, enough to resume it on a new connection."""

    prompt: tuple[int, ...]
    committed: list[int] = field(default_factory=list)


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
    ) -> None:
        self.user_id = user_id
        self.drafter = drafter
        self.prompts = prompts
        self.sink = sink
        self.pacer = pacer or Pacer()
        self.max_new_tokens = max_new_tokens
        self.device = dict(device or {})
        self.silence_s = silence_s  # 0: SILENT_BEATS of the edge's heartbeats
        self.stats = UserStats()
        self.conn = Connection(Role.USER)
        self._session_no = 0
        self._in_flight: _InFlight | None = None
        self._beat_s = 0.0
        self.plan: PlanUpdate | None = None  # the edge's last word on its plan, where it sends one

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
                    self.sink({"ev": "link_lost", "t": trio.current_time(),
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
        try:
            await self._send(
                Hello(version=PROTOCOL_VERSION, user_id=self.user_id, device=self.device)
            )
            welcome = await self._next()
            if not isinstance(welcome, Welcome):
                raise RemoteProtocolError(f"expected Welcome, got {type(welcome).__name__}")
            self._beat_s = welcome.heartbeat_ms / 1e3
            if self.stats.sessions or self._in_flight is not None:
                self.stats.reconnects += 1
                self.sink({"ev": "reconnected", "t": trio.current_time(), "user": self.user_id})
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
                await self._send_quietly(Bye(reason="user stopping"))
                await stream.aclose()

    async def _session(self) -> None:
        """One session, or the rest of the one a broken link interrupted."""
        flight = self._in_flight
        if flight is not None and len(flight.prompt) + len(flight.committed) > MAX_PROMPT_TOKENS:
            flight = None  # too long to resend as a prompt: a new session instead
        resumed = flight is not None
        if flight is None:
            flight = self._in_flight = _InFlight(prompt=tuple(next(self.prompts)))
        prompt = flight.prompt + tuple(flight.committed)
        left = self.max_new_tokens - len(flight.committed) if self.max_new_tokens else 0
        self.drafter.start(prompt)
        t0 = trio.current_time()
        await self._send(
            SessionStart(
                session=self._session_no,
                prompt=prompt,
                max_new_tokens=max(left, 1) if self.max_new_tokens else 0,
            )
        )
        self._session_no += 1
        v = await self._verdict()
        self.drafter.commit(0, v.token)
        flight.committed.append(v.token)
        now = trio.current_time()
        if not resumed:
            self.stats.sessions += 1
            self.stats.first_token_s.append(now - t0)
            self.sink(
                {"ev": "first_token", "t": now, "user": self.user_id, "ttft_ms": (now - t0) * 1e3}
            )
        self.stats.committed_tokens += 1
        last = now
        while not v.done:
            n = v.next_draft_len
            draft_ms = 0.0
            drafted = 0
            if n > 0:
                w0 = time.perf_counter()
                out = self.drafter.draft(n)
                await self.pacer.pace(out.compute_ms, (time.perf_counter() - w0) * 1e3)
                draft_ms = out.compute_ms
                drafted = len(out.tokens)
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
            flight.committed.extend((*out.tokens[: v.accepted], v.token) if n > 0 else (v.token,))
            now = trio.current_time()
            st = self.stats
            st.rounds += 1
            st.draft_tokens += drafted
            st.accepted_tokens += v.accepted
            st.committed_tokens += v.accepted + 1
            self.sink(
                {
                    "ev": "round",
                    "t": now,
                    "user": self.user_id,
                    "round": v.round,
                    "slot": v.slot,
                    "drafted": drafted,
                    "accepted": v.accepted,
                    "committed": v.accepted + 1,
                    "round_ms": (now - last) * 1e3,
                    "draft_ms": draft_ms,
                    "plan_id": self.plan.plan_id if self.plan is not None else None,
                }
            )
            last = now
        self._in_flight = None

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
            if isinstance(ev, Welcome | Verdict):
                return ev
            if isinstance(ev, PlanUpdate):  # the plan this user's rounds now run under
                self.plan = ev
            # Heartbeats: only signs of life. Lengths change through Verdicts.

    async def _receive(self) -> Event:
        """The edge's next event; an edge silent past ``silence_s`` (it heartbeats a user it
        has sent nothing for ``heartbeat_ms``) is a broken link (PeerGone)."""
        silence = self.silence_s or SILENT_BEATS * self._beat_s
        with trio.move_on_after(silence if silence > 0 else math.inf):
            return await receive_event(self.conn, self._stream)
        raise PeerGone(f"the edge was silent for {silence:g} s")

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
