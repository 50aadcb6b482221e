"""DSD's verifier queue (nodes.core.dsd) and compute model (emu.planner.dsd.compute): how a
batch is collected and which jobs it takes, what a batch and a draft cost, and the authors'
switches."""

from __future__ import annotations

import pytest

from emu.planner.dsd.compute import AffineCompute, Compat, Work
from nodes.core.dsd import Conversation, DsdJob, KvLedger, Lane, TargetQueue, context_bucket


def _job(i: int, at: float, context: int = 100, klass: int = 0) -> DsdJob:
    return DsdJob(conversation=f"c{i}", phase="decode", tokens=4, context=context,
                  enqueued_s=at, seq=i, klass=klass)  # fmt: skip


def test_a_batch_closes_at_its_window_or_when_full() -> None:
    q = TargetQueue(batch_size=3, window_s=0.001)
    q.put(_job(0, 0.0100))
    assert q.take(0.0100) is None and q.wake_s() == pytest.approx(0.0110)
    q.put(_job(1, 0.0105))
    assert q.take(0.0105) is None  # still collecting
    batch = q.take(0.0110)  # the window closed
    assert batch is not None and [j.conversation for j in batch] == ["c0", "c1"]
    assert q.busy and q.queue_len == 1 and q.take(0.02) is None  # one batch at a time
    for i in range(2, 6):
        q.put(_job(i, 0.0200))
    assert q.queue_len == 5
    q.finished(0.0300)
    full = q.take(0.0300)  # full at once: no wait for the window
    assert full is not None and [j.conversation for j in full] == ["c2", "c3", "c4"]
    q.finished(0.0400)
    # The next batch opens when the verifier became free, not when its job arrived.
    assert q.take(0.0400) is None and q.wake_s() == pytest.approx(0.0410)


def test_priority_takes_the_lower_class_first() -> None:
    q = TargetQueue(batch_size=2, window_s=0.0, order="priority")
    for i, k in enumerate((1, 1, 0)):
        q.put(_job(i, 0.0, klass=k))
    batch = q.take(0.0)
    assert batch is not None and [j.conversation for j in batch] == ["c2", "c0"]


def test_length_aware_batching_keeps_contexts_alike_and_ages_out() -> None:
    assert [context_bucket(c) for c in (0, 255, 256, 511, 512, 4096)] == [0, 0, 1, 1, 2, 5]
    q = TargetQueue(batch_size=2, window_s=0.001, order="lab")
    q.put(_job(0, 0.0, context=300))
    q.put(_job(1, 0.0001, context=3000))
    q.put(_job(2, 0.0002, context=400))
    batch = q.take(0.002)
    assert batch is not None and [j.conversation for j in batch] == ["c0", "c2"]  # same bucket
    # Jobs that have waited more than 5 windows go first, whatever their bucket.
    late = TargetQueue(batch_size=2, window_s=0.001, order="lab")
    for j in (_job(0, 0.0, 300), _job(1, 0.0001, 3000), _job(2, 0.0002, 400)):
        late.put(j)
    batch = late.take(0.0062)
    assert batch is not None and [j.conversation for j in batch] == ["c0", "c1"]
    fifo = TargetQueue(batch_size=2, window_s=0.001)
    for j in (_job(0, 0.0, 300), _job(1, 0.0001, 3000), _job(2, 0.0002, 400)):
        fifo.put(j)
    got = fifo.take(0.002)
    assert got is not None and [j.conversation for j in got] == ["c0", "c1"]


def test_queue_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TargetQueue(batch_size=0, window_s=0.001)
    with pytest.raises(ValueError, match="order must be one of fifo, priority, lab"):
        TargetQueue(batch_size=4, window_s=0.001, order="sjf")


def test_affine_compute_and_the_authors_switches() -> None:
    gpu = AffineCompute(base_ms=10.0, per_token_ms=1.0, per_context_ms=0.01)
    mixed = [Work(100, 0, prefill=True), Work(5, 200), Work(5, 300)]
    prefill, decode = 10.0 + 100.0, 10.0 + 10.0 + 5.0
    assert gpu.batch_ms(mixed, Compat()) == pytest.approx(prefill + decode)
    assert gpu.batch_ms(mixed, Compat.authors()) == pytest.approx(prefill)
    # Four drafts: four passes (each a token longer), or the authors' one.
    assert gpu.draft_ms(4, 100, Compat()) == pytest.approx(
        4 * 11.0 + 0.01 * (100 + 101 + 102 + 103)
    )
    assert gpu.draft_ms(4, 100, Compat.authors()) == pytest.approx(10.0 + 4.0 + 1.0)
    assert gpu.draft_ms(0, 100, Compat()) == 0.0 and gpu.pass_ms([]) == 0.0
    assert Compat().round_accounting == "emitted" and Compat.authors().round_accounting == "fixed"
    with pytest.raises(ValueError, match="per_token_ms must be at least 0"):
        AffineCompute(base_ms=1.0, per_token_ms=-1.0)


