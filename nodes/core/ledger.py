"""The verifier's session ledger: every user's session that has not ended, with its prompt and
every token committed, kept as entries a shell writes durably before the verdict they record
is sent (``Persist`` actions of ``nodes.core.verifier``).

Layer: pure (nodes.core): entries in and out as plain dicts; the shell writes them (a journal
file, ``emu.runners.journal``) and reads them back after a restart (``SessionLedger.replay``).

Entries (JSON-ready):

    {"u": 3, "s": 0, "prompt": [...], "committed": [...]}   a session opened (or resumed)
    {"u": 3, "add": [...]}                                   tokens committed by a verdict
    {"u": 3, "end": true}                                    the session ended

Because an entry is durable before its verdict leaves, the ledger is never behind what a user
has seen: a user that lost its state takes its session back from here (Resume), and one that
kept it takes whichever of the two has more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Held", "LedgerError", "SessionLedger", "committed_sessions"]


@dataclass(slots=True)
class Held:
    """A user's session that has not ended."""

    session: int
    prompt: tuple[int, ...]
    committed: list[int] = field(default_factory=list)


class SessionLedger:
    def __init__(self) -> None:
        self.held: dict[int, Held] = {}

    def opened(
        self, uid: int, session: int, prompt: Sequence[int], committed: Sequence[int]
    ) -> dict[str, Any]:
        self.held[uid] = Held(session, tuple(prompt), list(committed))
        return {"u": uid, "s": session, "prompt": list(prompt), "committed": list(committed)}

    def added(self, uid: int, tokens: Sequence[int]) -> dict[str, Any] | None:
        held = self.held.get(uid)
        if held is None:
            return None
        held.committed.extend(tokens)
        return {"u": uid, "add": list(tokens)}

    def ended(self, uid: int) -> dict[str, Any] | None:
        if self.held.pop(uid, None) is None:
            return None
        return {"u": uid, "end": True}

    def apply(self, entry: Mapping[str, Any]) -> None:
        """One entry, as written."""
        uid = int(entry["u"])
        if "prompt" in entry:
            self.opened(uid, int(entry["s"]), entry["prompt"], entry["committed"])
        elif "add" in entry:
            self.added(uid, entry["add"])
        elif entry.get("end"):
            self.ended(uid)

    @classmethod
    def replay(cls, entries: Iterable[Mapping[str, Any]]) -> SessionLedger:
        ledger = cls()
        for e in entries:
            ledger.apply(e)
        return ledger


class LedgerError(ValueError):
    """Entries whose resumed session does not take up what the session had committed."""


def committed_sessions(entries: Iterable[Mapping[str, Any]]) -> dict[int, list[Held]]:
    """Each user's sessions as the entries record them, in order, with every token committed.
    A session resumed (after a lost link, a restarted user or a restarted edge) is one session;
    ``LedgerError`` if its resumed open does not take up exactly what it had committed (a token
    lost or repeated at the resume)."""
    out: dict[int, list[Held]] = {}
    ledger = SessionLedger()
    for e in entries:
        uid = int(e["u"])
        if "prompt" in e:
            before = ledger.held.get(uid)
            if before and before.session == e["s"] and list(before.prompt) == e["prompt"]:
                if list(e["committed"]) != before.committed:
                    raise LedgerError(
                        f"user {uid}: session {e['s']} resumed with {len(e['committed'])} "
                        f"tokens, but {len(before.committed)} were committed"
                    )
                ledger.apply(e)
                out[uid][-1] = ledger.held[uid]
                continue
            ledger.apply(e)
            out.setdefault(uid, []).append(ledger.held[uid])
        else:
            ledger.apply(e)
    return out
