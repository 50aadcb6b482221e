"""The user's core, sans I/O: a client that drafts for itself (DiP-SD's device), its sessions,
what survives a broken link, and what it records.

Layer: pure (nodes.core): no sockets, no clock, no model. The trio shell (``nodes.user``) dials,
drafts, sends and waits; it tells this core what happened (a session opened, a verdict with
what was drafted for it, ``now`` passed in) and sends the messages the core builds. A session a
broken link interrupts is resumed on the next connection as the same user: its prompt is the
old prompt plus every token committed so far. A user that lost its own state (its process was
restarted) takes its session back from the edge's ledger (``resume``), as does one whose own
copy of that session is behind the edge's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodes.protocol import MAX_PROMPT_TOKENS, PlanUpdate, Resume, SessionStart, Verdict

__all__ = ["ClientCore", "UserStats"]


@dataclass(slots=True)
class UserStats:
    rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    committed_tokens: int = 0
    sessions: int = 0
    reconnects: int = 0
    resumed_tokens: int = 0  # committed before this process, taken back from the edge
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
        self._session_no = 0  # the next new session's number
        self._flight: _InFlight | None = None
        self._flight_no = 0  # the session in flight's number
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
            self._flight_no = self._session_no
            self._session_no += 1
        else:
            flight.resumed = True
        flight.opened = now
        left = self.max_new_tokens - len(flight.committed) if self.max_new_tokens else 0
        return SessionStart(
            session=self._flight_no,
            prompt=flight.prompt + tuple(flight.committed),
            max_new_tokens=max(left, 1) if self.max_new_tokens else 0,
            resumes=len(flight.committed) if flight.resumed else 0,
        )

    def resume(self, r: Resume, now: float) -> bool:
        """The edge's ledger of this user's session ``r.session``: taken if this user has no
        session of its own in flight that is as far along (it was restarted, or the edge saw
        more than this copy did); the prompts of the sessions before it are skipped. Whether
        it was taken."""
        flight = self._flight
        mine = flight is not None and self._flight_no == r.session and flight.prompt == r.prompt
        if flight is not None and not (
            mine and tuple(flight.committed) == r.committed[: len(flight.committed)]
        ):
            return False  # another session, or a copy that disagrees: this user's own stands
        if flight is None and r.session < self._session_no:
            return False  # a session this process has finished since
        while self._session_no <= r.session:  # the prompts of the sessions before it, and its
            self.prompts()
            self._session_no += 1
        had = len(flight.committed) if flight is not None else 0
        self._flight = _InFlight(prompt=r.prompt, committed=list(r.committed), resumed=True)
        self._flight_no = r.session
        self.stats.resumed_tokens += len(r.committed) - had
        self._records.append({"ev": "resumed", "t": now, "user": self.user_id,
                              "session": r.session, "committed": len(r.committed),
                              "from_edge": len(r.committed) - had})  # fmt: skip
        return True

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