def test_a_conversation_counts_emitted_tokens() -> None:
    """draftnet's accounting: the prefill gives the first token, each round its accepted
    drafts plus one, never past the answer; TPOT over the tokens after the first."""
    c = Conversation(prompt=10, answer=8, started_s=1.0)
    c.prefilled(1.2)
    assert (c.tokens, c.ttft_s, c.context) == (1, pytest.approx(0.2), 11)
    assert c.drafts(4) == 4
    assert c.verdict(1.3, drafted=4, accepted=2, round_s=0.1) == 3  # 2 + the target's
    assert c.drafts(4) == 3  # 4 left: at most 3 drafts, the 4th is the target's
    assert c.verdict(1.5, drafted=3, accepted=3, round_s=0.2) == 4
    assert c.done and c.tokens == 8 and c.rounds == 2
    assert c.tpot_s == pytest.approx((1.5 - 1.2) / 7)
    assert c.itl_s == pytest.approx([0.1 / 3] * 3 + [0.2 / 4] * 4)
    assert sum(c.itl_s) == pytest.approx(1.5 - 1.2)
    assert c.drafts(4) == 0


def test_a_conversation_under_the_authors_accounting() -> None:
    """ceil(A / gamma) rounds whatever is accepted; TTFT at the first round that accepted a
    draft; TPOT per accepted draft, rounds accepting none skipped (biased low)."""
    c = Conversation(prompt=10, answer=10, started_s=0.0, accounting="fixed")
    c.prefilled(0.1)
    assert c.tokens == 0 and c.ttft_s is None
    got = [c.verdict(t, drafted=c.drafts(4), accepted=a, round_s=0.1)
           for t, a in ((0.2, 0), (0.3, 2), (0.4, 1))]  # fmt: skip
    assert got == [4, 4, 2] and c.done and c.rounds == 3  # ceil(10 / 4)
    assert c.ttft_s == pytest.approx(0.3)
    assert c.tpot_s == pytest.approx((2 * 0.05 + 1 * 0.1) / 3)
    with pytest.raises(ValueError, match="round_accounting must be one of emitted, fixed"):
        Conversation(prompt=1, answer=1, started_s=0.0, accounting="bonus")


def test_a_lane_waits_for_company_then_for_its_window() -> None:
    lane = Lane()  # 6 jobs, 0.3 ms alone, 0.8 ms with company
    lane.put(_job(0, 0.0))
    assert lane.take(0.0002) == [] and lane.wake_s() == pytest.approx(0.0003)
    assert [j.conversation for j in lane.take(0.0003)] == ["c0"]  # alone: gone at 0.3 ms
    lane.put(_job(1, 0.0010))
    lane.put(_job(2, 0.0012))  # company: the lane waits to 0.8 ms after its first take
    assert lane.take(0.0013) == [] and lane.wake_s() == pytest.approx(0.0018)
    assert [j.conversation for j in lane.take(0.0018)] == ["c1", "c2"]
    for i in range(3, 10):
        lane.put(_job(i, 0.0020))
    assert len(lane.take(0.0020)) == 6 and len(lane.jobs) == 1  # full: at once, 6 of 7
    capped = Lane(max_tokens=10)
    for i in range(3):
        capped.put(_job(i, 0.0))  # 4 tokens each
    assert [j.conversation for j in capped.take(0.0)] == ["c0", "c1"]  # 12 >= 10: 8 fit


def test_a_kv_ledger_holds_a_jobs_tokens_and_retries_then_fails_it() -> None:
    """dsd.md 4.2: a prefill holds its prompt, a round its drafts and its context, to its
    batch's end; refused, it is tried again 1 ms x its refusals later, at most 3 times."""
    kv = KvLedger(capacity=250)
    prefill = DsdJob(conversation="p", phase="prefill", tokens=120, context=0, enqueued_s=0.0)
    decode = _job(0, 0.0, context=100)  # 4 drafts + 100 of context: 104
    assert kv.reserve(prefill) and kv.reserve(decode) and kv.used == 224
    late = _job(1, 0.0, context=100)
    waits = []
    while not kv.reserve(late):
        wait = kv.retry_in_s(late)
        if wait is None:
            break
        waits.append(wait)
    assert waits == pytest.approx([0.001, 0.002, 0.003]) and late.attempts == 4
    kv.free(prefill)
    assert kv.reserve(_job(2, 0.0, context=100)) and kv.used == 208 and kv.peak == 224
    kv.free(decode)
    with pytest.raises(ValueError, match="freed more than it held"):
        kv.free(prefill)


def test_a_lane_too_deep_takes_no_more() -> None:
    lane = Lane(depth=2)
    for i in range(3):
        assert not lane.full
        lane.put(_job(i, 0.0))
    assert lane.full  # 3 > 2: the next waits outside
