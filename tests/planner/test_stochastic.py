"""The stochastic cost model (``emu.planner.stochastic``): each way's noise has the mean its
links draw, the expected maximum of independent members matches Monte Carlo of the continuous
model, the cycle without noise is the published model's, and jitter lengthens the cycle (the
expectation of a maximum is not the maximum of the expectations)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from emu.planner import evaluate, plan_for
from emu.planner.stochastic import (
    Lattice,
    LinkNoise,
    expected_cycle,
    expected_max,
    monte_carlo_cycle,
    ready_times,
    stochastic_evaluate,
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
        quiet = [LinkNoise()] * p.size
        got = stochastic_evaluate(p, plan, quiet, quiet)
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
        noise = [LinkNoise(jitter)] * p.size
        ev = stochastic_evaluate(p, plan, noise, noise)
        cycles.append(ev.cycle_ms)
        assert all(r >= m - 1e-9 for r, m in zip(ev.ready_ms, ev.mean_model_ready_ms, strict=True))
    assert cycles[0] == pytest.approx(mean.cycle_ms)
    assert all(a <= b for a, b in itertools.pairwise(cycles))
    noise = [LinkNoise(20.0)] * p.size
    ready = ready_times(p, plan.draft_len, noise, noise)
    batches = [[ready[m] for m in b] for b in plan.batches]
    mc = monte_carlo_cycle(batches, mean.verify_ms, np.random.default_rng(5), n=200_000)
    assert expected_cycle(batches, mean.verify_ms) == pytest.approx(mc, rel=2e-3)
