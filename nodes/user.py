"""The user node: drafts on its device, uploads drafts, applies the edge's verdicts.

Layer: nodes (trio shell over ``nodes.protocol``). The same code runs in the simulation (an
in-memory link, virtual clock), in a Mininet host (a TCP socket) and on lab hardware.

One round: draft ``next_draft_len`` tokens (the backend's time passes through the pacer), send
the Draft, wait for its Verdict, commit. A length of 0 means the edge decodes for this user
alone: the user only receives. Every round is emitted as one ``round`` record to the sink.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from emu.errors import LocalProtocolError, PeerGone, RemoteProtocolError
from nodes.backends import DraftBackend
from nodes.pacing import Pacer
from nodes.protocol import (
    PROTOCOL_VERSION,
    Bye,
    Closed,
    Connection,
    Draft,
    Error,
    Event,
    Hello,
    Role,
    SessionStart,
    Verdict,
    Welcome,
)
from nodes.stream import Sink, receive_event

__all__ = ["Sink", "UserNode", "UserStats"]


@dataclass(slots=True)
class UserStats:
    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    committed_tokens: int = 0
    sessions: int = 0
    first_token_s: list[float] = field(default_factory=list)


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
    ) -> None:
        self.user_id = user_id
        self.drafter = drafter
        self.prompts = prompts
        self.sink = sink
        self.pacer = pacer or Pacer()
        self.max_new_tokens = max_new_tokens
        self.device = dict(device or {})
        self.stats = UserStats()
        self.conn = Connection(Role.USER)

    async def run(self, stream: trio.abc.Stream) -> None:
        """Serve sessions over ``stream`` until cancelled, the edge says Bye, or it fails."""
        self._stream = stream
        try:
            await self._send(
                Hello(version=PROTOCOL_VERSION, user_id=self.user_id, device=self.device)
            )
            welcome = await self._next()
            if not isinstance(welcome, Welcome):
                raise RemoteProtocolError(f"expected Welcome, got {type(welcome).__name__}")
            session = 0
            while True:
                await self._session(session)
                session += 1
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

    async def _session(self, session: int) -> None:
        prompt = tuple(next(self.prompts))
        self.drafter.start(prompt)
        t0 = trio.current_time()
        await self._send(
            SessionStart(session=session, prompt=prompt, max_new_tokens=self.max_new_tokens)
        )
        v = await self._verdict()
        self.drafter.commit(0, v.token)
        now = trio.current_time()
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
                }
            )
            last = now

    async def _verdict(self) -> Verdict:
        while True:
            ev = await self._next()
            if isinstance(ev, Verdict):
                return ev

    async def _next(self) -> Event:
        """The next event that matters to the user (heartbeats and plan notes are absorbed)."""
        while True:
            ev = await receive_event(self.conn, self._stream)
            if isinstance(ev, Closed | Bye):
                raise _EdgeClosed
            if isinstance(ev, Error):
                raise PeerGone(f"the edge closed the session: error {ev.error}: {ev.message}")
            if isinstance(ev, Welcome | Verdict):
                return ev
            # Heartbeats and PlanUpdates: lengths change through Verdicts, so nothing to do.

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
