"""The stochastic cost model (``emu.planner.stochastic``): each way's noise has the mean its
links draw, the expected maximum of independent members matches Monte Carlo of the continuous
model, the cycle without noise is the published model's, and jitter lengthens the cycle (the
expectation of a maximum is not the maximum of the expectations)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner import Plan, evaluate, plan_for
from emu.planner.lattice import Lattice, LinkNoise
from emu.planner.model import CloseRule, Problem, expected_tokens
from emu.planner.stochastic import (
    carried,
    closed,
    expected_cycle,
    expected_max,
    missed_turns,
    monte_carlo_cycle,
    ready_times,
    stochastic_evaluate,
    with_noise,
)
from tests.planner.conftest import paper_problem, random_problem


def _continuous(rng: np.random.Generator, n: int, noise: LinkNoise) -> np.ndarray:
    """What a link adds to a message, drawn as ``emu.runners.simlink`` draws it."""
    out = np.abs(rng.normal(0.0, noise.jitter_ms, n)) if noise.jitter_ms > 0 else np.zeros(n)
    if noise.loss > 0:
        out += noise.rto_ms * rng.geometric(1.0 - noise.loss, n) - noise.rto_ms
    return out


@pytest.mark.parametrize("noise", [LinkNoise(5.0), LinkNoise(20.0), LinkNoise(2.0, 0.05, 200.0)])
def test_a_ways_noise_has_the_mean_its_link_draws(noise: LinkNoise) -> None:
    want = noise.jitter_ms * math.sqrt(2 / math.pi) + noise.rto_ms * noise.loss / (1 - noise.loss)
    assert noise.lattice().mean == pytest.approx(want, rel=2e-3, abs=1e-3)
    assert noise.lattice().pmf.sum() == pytest.approx(1.0)


def test_the_expected_maximum_of_independent_members_matches_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    members = [(30.0, LinkNoise(5.0)), (34.0, LinkNoise(20.0)), (25.0, LinkNoise(2.0, 0.02, 50.0)),
               (38.0, LinkNoise(0.5))]  # fmt: skip
    lattices = [(n.lattice() + n.lattice()).shift(base) for base, n in members]
    n = 400_000
    draws = np.max(
        [base + _continuous(rng, n, noise) + _continuous(rng, n, noise) for base, noise in members],
        axis=0,
    )
    mc, se = draws.mean(), draws.std() / math.sqrt(n)
    exact = expected_max(lattices)
    assert abs(exact - mc) < 4 * se + 0.05, (exact, mc, se)  # the lattice's step: 0.05 ms
    assert exact > max(x.mean for x in lattices) + 0.5  # not the largest mean
    assert expected_max(lattices[:1]) == pytest.approx(lattices[0].mean, abs=1e-9)
    assert expected_max([Lattice.point(3.0), Lattice.point(5.0)], floor_ms=4.0) == 5.0
    assert expected_max([Lattice.point(3.0)], floor_ms=4.0) == 4.0


def test_without_noise_the_cycle_is_the_published_models() -> None:
    for p in (paper_problem(), random_problem(np.random.default_rng(3), 9)):
        plan = plan_for("dipsd", p)
        got = stochastic_evaluate(p, plan)
        assert stochastic_evaluate(with_noise(p, LinkNoise()), plan) == got
        mean = evaluate(p, plan)
        assert got.cycle_ms == pytest.approx(mean.cycle_ms, abs=1e-9)
        assert got.throughput_tok_s == pytest.approx(mean.throughput_tok_s)
        assert got.ready_ms == pytest.approx(mean.ready_ms)


def test_jitter_lengthens_the_expected_cycle_and_sampling_agrees() -> None:
    p = random_problem(np.random.default_rng(11), 8)
    plan = plan_for("dipsd", p)
    mean = evaluate(p, plan)
    cycles = []
    for jitter in (0.0, 5.0, 10.0, 20.0):
        ev = stochastic_evaluate(with_noise(p, LinkNoise(jitter)), plan)
        cycles.append(ev.cycle_ms)
        assert all(r >= m - 1e-9 for r, m in zip(ev.ready_ms, ev.mean_model_ready_ms, strict=True))
    assert cycles[0] == pytest.approx(mean.cycle_ms)
    assert all(a <= b for a, b in itertools.pairwise(cycles))
    ready = ready_times(with_noise(p, LinkNoise(20.0)), plan.draft_len)
    batches = [[ready[m] for m in b] for b in plan.batches]
    mc = monte_carlo_cycle(batches, mean.verify_ms, np.random.default_rng(5), n=200_000)
    assert expected_cycle(batches, mean.verify_ms) == pytest.approx(mc, rel=2e-3)


def _close_rule_by_sampling(
    problem: Problem, plan: Plan, rng: np.random.Generator, cycles: int = 40_000
) -> float:
    """The edge's close rule played out cycle by cycle: a batch closes when its last member is
    in or at its deadline; a late member's draft is verified at the first later turn of its
    batch that it is in by (its lateness counted down by each cycle's span), and does not hold
    up the turns before; throughput is the tokens committed over the time spent [tok/s]. A
    plan's own ``close_tolerance`` sets each batch's rule."""
    edge_rule = problem.edge.close
    assert edge_rule is not None
    rules = [dataclasses.replace(edge_rule, tolerance=t) for t in plan.close_tolerance] or [
        edge_rule
    ] * len(plan.batches)
    lengths = np.asarray(plan.draft_len)
    ready = ready_times(problem, lengths)
    u = expected_tokens(problem.alpha, lengths)
    verify = evaluate(problem, plan).verify_ms
    draws = {m: ready[m].sample(rng, cycles) for m in range(problem.size) if lengths[m] > 0}
    deadlines = [
        rule.deadline_ms(max((ready[m].mean for m in b if lengths[m] > 0), default=0.0))
        for b, rule in zip(plan.batches, rules, strict=True)
    ]
    # A late draft's time still to come [ms], from its batch's last close (nan: none late).
    coming = np.full(problem.size, np.nan)
    round_of = dict.fromkeys(range(problem.size), 0)  # each member's next draw
    tokens = time = 0.0
    for _ in range(cycles):
        span = float(sum(verify))
        for b, v, deadline in zip(plan.batches, verify, deadlines, strict=True):
            closes = 0.0
            for m in b:
                if lengths[m] == 0:
                    tokens += u[m]
                elif not np.isnan(coming[m]):
                    if coming[m] <= 0:  # in by this turn: verified at once
                        tokens += u[m]
                        coming[m] = np.nan
                else:
                    x = draws[m][round_of[m]]
                    round_of[m] += 1
                    if x <= deadline:
                        tokens += u[m]
                        closes = max(closes, x)
                    else:
                        coming[m] = x - deadline
                        closes = deadline
            span = max(span, closes + v)
        coming -= span
        time += span
    return 1000.0 * tokens / time


@pytest.mark.parametrize(
    ("noise", "within"),
    [
        (LinkNoise(20.0), 0.01),
        (LinkNoise(2.0, 0.03, 200.0), 0.01),
        (LinkNoise(2.0, 0.03, 1000.0), 0.015),
    ],
)
def test_the_close_rules_expectation_matches_playing_it_out(
    noise: LinkNoise, within: float
) -> None:
    """Under the edge's deadline a late member costs its own rounds, not the batch's wait: the
    model's long-run rate matches the rule played out over 40,000 cycles, and with
    retransmissions (a late draft 200 ms or 1 s behind) it is far above waiting for all. A
    draft 1 s late misses about three of its batch's turns of 350 ms: the model is 1.0% below
    the play there (over 6 seeds of it, +-0.2%), where counting one turn was 9.4% above."""
    p = with_noise(random_problem(np.random.default_rng(0), 7), noise)  # 3 batches, all drafting
    plan = plan_for("dipsd", p)
    closing = dataclasses.replace(p, edge=dataclasses.replace(p.edge, close=CloseRule()))
    model = stochastic_evaluate(closing, plan)
    played = _close_rule_by_sampling(closing, plan, np.random.default_rng(9))
    assert model.throughput_tok_s == pytest.approx(played, rel=within)
    if noise.loss:
        assert max(model.late) > 0.02
        assert model.throughput_tok_s > 1.05 * stochastic_evaluate(p, plan).throughput_tok_s


@pytest.mark.parametrize("tolerance", [(0.0, 2.0, 0.5), (1.0, 0.0, 0.1)])
def test_each_batchs_own_close_rule_matches_playing_it_out(tolerance: tuple[float, ...]) -> None:
    """A plan may close each batch by its own tolerance (the jitter-aware policy chooses
    them): the model's rate matches the batches' rules played out, and a plan that gives every
    batch the edge's tolerance is the edge's rule."""
    p = with_noise(random_problem(np.random.default_rng(0), 7), LinkNoise(2.0, 0.03, 200.0))
    closing = dataclasses.replace(p, edge=dataclasses.replace(p.edge, close=CloseRule()))
    plan = plan_for("dipsd", p)
    assert len(plan.batches) == len(tolerance)
    own = dataclasses.replace(plan, close_tolerance=tolerance)
    model = stochastic_evaluate(closing, own).throughput_tok_s
    played = _close_rule_by_sampling(closing, own, np.random.default_rng(9))
    assert model == pytest.approx(played, rel=0.01)
    assert abs(model / stochastic_evaluate(closing, plan).throughput_tok_s - 1) > 0.005
    same = dataclasses.replace(plan, close_tolerance=(CloseRule().tolerance,) * len(tolerance))
    assert stochastic_evaluate(closing, same) == stochastic_evaluate(closing, plan)


@pytest.mark.parametrize(
    ("tolerance", "why"),
    [((0.1,), "must have one per batch"), ((0.1, -1.0, 0.1), "in [0, 100]")],
)
def test_a_plans_close_tolerance_is_checked(tolerance: tuple[float, ...], why: str) -> None:
    p = random_problem(np.random.default_rng(0), 7)
    plan = dataclasses.replace(plan_for("dipsd", p), close_tolerance=tolerance)
    with pytest.raises(ConfigError, match=r"plan\.close_tolerance.*" + re.escape(why)):
        plan.check(p)


def test_a_deadline_cuts_a_members_tail_and_a_late_one_holds_nobody_up_next_turn() -> None:
    x = LinkNoise(10.0).round_trip().shift(30.0)
    cut, late = closed(x, 40.0)
    assert late == pytest.approx(1 - float(x.cdf(40.0)))
    assert cut.top_ms <= 40.0 and cut.pmf.sum() == pytest.approx(1.0)
    assert closed(x, 1e6) == (x, 0.0)
    again = carried(cut, late)
    assert float(again.cdf(0.0)) == pytest.approx(late / (1 + late))
    assert again.mean == pytest.approx(cut.mean / (1 + late), rel=1e-6)


def test_a_draft_later_than_a_turn_misses_as_many_turns_as_it_takes_to_come_in() -> None:
    """K = ceil((X - deadline) / turn): in time, no turn; late by less than a turn, one; a
    retransmission 1 s late on a batch that comes round every 300 ms, four."""
    on_time = Lattice.point(30.0)
    assert missed_turns(on_time, 40.0, 300.0) == 0.0
    assert missed_turns(Lattice.point(100.0), 40.0, 300.0) == pytest.approx(1.0)
    assert missed_turns(Lattice.point(1040.0), 40.0, 300.0) == pytest.approx(4.0)
    both = Lattice(30.0, 1010.0, np.array([0.9, 0.1]))  # 30 ms, or 1040 ms one round in 10
    assert missed_turns(both, 40.0, 300.0) == pytest.approx(0.4)
    # Such a member is ready at once in 4 of every 5 of its batch's turns when always late.
    assert float(carried(Lattice.point(40.0), 4.0).cdf(0.0)) == pytest.approx(0.8)
