"""The heterogeneous edge on the real embedded pair: llama.cpp drafting for a batch in one
batched step, transformers verifying, and the output the target's own greedy decoding."""

from __future__ import annotations

from typing import Any

import pytest

from emu.models.embedded import EmbeddedPair
from emu.runners.sim_hetnet import simulate_hetnet
from emu.scenario import load_scenario
from nodes.llama_batch_drafter import LlamaBatchDrafter
from nodes.llama_drafter import LlamaDrafter

pytestmark = pytest.mark.models


def test_a_batched_draft_is_each_tasks_own_greedy_draft(
    pair: EmbeddedPair, prompts: list[list[int]]
) -> None:
    """One decode a step for four tasks drafts what each would draft alone; a task whose
    sequence another batch took starts it again from its whole context.

    "What each would draft alone" up to floating point: llama.cpp's batched decode does not
    sum in the single sequence's order, and on some CPUs a near-tie flips a late token (on the
    2-core build machine, 2026-12-04, one token of twenty). A draft that crossed into another
    task's sequence would share nothing with its own."""
    batched = LlamaBatchDrafter(pair.draft, max_tasks=4, n_ctx=1024)
    alone = LlamaDrafter(pair.draft, n_ctx=1024)
    tasks = [7, 8, 9, 10]
    assert batched.prefill(tasks, prompts) > 0
    drafts, ms = batched.draft(tasks, prompts, 5)
    assert ms > 0
    own = []
    for prompt in prompts:
        alone.start(prompt)
        own.append(alone.draft(5).tokens)
    same = sum(a == b for o, d in zip(own, drafts, strict=True) for a, b in zip(o, d, strict=True))
    assert all(o[:2] == d[:2] for o, d in zip(own, drafts, strict=True)), (own, drafts)
    assert same >= 18, (own, drafts)  # of 20
    # Two tasks of a later batch take the sequences of tasks 7 and 8 (evicted)...
    batched.prefill([20, 21], prompts[:2])
    assert batched.draft([20, 21], prompts[:2], 5)[0] == drafts[:2]
    # ... and tasks 7 and 8 start theirs again from the whole context (a verdict kept two
    # drafts and corrected the third); the others roll back to what they committed.
    committed = [list(p) + list(d[:2]) + [42] for p, d in zip(prompts, drafts, strict=True)]
    again, _ = batched.draft(tasks, committed, 3)
    assert [len(a) for a in again] == [3, 3, 3, 3]
    for k, c, a in zip(tasks, committed, again, strict=True):
        assert batched._cached[k] == c + list(a[:2])  # the last draft token is never evaluated
    batched.close()


@pytest.fixture(scope="module")
def embedded_run(pair: EmbeddedPair) -> dict[str, Any]:
    # Answers of 12 to 20 tokens: every token is drafted, verified and checked against the
    # target alone on the CPU, for each of the three policies.
    sc = load_scenario(
        None,
        preset="hetnet",
        overrides={"users.count": 5, "hetnet.output_len": [12, 20], "models.kind": "embedded"},
    )
    return simulate_hetnet(sc, ["hetnet", "hetnet-ad", "hetnet-max-batching"])


def test_real_models_are_lossless_for_every_policy(embedded_run: dict[str, Any]) -> None:
    assert embedded_run["models"]["kind"] == "embedded"
    for policy, r in embedded_run["results"].items():
        checked = r["lossless_checked"]
        assert r["lossless"] is True, (policy, checked)
        assert r["finished"] == checked["tasks"] == 5
        assert checked["tokens"] == r["tokens"] > 0
    # The pair's own acceptance, neither 0 nor 1, where drafts were made.
    assert 0.2 < embedded_run["results"]["hetnet"]["acceptance_rate"] < 0.98
    assert embedded_run["results"]["hetnet-ad"]["acceptance_rate"] is None
