"""The jitter-aware policy (``emu.planner.jitter``): never expects less than dipsd under the
stochastic model, is dipsd where no link is random, gains where links differ in their tails,
and its fast scorer agrees with the exact model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emu.planner import plan_for
from emu.planner.jitter import NoisyScorer, jitter_aware
from emu.planner.lattice import LinkNoise
from emu.planner.model import CloseRule, Problem
from emu.planner.stochastic import (
    expected_max,
    has_noise,
    plan_rounds,
    stochastic_evaluate,
    with_noise,
)
from tests.planner.conftest import paper_problem, random_problem


def _closing(p: Problem) -> Problem:
    return dataclasses.replace(p, edge=dataclasses.replace(p.edge, close=CloseRule()))


def _expected(p: Problem, policy: str) -> float:
    return stochastic_evaluate(p, plan_for(policy, p)).throughput_tok_s


NOISES = [LinkNoise(5.0), LinkNoise(20.0), LinkNoise(2.0, 0.02, 200.0)]


@pytest.mark.parametrize("seed", range(2))
def test_never_expects_less_than_dipsd_on_the_same_instance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for users in (3, 9):
        base = random_problem(rng, users)
        # Each user its own link: some quiet, some noisy.
        noise = [NOISES[k].round_trip() if k < 3 else None for k in rng.integers(0, 5, users)]
        for p in (with_noise(base, noise), _closing(with_noise(base, noise))):
            plan = jitter_aware(p)
            plan.check(p)
            dipsd = stochastic_evaluate(p, plan_for("dipsd", p)).throughput_tok_s
            assert stochastic_evaluate(p, plan).throughput_tok_s >= dipsd * (1 - 1e-12)


def test_without_random_links_it_is_dipsd() -> None:
    p = random_problem(np.random.default_rng(5), 8)
    assert not has_noise(p)
    assert plan_for("jitter-aware", p) == plan_for("dipsd", p)


def test_it_gains_where_tails_stall_batches() -> None:
    """14 users on links of 20 ms of jitter each way: dipsd's plan on means loses 5% of what
    planning for the batches' waits expects (on this instance, 120.6 against 127.2 tok/s)."""
    p = with_noise(random_problem(np.random.default_rng(14), 14), LinkNoise(20.0))
    assert _expected(p, "jitter-aware") > 1.03 * _expected(p, "dipsd")


@pytest.mark.parametrize("close", [None, CloseRule()])
def test_the_fast_scorer_agrees_with_the_exact_model(close: CloseRule | None) -> None:
    p = with_noise(random_problem(np.random.default_rng(2), 10), LinkNoise(10.0, 0.01, 200.0))
    p = dataclasses.replace(p, edge=dataclasses.replace(p.edge, close=close))
    scorer = NoisyScorer(p)
    dipsd = plan_for("dipsd", p)
    plans = [dipsd, jitter_aware(p)]
    if close is not None:  # and each batch closed by a tolerance of its own
        own = tuple(float(t) for t in np.linspace(0.0, 2.0, len(dipsd.batches)))
        plans.append(dataclasses.replace(dipsd, close_tolerance=own))
    for plan in plans:
        exact = stochastic_evaluate(p, plan).throughput_tok_s
        fast = 1000 * scorer.ratio(
            plan.batch_of(p.size),
            len(plan.batches),
            np.asarray(plan.draft_len),
            plan.close_tolerance,
        )
        assert fast == pytest.approx(exact, rel=2e-3)


def test_a_warm_replan_is_never_worse_than_the_plan_in_force() -> None:
    p = with_noise(random_problem(np.random.default_rng(8), 12), LinkNoise(15.0))
    before = jitter_aware(p)
    moved = with_noise(p, LinkNoise(25.0))
    again = jitter_aware(moved, before)
    assert stochastic_evaluate(moved, again).throughput_tok_s >= stochastic_evaluate(
        moved, before
    ).throughput_tok_s * (1 - 1e-12)


@pytest.mark.parametrize(
    ("noise", "looser"), [(LinkNoise(20.0), True), (LinkNoise(1.0, 0.03, 200.0), False)]
)
def test_it_chooses_each_batchs_close_deadline(noise: LinkNoise, looser: bool) -> None:
    """Where the edge closes batches at a deadline, each batch's deadline is the policy's to
    choose: at 20 ms of jitter each way many drafts are a little late, and a looser deadline
    than the edge's keeps their rounds (+2.2% expected on 8 paper users); where 3% of messages
    are retransmitted 200 ms late, a tighter one stops the batch waiting for them (+5.1%)."""
    p = _closing(with_noise(paper_problem(8), noise))
    plan = jitter_aware(p)
    assert len(plan.close_tolerance) == len(plan.batches)
    edge = CloseRule().tolerance
    assert all((t > edge) if looser else (t < edge) for t in plan.close_tolerance)
    own = stochastic_evaluate(p, plan).throughput_tok_s
    edges = stochastic_evaluate(p, dataclasses.replace(plan, close_tolerance=())).throughput_tok_s
    assert own > 1.015 * edges
    # Without a deadline at the edge (it waits for every draft) there is nothing to choose.
    assert jitter_aware(with_noise(paper_problem(8), noise)).close_tolerance == ()


def test_the_fast_scorer_is_the_stochastic_models_grid_on_any_plan() -> None:
    """The scorer reads each member's CDF from its user's table instead of building its
    lattices: on random plans (any batches, lengths and deadlines, links quiet or noisy) it
    gives what ``plan_rounds`` and ``expected_max`` on the same grid give."""
    rng = np.random.default_rng(0)
    # ... and a retransmission 1 s late, which misses several of its batch's turns.
    noises = [*NOISES, LinkNoise(0.3), LinkNoise(2.0, 0.03, 1000.0)]
    checked = several_turns = 0
    for i in range(40):
        users = int(rng.integers(2, 12))
        p = with_noise(
            random_problem(rng, users),
            [noises[k].round_trip() if k < 5 else None for k in rng.integers(0, 6, users)],
        )
        p = _closing(p) if i % 2 else p
        n = int(rng.integers(1, users + 1))
        batch_of = rng.integers(0, n, users)
        batch_of[:n] = np.arange(n)
        lengths = rng.integers(0, p.max_draft_len + 1, users)
        own = tuple(float(t) for t in rng.choice([0.0, 0.1, 1.0, 2.0], n)) if i % 4 == 1 else ()
        scorer = NoisyScorer(p)
        fast = scorer.ratio(batch_of, n, lengths, own)
        size, L, I, _ = scorer.tab.batch_stats(batch_of, n, lengths)
        if not p.fits(size, I).all():
            assert fast == -np.inf
            continue
        T = p.verify_ms(size, L, I)
        batches = [[int(m) for m in np.flatnonzero(batch_of == k)] for k in range(n)]
        rounds = plan_rounds(p, batches, lengths, T.tolist(), own)
        members = [x.shift(float(T[k])) for k, b in enumerate(rounds.batches) for x in b]
        grid = expected_max(members, float(T.sum()), 1024)
        assert fast == pytest.approx(rounds.tokens / grid, rel=1e-9)
        checked += 1
        several_turns += bool((rounds.missed > rounds.late + 1e-6).any())
    assert checked >= 25 and several_turns >= 3
