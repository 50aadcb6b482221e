"""Real backends: llama.cpp drafting and batched transformers verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from emu.errors import ConfigError
from emu.models.embedded import EmbeddedPair, check_pair
from nodes.backends import VerifyItem
from nodes.hf_verifier import HFVerifier, _Session, pick_device
from nodes.llama_drafter import LlamaDrafter

pytestmark = pytest.mark.models
NEW = 20


@pytest.fixture(scope="session")
def greedy_reference(verifier: HFVerifier, prompts: list[list[int]]) -> list[list[int]]:
    """The target alone, decoding greedily with transformers' own generate()."""
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = verifier.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False
        )
        out.append(gen[0, len(p) :].tolist())
    return out


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_greedy_verification_is_lossless(
    pair: EmbeddedPair,
    verifier: HFVerifier,
    prompts: list[list[int]],
    greedy_reference: list[list[int]],
    batch: int,
) -> None:
    rng = np.random.default_rng(batch)
    users = list(range(batch))
    drafters = {u: LlamaDrafter(pair.draft) for u in users}
    first, _ = verifier.prefill({u: prompts[u] for u in users})
    committed = {u: [first[u]] for u in users}
    for u in users:
        drafters[u].start(prompts[u])
        drafters[u].commit(0, first[u])
    rejected = 0
    while min(len(c) for c in committed.values()) < NEW:
        items = []
        for u in users:
            # Mixed draft lengths in one batch, including users that do not draft this round.
            n = int(rng.integers(0, 7))
            items.append(
                VerifyItem(
                    user=u,
                    base_len=len(prompts[u]) + len(committed[u]),
                    tokens=drafters[u].draft(n).tokens,
                )
            )
        outs, _ = verifier.verify(items)
        for it, o in zip(items, outs, strict=True):
            drafters[it.user].commit(o.accepted, o.token)
            committed[it.user] += [*it.tokens[: o.accepted], o.token]
            rejected += o.accepted < len(it.tokens)
    for u in users:
        verifier.drop(u)
        assert committed[u][:NEW] == greedy_reference[u][:NEW], f"user {u} of {batch}"
    assert rejected > 0  # the draft is a different model: some tokens were corrected


def test_the_reference_finds_where_tokens_depart_from_the_targets_greedy_decoding(
    verifier: HFVerifier, prompts: list[list[int]], greedy_reference: list[list[int]]
) -> None:
    """The losslessness check's reference (one teacher-forced pass) against transformers'
    own generate(): the greedy tokens depart nowhere; a token changed, or a prefix of them
    changed at its end, departs there."""
    from emu.models.build import GreedyReference

    reference = GreedyReference(verifier.model, verifier.device)
    for p, greedy in zip(prompts, greedy_reference, strict=True):
        assert reference(p, greedy) is None
        assert reference(p, greedy[:1]) is None
        for at in (0, 7, NEW - 1):
            wrong = list(greedy)
            wrong[at] = (wrong[at] + 1) % verifier.model.config.vocab_size
            assert reference(p, wrong) == at
            assert reference(p, wrong[: at + 1]) == at
    assert reference(prompts[0], []) is None


def test_drafter_rollback_equals_a_fresh_recomputation(
    pair: EmbeddedPair, prompts: list[list[int]]
) -> None:
    d = LlamaDrafter(pair.draft)
    d.start(prompts[0])
    draft = d.draft(6).tokens
    d.commit(2, 7)  # two accepted, then a correction the drafter did not propose
    assert d.seq[-3:] == [*draft[:2], 7]
    rolled = d._eval(d.seq[d._cached :])
    # Fresh: the prompt in one pass, then the same tokens one at a time, as drafting does.
    fresh = LlamaDrafter(pair.draft)
    fresh.start(prompts[0])
    fresh._eval(prompts[0])
    for t in d.seq[len(prompts[0]) :]:
        want = fresh._eval([t])
    np.testing.assert_array_equal(rolled, want)


def test_verifier_rollback_equals_a_fresh_recomputation(
    verifier: HFVerifier, prompts: list[list[int]]
) -> None:
    p = prompts[1]
    first, _ = verifier.prefill({10: p})
    wrong = (first[10], 5, 6, 7)  # the first token cannot follow itself here: a rejection
    (o,), _ = verifier.verify([VerifyItem(user=10, base_len=len(p) + 1, tokens=wrong)])
    assert o.accepted < len(wrong)
    s = verifier.sessions[10]
    assert s.cached == len(s.ids) - 1  # the rejected tokens' cache entries are gone
    # Next round's logits from the kept cache, against the whole sequence from scratch.
    rolled, _ = verifier._forward([s], [[]])
    fresh, _ = verifier._forward([_Session(ids=list(s.ids))], [[]])
    verifier.drop(10)
    torch.testing.assert_close(rolled[0, -1], fresh[0, -1], atol=1e-3, rtol=1e-4)


