"""The emulation's losslessness check from the user nodes' token logs (no models: a drafter
and a reference written here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emu.models.build import RecordingDrafter, check_sessions, read_sessions
from nodes.backends import DraftOut


class _Drafter:
    """Drafts 10, 11, 12, ... after whatever it was given."""

    def __init__(self) -> None:
        self.next = 0

    def start(self, prompt: Sequence[int]) -> None:
        self.next = 10

    def draft(self, n: int) -> DraftOut:
        return DraftOut(tokens=tuple(range(self.next, self.next + n)), compute_ms=1.0)

    def commit(self, accepted: int, token: int) -> None:
        self.next = token + 1


def _reference(prompt: Sequence[int], tokens: Sequence[int]) -> int | None:
    """Where ``tokens`` depart from 10, 11, 12, ...: what "the target" decodes from any
    prompt."""
    return next((j for j, t in enumerate(tokens) if t != 10 + j), None)


def test_logged_sessions_are_read_back_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens-u0.jsonl"
    with path.open("w") as log:
        d = RecordingDrafter(_Drafter(), [], log)
        d.start([1, 2, 3])
        d.draft(3)
        d.commit(2, 12)  # 10, 11 accepted, then the target's 12
        d.draft(2)
        d.commit(0, 13)
        d.start([4, 5])  # a second session, cut short after one round
        d.draft(1)
        d.commit(1, 11)
    with path.open("a") as log:
        log.write('{"tokens": [1')  # a line torn by a killed node
    sessions = read_sessions(path)
    assert [(s.prompt, s.tokens) for s in sessions] == [
        ((1, 2, 3), [10, 11, 12, 13]),
        ((4, 5), [10, 11]),
    ]
    assert sessions == d.sessions
    ok = check_sessions([sessions, []], _reference)
    assert ok["lossless"] is True
    assert ok["lossless_checked"] == {"sessions": 2, "tokens": 6, "mismatches": []}


def test_a_wrong_token_is_caught_with_its_user_session_and_position() -> None:
    from emu.models.build import Session

    good = Session(prompt=(1,), tokens=[10, 11, 12])
    bad = Session(prompt=(2,), tokens=[10, 11, 99, 13])
    out = check_sessions([[good], [good, bad]], _reference)
    assert out["lossless"] is False
    assert out["lossless_checked"]["mismatches"] == [{"user": 1, "session": 1, "position": 2}]


def test_a_resumed_session_is_stitched_to_its_start_and_a_gap_or_a_repeat_is_caught(
    tmp_path: Path,
) -> None:
    """A session resumed over a new connection (or by a restarted process, appending to the
    same log) starts again from its prompt and what it committed, perhaps with tokens it took
    back from the edge's ledger and never logged itself: one session, checked whole. A resumed
    start that drops or repeats a committed token continues nothing: it is caught."""
    path = tmp_path / "tokens-u0.jsonl"
    with path.open("w") as log:
        d = RecordingDrafter(_Drafter(), [], log)
        d.start([1, 2])
        d.draft(2)
        d.commit(2, 12)  # 10, 11, 12; the process is killed after the edge committed 13, 14
    with path.open("a") as log:
        d = RecordingDrafter(_Drafter(), [], log)
        d.start([1, 2, 10, 11, 12, 13, 14])  # restarted: the edge's ledger gives 13, 14 back
        d.inner.next = 15  # type: ignore[attr-defined]
        d.draft(1)
        d.commit(1, 16)
        d.start([7])  # the next session
        d.draft(1)
        d.commit(1, 11)
    sessions = read_sessions(path)
    assert [(s.prompt, s.tokens) for s in sessions] == [
        ((1, 2), [10, 11, 12, 13, 14, 15, 16]),
        ((7,), [10, 11]),
    ]
    assert check_sessions([sessions], _reference)["lossless"] is True
    lost, repeated = [1, 2, 10, 11, 13], [1, 2, 10, 11, 12, 12]
    for resumed, caught in (
        (lost, {"user": 0, "session": 0, "position": None,
                "why": "a resumed start that does not continue its session"}),
        (repeated, {"user": 0, "session": 0, "position": 3}),  # 12 where the target says 13
    ):  # fmt: skip
        path.write_text('{"prompt": [1, 2]}\n{"tokens": [10, 11, 12]}\n'
                        f'{{"prompt": {resumed}}}\n{{"tokens": [20]}}\n')  # fmt: skip
        out = check_sessions([read_sessions(path)], _reference)
        assert out["lossless"] is False
        assert out["lossless_checked"]["mismatches"] == [caught]


def test_a_session_killed_before_its_first_token_and_resumed_is_one_session(
    tmp_path: Path,
) -> None:
    """A user killed after it logged a session's prompt and before any token, then restarted:
    the edge hands the session back with nothing committed, so the resumed start's prompt is
    the session's own. It continues that session; it is not a second one. (Read as two, the
    user's log held one session more than the edge's journal, and a lab test of faults failed
    once in a few runs.)"""
    path = tmp_path / "tokens-u0.jsonl"
    with path.open("w") as log:
        d = RecordingDrafter(_Drafter(), [], log)
        d.start([1, 2])  # killed here
    with path.open("a") as log:
        d = RecordingDrafter(_Drafter(), [], log)
        d.start([1, 2])  # restarted: the edge's ledger holds the session, with no token yet
        d.draft(2)
        d.commit(2, 12)
        d.start([7])  # the next session
    sessions = read_sessions(path)
    assert [(s.prompt, s.tokens, s.broken) for s in sessions] == [
        ((1, 2), [10, 11, 12], False),
        ((7,), [], False),
    ]
