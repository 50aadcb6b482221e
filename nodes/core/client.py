"""The user's core, sans I/O: a client that drafts for itself (DiP-SD's device), its sessions,
what survives a broken link, and what it records.

Layer: pure (nodes.core): no sockets, no clock, no model. The trio shell (``nodes.user``) dials,
drafts, sends and waits; it tells this core what happened (a session opened, a verdict with
what was drafted for it, ``now`` passed in) and sends the messages the core builds. A session a
broken link interrupts is resumed on the next connection as the same user: its prompt is the
old prompt plus every token committed so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodes.protocol import MAX_PROMPT_TOKENS, PlanUpdate, SessionStart, Verdict

__all__ = ["ClientCore", "UserStats"]


@dataclass(slots=True)
class UserStats:
    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    committed_tokens: int = 0
    sessions: int = 0
    reconnects: int = 0
    first_token_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _InFlight:
    """The session in progress, enough to resume it on a new connection."""

    prompt: tuple[int, ...]
    committed: list[int] = field(default_factory=list)
    resumed: bool = False
    opened: float = 0.0  # when its SessionStart left
    last: float = 0.0  # when its last verdict came


class ClientCore:
    """User ``user_id``'s sessions: ``prompts`` gives each new one's prompt; each decodes
    ``max_new_tokens`` (0: until the edge ends it)."""

    def __init__(
        self, user_id: int, prompts: Callable[[], Sequence[int]], *, max_new_tokens: int = 0
    ) -> None:
        self.user_id = user_id
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.stats = UserStats()
        self.plan: PlanUpdate | None = None  # the edge's last word on its plan, if it sends one
        self._session_no = 0
        self._flight: _InFlight | None = None
        self._records: list[Mapping[str, Any]] = []

    def records(self) -> list[Mapping[str, Any]]:
        """What happened since the last call, for the sink (and forget)."""
        out, self._records = self._records, []
        return out

    def welcomed(self, now: float) -> None:
        """A connection's handshake is done: a reconnection, if this user had served before.
        The plan it knew was the last connection's (perhaps another verifier's)."""
        self.plan = None
        if self.stats.sessions or self._flight is not None:
            self.stats.reconnects += 1
            self._records.append({"ev": "reconnected", "t": now, "user": self.user_id})

    def open_session(self, now: float) -> SessionStart:
        """The next SessionStart: the session a broken link interrupted (its prompt and every
        token committed since), else a new one."""
        flight = self._flight
        if flight is not None and len(flight.prompt) + len(flight.committed) > MAX_PROMPT_TOKENS:
            flight = None  # too long to resend as a prompt: a new session instead
        if flight is None:
            flight = self._flight = _InFlight(prompt=tuple(self.prompts()))
        else:
            flight.resumed = True
        flight.opened = now
        left = self.max_new_tokens - len(flight.committed) if self.max_new_tokens else 0
        start = SessionStart(
            session=self._session_no,
            prompt=flight.prompt + tuple(flight.committed),
            max_new_tokens=max(left, 1) if self.max_new_tokens else 0,
        )
        self._session_no += 1
        return start

    def first_token(self, v: Verdict, now: float) -> None:
        """Round 0's verdict: the session's first token (its time to first token, unless the
        session is a resumed one)."""
        flight = self._live()
        flight.committed.append(v.token)
        if not flight.resumed:
            self.stats.sessions += 1
            self.stats.first_token_s.append(now - flight.opened)
            self._records.append({"ev": "first_token", "t": now, "user": self.user_id,
                                  "ttft_ms": (now - flight.opened) * 1e3})  # fmt: skip
        self.stats.committed_tokens += 1
        flight.last = now
        self._end_if(v)

    def verdict(self, v: Verdict, drafted: Sequence[int], draft_ms: float, now: float) -> None:
        """A round's verdict on the ``drafted`` tokens (none at length 0)."""
        flight = self._live()
        flight.committed.extend((*drafted[: v.accepted], v.token))
        st = self.stats
        st.rounds += 1
        st.draft_tokens += len(drafted)
        st.accepted_tokens += v.accepted
        st.committed_tokens += v.accepted + 1
        self._records.append({
            "ev": "round",
            "t": now,
            "user": self.user_id,
            "round": v.round,
            "slot": v.slot,
            "drafted": len(drafted),
            "accepted": v.accepted,
            "committed": v.accepted + 1,
            "round_ms": (now - flight.last) * 1e3,
            "draft_ms": draft_ms,
            "plan_id": self.plan.plan_id if self.plan is not None else None,
        })  # fmt: skip
        flight.last = now
        self._end_if(v)

    def _live(self) -> _InFlight:
        if self._flight is None:
            raise ValueError("a verdict with no session open")
        return self._flight

    def _end_if(self, v: Verdict) -> None:
        if v.done:
            self._flight = None