def _decider(temperature: float, seed: int) -> HFVerifier:
    v = HFVerifier.__new__(HFVerifier)
    v.torch, v.temperature, v.rng = torch, temperature, np.random.default_rng(seed)
    return v


def test_stochastic_verification_preserves_the_target_distribution() -> None:
    """Speculative sampling with a sparse (top-2) draft: the first committed token follows
    the target's softmax exactly (chi-square over 40,000 draws)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0], [0.0, 0.3, 0.1, 0.2, 0.0]])
    p = torch.softmax(logits[0].double(), -1).numpy()
    q_ids, q_probs = (1, 3), (0.7, 0.3)  # a draft that disagrees with the target
    v = _decider(1.0, 3)
    rng = np.random.default_rng(4)
    counts = np.zeros(5)
    draws = 40_000
    for _ in range(draws):
        x = q_ids[int(rng.random() >= q_probs[0])]
        item = VerifyItem(user=0, base_len=1, tokens=(x,), top_ids=(q_ids,), top_probs=(q_probs,))
        k, token = v._decide(logits, item)
        counts[x if k == 1 else token] += 1
    assert scipy.stats.chisquare(counts, p * draws).pvalue > 1e-3
    # And the test has power: the draft's own distribution is rejected.
    q = np.array([0.0, 0.7, 0.0, 0.3, 0.0]) * 0.98 + 0.004
    assert scipy.stats.chisquare(counts, q * draws).pvalue < 1e-6


def test_bad_model_input_is_one_clear_error(tmp_path: Path, pair: EmbeddedPair) -> None:
    with pytest.raises(ConfigError, match="readable GGUF"):
        LlamaDrafter(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="checkpoint directory"):
        HFVerifier(tmp_path, device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((pair.target / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "vocab_size": 32000}))
    with pytest.raises(ConfigError, match="share a vocabulary"):
        check_pair(pair.draft, other)
    check_pair(pair.draft, pair.target)
    d = LlamaDrafter(pair.draft, n_ctx=64)
    with pytest.raises(ConfigError, match="shorter than the draft context"):
        d.start(list(range(d.n_ctx + 10)))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu")[1] == torch.float32


def test_profile_time_uses_the_batch_shape_before_the_pass(
    verifier: HFVerifier, prompts: list[list[int]]
) -> None:
    seen: list[tuple[int, int, int]] = []
    first, _ = verifier.prefill({20: prompts[2], 21: prompts[3]})
    verifier.latency = lambda b, L, I: seen.append((b, L, I)) or 12.5
    try:
        items = [
            VerifyItem(user=20, base_len=len(prompts[2]) + 1, tokens=(first[20], 5)),
            VerifyItem(user=21, base_len=len(prompts[3]) + 1, tokens=(first[21],)),
        ]
        _, ms = verifier.verify(items)
    finally:
        verifier.latency = None
        verifier.drop(20)
        verifier.drop(21)
    assert ms == 12.5
    # Two users, padded to the longest draft and to the longest prefix as it was verified.
    assert seen == [(2, 2, max(len(prompts[2]), len(prompts[3])) + 1)]


def test_profile_time_of_a_prefill_is_the_whole_prompt_at_prefix_zero(
    verifier: HFVerifier, prompts: list[list[int]]
) -> None:
    seen: list[tuple[int, int, int]] = []
    verifier.latency = lambda b, L, I: seen.append((b, L, I)) or 30.0
    try:
        _, ms = verifier.prefill({30: prompts[0], 31: prompts[1]})
        verifier.prefill_free = True
        _, free_ms = verifier.prefill({32: prompts[0]})
    finally:
        verifier.latency = None
        verifier.prefill_free = False
        for u in (30, 31, 32):
            verifier.drop(u)
    # A prefill pass is F_v(prompt, 0) for the longest prompt, batch 2; a warm start is free.
    assert (ms, seen) == (30.0, [(2, max(len(prompts[0]), len(prompts[1])), 0)])
    assert free_ms == 0.0


def test_the_verifier_and_the_reference_call_transformers_without_deprecation_warnings(
    verifier: HFVerifier, prompts: list[list[int]]
) -> None:
    """transformers 5.24 deprecates ``past_key_values=``: draftnet's own calls must pass the
    cache by the name this version takes, on the locked version and any other."""
    import warnings

    from emu.models.build import GreedyReference

    users = {900 + i: p for i, p in enumerate(prompts[:3])}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        first, _ = verifier.prefill(users)
        items = [
            VerifyItem(user=u, base_len=len(p) + 1, tokens=(first[u],) * (1 + i))
            for i, (u, p) in enumerate(users.items())
        ]
        outs, _ = verifier.verify(items)
        departs = GreedyReference(verifier.model, verifier.device)(prompts[0], [1, 2, 3])
    for u in users:
        verifier.drop(u)
    assert len(outs) == 3 and departs in (0, 1, 2, None)
