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


def _reference(prompt: tuple[int, ...], n: int) -> list[int]:
    return list(range(10, 10 + n))  # what "the target" decodes from any prompt


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
