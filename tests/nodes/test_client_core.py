"""The user's core without trio: sessions, what a broken link leaves to resume, and records."""

from __future__ import annotations

import itertools

import pytest

from nodes.core.client import ClientCore
from nodes.protocol import MAX_PROMPT_TOKENS, PlanUpdate, Resume, Verdict


def _verdict(round_: int, accepted: int, token: int, *, done: bool = False) -> Verdict:
    return Verdict(round=round_, accepted=accepted, token=token, next_draft_len=3, slot=0,
                   done=done)  # fmt: skip


def test_a_session_records_its_first_token_and_its_rounds() -> None:
    prompts = iter([(1, 2, 3)])
    core = ClientCore(4, lambda: next(prompts), max_new_tokens=10)
    start = core.open_session(now=1.0)
    assert (start.session, start.prompt, start.max_new_tokens) == (0, (1, 2, 3), 10)
    core.first_token(_verdict(0, 0, 7), now=1.2)
    core.plan = PlanUpdate(plan_id=3, slot=0, slots=1, draft_len=3, cycle_ms=100.0)
    core.verdict(_verdict(1, 2, 9), drafted=(5, 6, 8), draft_ms=30.0, now=1.5)
    first, rnd = core.records()
    assert first == {"ev": "first_token", "t": 1.2, "user": 4, "ttft_ms": pytest.approx(200.0)}
    assert rnd["ev"] == "round" and rnd["drafted"] == 3 and rnd["accepted"] == 2
    assert rnd["committed"] == 3 and rnd["round_ms"] == pytest.approx(300.0) and rnd["plan_id"] == 3
    st = core.stats
    assert (st.sessions, st.rounds, st.draft_tokens, st.accepted_tokens, st.committed_tokens) == (
        1, 1, 3, 2, 4,
    )  # fmt: skip
    assert core.records() == []  # drained


def test_a_broken_session_resumes_with_every_committed_token_as_the_same_session() -> None:
    prompts = iter([(1, 2, 3), (40,)])
    core = ClientCore(0, lambda: next(prompts), max_new_tokens=10)
    core.open_session(now=0.0)
    core.first_token(_verdict(0, 0, 7), now=0.1)
    core.verdict(_verdict(1, 1, 9), drafted=(5, 6), draft_ms=0.0, now=0.2)
    core.records()
    # The link breaks here; the next connection is a reconnection and resumes, under no plan
    # until its verifier says (the old one was the last connection's).
    core.plan = PlanUpdate(plan_id=3, slot=0, slots=1, draft_len=3, cycle_ms=100.0)
    core.welcomed(now=1.0)
    assert core.plan is None
    assert core.records() == [{"ev": "reconnected", "t": 1.0, "user": 0}]
    again = core.open_session(now=1.0)
    assert again.prompt == (1, 2, 3, 7, 5, 9) and again.max_new_tokens == 10 - 3
    # Protocol 5: the same session's number, and how many of the prompt's tokens it committed.
    assert again.session == 0 and again.resumes == 3
    core.first_token(_verdict(0, 0, 11, done=True), now=1.1)
    assert core.records() == []  # a resumed session has no first token of its own
    assert core.stats.sessions == 1 and core.stats.reconnects == 1
    # Done: the next session is a new prompt.
    assert core.open_session(now=2.0).prompt == (40,)


def test_a_session_too_long_to_resend_starts_afresh() -> None:
    prompts = itertools.cycle([(1,) * (MAX_PROMPT_TOKENS - 1), (2,)])
    core = ClientCore(0, lambda: next(prompts))
    core.open_session(now=0.0)
    core.first_token(_verdict(0, 0, 7), now=0.1)
    core.verdict(_verdict(1, 2, 9), drafted=(5, 6), draft_ms=0.0, now=0.2)
    assert core.open_session(now=1.0).prompt == (2,)


def test_a_restarted_user_takes_its_session_back_from_the_edge_and_skips_the_done_prompts() -> None:
    prompts = iter([(1,), (2,), (3,), (4,)])
    core = ClientCore(0, lambda: next(prompts), max_new_tokens=10)
    core.welcomed(now=0.0)
    assert core.resume(Resume(session=2, prompt=(3,), committed=(7, 8)), now=0.0)
    start = core.open_session(now=0.1)
    assert (start.session, start.prompt, start.resumes, start.max_new_tokens) == (
        2,
        (3, 7, 8),
        2,
        8,
    )
    assert core.stats.resumed_tokens == 2
    assert core.records()[-1] == {"ev": "resumed", "t": 0.0, "user": 0, "session": 2,
                                  "committed": 2, "from_edge": 2}  # fmt: skip
    core.first_token(_verdict(0, 0, 9, done=True), now=0.2)
    assert core.open_session(now=0.3).prompt == (4,)  # sessions 0 and 1 were done before


def test_a_user_keeps_its_own_session_unless_the_edges_copy_extends_it() -> None:
    prompts = iter([(1, 2), (5,)])
    core = ClientCore(0, lambda: next(prompts))
    core.open_session(now=0.0)
    core.first_token(_verdict(0, 0, 7), now=0.1)
    # The edge logged a verdict that never arrived: its copy extends ours, and is taken.
    assert core.resume(Resume(session=0, prompt=(1, 2), committed=(7, 3, 4)), now=0.2)
    assert core.open_session(now=0.3).prompt == (1, 2, 7, 3, 4)
    # A copy that disagrees with ours, or another session's, is not.
    assert not core.resume(Resume(session=0, prompt=(1, 2), committed=(8,)), now=0.4)
    assert not core.resume(Resume(session=1, prompt=(5,), committed=()), now=0.4)
    assert core.open_session(now=0.5).prompt == (1, 2, 7, 3, 4)
