"""The report queue (``nodes.core.reports``): numbering, bounded batches, a send that fails,
and what a new connection carries again."""

from __future__ import annotations

import json

from nodes.core.reports import REPORT_EVERY_S, RESEND_S, ReportQueue


def _seqs(lines: str) -> list[int]:
    return [json.loads(line)["seq"] for line in lines.splitlines()]


def test_records_are_numbered_and_sent_in_batches_within_the_limit() -> None:
    q = ReportQueue(epoch=7, max_chars=100)
    assert not q.due(0.0, force=True) and q.batch() is None  # nothing waits
    for i in range(6):
        assert q.add({"ev": "round", "i": i}) == {"ev": "round", "i": i, "epoch": 7, "seq": i + 1}
    assert q.due(0.0)  # never reported: due at once
    batches = []
    while (lines := q.batch()) is not None:
        assert len(lines) <= 100
        batches.append(_seqs(lines))
        q.sent(1.0)
    q.reported(1.0)
    assert len(batches) > 1 and [s for b in batches for s in b] == [1, 2, 3, 4, 5, 6]
    q.add({"ev": "x"})
    assert not q.due(1.0 + REPORT_EVERY_S / 2) and q.due(1.0 + REPORT_EVERY_S)
    assert q.due(1.0, force=True)


def test_a_record_over_the_limit_goes_alone_and_cut() -> None:
    q = ReportQueue(epoch=1, max_chars=50)
    q.add({"ev": "big", "blob": "x" * 200})
    q.add({"ev": "small"})
    first = q.batch()
    assert first is not None and len(first) == 50 and first.startswith('{"ev": "big"')
    q.sent(0.0)
    second = q.batch()
    assert second is not None and _seqs(second) == [2]


def test_a_failed_send_keeps_the_batch_and_a_new_connection_resends_the_recent_ones() -> None:
    q = ReportQueue(epoch=1, max_chars=10_000)
    q.add({"ev": "a"})
    q.batch()
    q.sent(0.0)  # went out at 0
    q.reported(0.0)
    q.add({"ev": "b"})
    q.batch()
    q.sent(RESEND_S + 1.0)  # went out later
    q.reported(RESEND_S + 1.0)  # record 1 is older than RESEND_S now: let go
    q.add({"ev": "c"})
    q.batch()  # its send fails: no ``sent``
    q.rewind()
    lines = q.batch()
    assert lines is not None and _seqs(lines) == [2, 3]  # the recent one again, then the unsent
