"""A node's records on their way to a collector (lab mode's edge): numbered, sent in batches
of bounded size, and kept a while after they are sent, so that a new connection carries again
what a broken one, or a collector that died, may have lost. The collector files each record
once, by ``(epoch, seq)`` (``emu.lab.roles.RunLog``).

Layer: pure (nodes.core): no I/O; the shell gives the times and sends the batches.

    q = ReportQueue(epoch=secrets.randbits(31), max_chars=MAX_REPORT)
    q.add({"ev": "round", "t": 1.5})          # numbered: {"ev": ..., "epoch": e, "seq": 1}
    if q.due(now):
        while (lines := q.batch()) is not None:
            send(lines)                           # may fail: the batch stays unsent
            q.sent(now)
        q.reported(now)
    q.rewind()                                    # a new connection: send the recent ones again
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["REPORT_EVERY_S", "RESEND_S", "ReportQueue"]

REPORT_EVERY_S = 0.25  # how often a reporting node sends its records
RESEND_S = 2.0  # a new connection carries again what the last one sent this recently


class ReportQueue:
    def __init__(self, *, epoch: int, max_chars: int) -> None:
        self.epoch = epoch  # this process's: the collector numbers per (node, epoch)
        self.max_chars = max_chars
        self._seq = 0
        self._unsent: list[str] = []  # records not yet sent, as JSON lines
        self._sent: collections.deque[tuple[float, str]] = collections.deque()  # and sent
        self._batch_n = 0
        self.reported_at = -math.inf

    def add(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """``rec`` numbered, queued to be sent; the numbered record."""
        self._seq += 1
        out = {**rec, "epoch": self.epoch, "seq": self._seq}
        self._unsent.append(json.dumps(out, default=float))
        return out

    @property
    def pending(self) -> bool:
        return bool(self._unsent)

    def next_at(self) -> float:
        """When the next regular report is due."""
        return self.reported_at + REPORT_EVERY_S

    def due(self, now: float, *, force: bool = False) -> bool:
        """Records wait, and their time has come (every REPORT_EVERY_S, or now if ``force``)."""
        return self.pending and (force or now >= self.next_at())

    def batch(self) -> str | None:
        """The next records to send, as lines of at most ``max_chars`` characters in all (a
        record over the limit alone is cut), or None when nothing waits."""
        if not self._unsent:
            return None
        n, size = 0, 0
        while n < len(self._unsent) and size + len(self._unsent[n]) + 1 <= self.max_chars:
            size += len(self._unsent[n]) + 1
            n += 1
        self._batch_n = max(n, 1)
        return "\n".join(self._unsent[: self._batch_n])[: self.max_chars]

    def sent(self, now: float) -> None:
        """The last ``batch`` went out."""
        self._sent.extend((now, line) for line in self._unsent[: self._batch_n])
        del self._unsent[: self._batch_n]
        self._batch_n = 0

    def reported(self, now: float) -> None:
        """A report ended at ``now``: what was sent before ``now - RESEND_S`` is let go."""
        self.reported_at = now
        while self._sent and self._sent[0][0] < now - RESEND_S:
            self._sent.popleft()

    def rewind(self) -> None:
        """A new connection: what the last one sent lately goes again, first."""
        self._unsent[:0] = [line for _, line in self._sent]
        self._sent.clear()
