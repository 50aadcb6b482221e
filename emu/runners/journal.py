"""The edge's session journal: the ledger's entries (``nodes.core.ledger``) in a file, each
written whole before the verdict it records is sent, and read back when the edge restarts.

Layer: emu (files; the emulation's edge and lab mode's). One ``os.write`` per entry on a file
opened for appending: once it returns, the entry outlives the process (a kill, a crash of the
edge's code); ``fsync`` would be needed to outlive the machine's power, and costs a disk flush
per verdict, so it is not done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodes.core.ledger import Held, SessionLedger, committed_sessions

__all__ = ["JOURNAL", "Journal", "journal_sessions", "read_journal"]

JOURNAL = "sessions.jsonl"


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, entry: Mapping[str, Any]) -> None:
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _entries(path: Path) -> list[dict[str, Any]]:
    """The journal's entries (a line torn by a kill mid-write is the last, and is dropped: its
    verdict was never sent)."""
    entries = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def read_journal(path: Path) -> SessionLedger:
    """The ledger as the journal left it."""
    return SessionLedger.replay(_entries(path))


def journal_sessions(path: Path) -> dict[int, list[Held]]:
    """Each user's sessions as the edge journalled them (``committed_sessions``)."""
    return committed_sessions(_entries(path))
