"""The length step (assignment fixed) against the best lengths for the same batches.

The oracle is written plainly here. At the best lengths, each batch is padded to some cap and
the cycle covers some bound on every batch's ready-plus-verify time; each user then drafts the
longest length within its cap and the bound. So the best over every cap vector and every bound
at which some user's longest length changes is the optimum for these batches.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emu.planner import LatencyModel, Problem, User
from emu.planner.cost import Tableau
from emu.planner.lengths import optimise_lengths
from tests.planner.conftest import EDGE, QWEN_1_7B, random_problem


def best_lengths_for(problem: Problem, batch_of: np.ndarray) -> float:
    """The best throughput ratio U / S over every length vector, for fixed batches."""
    tab = Tableau(problem)
    n = int(batch_of.max()) + 1
    lmax = problem.max_draft_len
    lens = np.arange(lmax + 1)
    g, c = problem.draft_ms, problem.comm_ms
    best = 0.0
    for caps in itertools.product(range(lmax + 1), repeat=n):
        cap = np.array(caps)[batch_of]
        T = _verify_at(tab, batch_of, n, np.array(caps))
        # Every bound at which some user's longest draft under its cap changes.
        ready = np.where(lens > 0, lens[None, :] * g[:, None] + c[:, None], 0.0)
        bounds = np.unique((ready + T[batch_of][:, None])[lens[None, :] <= cap[:, None]])
        for bound in bounds:
            fits = ready + T[batch_of][:, None] <= bound + 1e-9
            length = np.where(fits & (lens[None, :] <= cap[:, None]), lens[None, :], 0).max(axis=1)
            S, U = tab.span(batch_of, n, length)
            best = max(best, U / S)
    return best


def _verify_at(tab: Tableau, batch_of: np.ndarray, n: int, caps: np.ndarray) -> np.ndarray:
    p = tab.problem
    out = np.empty(n)
    for k in range(n):
        members = batch_of == k
        prefix = float(p.prefix[members].max())
        out[k] = p.verify_ms(float(members.sum()), float(max(caps[k], 1)), prefix)
    return out


def _ties() -> tuple[Problem, np.ndarray]:
    """Eight users in two batches whose ready-plus-verify times tie for the cycle at the
    length step's old answer: the better lengths shorten one batch's padding and the other
    batch's lone user together (1.2% more throughput). No move of one batch found it."""
    rows = [  # alpha, prefix, link [ms], device c [ms/flop], device beta [ms]
        (0.8073, 2048, 18.270, 8.0267e-11, 49.448),
        (0.6753, 2048, 2.037, 7.7233e-11, 55.059),
        (0.6697, 512, 26.376, 6.6277e-11, 40.484),
        (0.9301, 512, 13.935, 4.5968e-11, 24.591),
        (0.5461, 2048, 11.359, 3.3126e-11, 20.378),
        (0.8310, 512, 20.934, 7.5014e-11, 61.028),
        (0.7907, 2048, 16.156, 4.1790e-11, 41.995),
        (0.6446, 2048, 15.364, 6.0124e-11, 46.575),
    ]
    users = tuple(
        User(
            alpha=a,
            prefix_len=prefix,
            comm_ms=link,
            draft=QWEN_1_7B,
            device=LatencyModel(c_ms_per_flop=c, beta_ms=beta),
        )
        for a, prefix, link, c, beta in rows
    )
    problem = Problem(
        users=users, edge=EDGE, max_draft_len=8, initial_draft_len=7, fixed_draft_len=7
    )
    return problem, np.array([0, 0, 0, 1, 0, 0, 0, 0])


def test_the_length_step_moves_length_between_batches_that_tie_for_the_cycle() -> None:
    problem, batch_of = _ties()
    tab = Tableau(problem)
    lengths, ratio = optimise_lengths(tab, batch_of, 2, np.full(8, 7, dtype=np.int64), respond=True)
    best = best_lengths_for(problem, batch_of)
    assert ratio == pytest.approx(best, rel=1e-9)
    # The cycle is set by the batches' ready-plus-verify times, not by the verify times' sum.
    S, _ = tab.span(batch_of, 2, lengths)
    verify = _verify_at(
        tab, batch_of, 2, np.array([lengths[batch_of == k].max() for k in range(2)])
    )
    assert verify.sum() < S


def test_a_user_that_drafts_in_no_time_still_waits_for_its_link() -> None:
    """A device with no draft time drafts as long as it may, but its link time still counts:
    a sweep that gave it its cap past the bound once claimed more than it got, and the ascent
    took the move, then ended below where it started."""
    free = LatencyModel(c_ms_per_flop=0.0, beta_ms=0.0)
    phone = LatencyModel(c_ms_per_flop=4e-11, beta_ms=33.8)
    users = tuple(
        User(alpha=0.8, prefix_len=512, comm_ms=link, draft=QWEN_1_7B, device=device)
        for link, device in ((154.0, phone), (279.0, free), (21.0, free))
    )
    problem = Problem(
        users=users, edge=EDGE, max_draft_len=2, initial_draft_len=1, fixed_draft_len=1
    )
    batch_of = np.zeros(3, dtype=np.int64)
    tab = Tableau(problem)
    start = np.ones(3, dtype=np.int64)
    S0, U0 = tab.span(batch_of, 1, start)
    _, ratio = optimise_lengths(tab, batch_of, 1, start, respond=True)
    assert ratio >= U0 / S0
    assert ratio == pytest.approx(best_lengths_for(problem, batch_of), rel=1e-9)


@pytest.mark.parametrize(("seed", "batches"), [(0, 1), (1, 2), (2, 2), (3, 3)])
def test_the_length_step_finds_the_best_lengths_of_random_batches(seed: int, batches: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(4):
        users = int(rng.integers(batches + 1, 8))
        problem = random_problem(rng, users, max_draft_len=6 if batches < 3 else 4)
        batch_of = np.r_[np.arange(batches), rng.integers(0, batches, users - batches)]
        start = rng.integers(0, problem.max_draft_len + 1, users)
        tab = Tableau(problem)
        S0, U0 = tab.span(batch_of, batches, start)
        _, ratio = optimise_lengths(tab, batch_of, batches, start, respond=True)
        assert ratio >= U0 / S0 * (1 - 1e-12)  # the ascent never ends below its start
        assert ratio == pytest.approx(best_lengths_for(problem, batch_of), rel=1e-9)
