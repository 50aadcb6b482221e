"""The jitter-aware policy: DiP-SD's plan, searched further under the stochastic cost model.

Layer: pure (emu.planner).

dipsd plans with each user's mean communication time. Under jitter a batch waits for its
slowest member's draw each round, so the plan that is best on means is often not best in
expectation: a batch of many users waits for the largest of many draws, and a long draft on a
noisy link delays its whole batch. This policy keeps dipsd's plan as its incumbent and offers:

1. the plan dipsd makes (warm from its own, unpolished) when every link takes the k/(k+1)
   quantile of its noise instead of its mean, k the mean batch size of dipsd's plan: a batch of
   k members waits for about that quantile of their draws (on 16 instances of 6-30 users this
   start was worth 3.4% of expected throughput, the local search alone 0.3%);
2. a local search under the stochastic model (``NoisyScorer``): each user's draft length one
   shorter or longer, and the member that sets its batch's tail moved to another batch;
3. where the edge closes batches at a deadline, each batch's own deadline (its tolerance,
   ``_choose_close``);

and keeps whichever the stochastic model (``emu.planner.stochastic``) expects to deliver most.
The last comparison is exact, against dipsd's own plan, so the policy never expects less than
dipsd. Users without ``comm_noise`` make it dipsd.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from emu.planner.cost import Plan, Tableau
from emu.planner.dipsd import dipsd, replan_warm
from emu.planner.lattice import TAIL_QUANTILE, Lattice
from emu.planner.model import IntArray, Problem, expected_tokens
from emu.planner.stochastic import (
    batch_rules,
    expected_max,
    has_noise,
    plan_rounds,
    stochastic_evaluate,
    turn_ms,
)

__all__ = ["CLOSE_TOLERANCES", "NoisyScorer", "jitter_aware"]

_GRID = 1024  # the scorer's points over the cycle's range
_BUDGET_WORK = 40_000  # the local search's scorings x users, so its time is flat in M
_MIN_EVALS, _MAX_EVALS = 24, 400
# The close deadlines a batch may take, as CloseRule tolerances (beside the edge's own).
CLOSE_TOLERANCES = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


class NoisyScorer:
    """The expected throughput of plans under the stochastic model, fast enough to search with:
    the cycle's expectation on a grid of ``_GRID`` points (as ``expected_max`` takes it), within
    a point's width of the exact value that the policy's last choice uses.

    It computes what ``plan_rounds`` and ``expected_max`` would, without building a lattice
    per member: each user's noise is summed once (its CDF table), and a member's CDF on the
    grid is a look-up in it, cut at its batch's deadline and lifted by the turns it misses
    (``stochastic.closed``, ``stochastic.missed_turns`` and ``stochastic.carried``)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.tab = Tableau(problem)
        noise = [
            u.comm_noise if u.comm_noise is not None else Lattice.point(0.0) for u in problem.users
        ]
        # Every user's CDF table, P(X < t0 + j step) at j = 0..len, end to end in one array.
        cums = [np.concatenate(([0.0], np.cumsum(x.pmf))) for x in noise]
        self._cum = np.concatenate(cums)
        self._at = np.cumsum([0] + [c.size for c in cums[:-1]])
        self._last = np.array([c.size - 1 for c in cums])
        self._t0 = np.array([x.t0_ms for x in noise])
        self._top = np.array([x.top_ms for x in noise])
        self._step = np.array([x.step_ms for x in noise])
        self._mean = np.array([x.mean for x in noise])
        self._points = sum(x.pmf.size for x in noise)

    def _missed(self, m: int, first: float, top: float, deadline: float, turn: float) -> float:
        """``missed_turns`` of user ``m``'s ready time, its values ``first`` to ``top``, read
        from its CDF table as ``missed_turns`` reads the lattice. Within a turn of the deadline
        (a jitter's tail, not a retransmission) it is the probability of being late alone, one
        look-up (the scorer asks this of nearly every member)."""
        at = self._at[m]
        if top - deadline <= turn:
            j = math.floor((deadline - first) / float(self._step[m]) + 1e-9) + 1
            return 1.0 - float(self._cum[at + min(max(j, 0), int(self._last[m]))])
        pts = deadline + turn * np.arange(math.ceil((top - deadline) / turn))
        k = np.floor((pts - first) / self._step[m] + 1e-9).astype(np.int64) + 1
        return float((1.0 - self._cum[at + np.clip(k, 0, self._last[m])]).sum())

    def ratio(
        self,
        batch_of: IntArray,
        n: int,
        lengths: IntArray,
        close_tolerance: Sequence[float] = (),
    ) -> float:
        """Expected tokens per ms of the plan (-inf where a batch breaks the memory bound),
        each batch closed by the edge's rule or its own ``close_tolerance``."""
        p = self.problem
        size, L, I, _ = self.tab.batch_stats(batch_of, n, lengths)
        if not p.fits(size, I).all():
            return -math.inf
        T = p.verify_ms(size, L, I)
        if self._points <= _GRID:  # few points: the exact union of supports is cheap
            batches = [[int(m) for m in np.flatnonzero(batch_of == k)] for k in range(n)]
            rounds = plan_rounds(p, batches, lengths, T.tolist(), close_tolerance)
            shifted = [x.shift(float(T[k])) for k, b in enumerate(rounds.batches) for x in b]
            return rounds.tokens / expected_max(shifted, float(T.sum()), _GRID)
        floor = float(T.sum())
        ready = p.ready_ms(lengths)
        missed = np.zeros(p.size)
        rules = batch_rules(p, n, close_tolerance)
        turn = math.nan  # the time between two turns of a batch, once a member can be late
        if any(rule is not None for rule in rules):
            expected = np.where(lengths > 0, ready + self._mean, 0.0)
            batches = [np.flatnonzero(batch_of == k).tolist() for k in range(n)]
            turn = turn_ms(expected, batches, T.tolist())
        # Each drafting member as its batch sees it: when its batch's verification ends, its
        # first and last value after that, where its batch's deadline cuts it (inf: nowhere),
        # and the weight of the turns it misses.
        seen: list[tuple[int, float, float, float, float]] = []
        for k, rule in enumerate(rules):
            drafting = np.flatnonzero((batch_of == k) & (lengths > 0))
            if drafting.size == 0:
                continue
            t_v = float(T[k])
            deadline = (
                math.inf
                if rule is None
                else rule.deadline_ms(float((ready[drafting] + self._mean[drafting]).max()))
            )
            for m in drafting.tolist():
                step = float(self._step[m])
                first = float(ready[m] + self._t0[m])
                last = first + float(self._top[m] - self._t0[m])
                cut = math.inf
                j = math.floor((deadline - first) / step + 1e-9) if deadline < math.inf else 0
                if deadline < math.inf and j < 0:  # always late: seen at the deadline itself
                    missed[m] = self._missed(m, first, last, deadline, turn)
                    cut, first, last = deadline, deadline, deadline
                elif deadline < math.inf and j < self._last[m] - 1:  # late from j + 1 on
                    missed[m] = self._missed(m, first, last, deadline, turn)
                    cut = last = first + j * step
                if last + t_v > floor:
                    seen.append(
                        (m, first + t_v, last + t_v, cut + t_v, missed[m] / (1 + missed[m]))
                    )
        tokens = float((expected_tokens(p.alpha, lengths) / (1.0 + missed)).sum())
        if not seen:
            return tokens / floor
        who = np.array([x[0] for x in seen])
        firsts, lasts, cuts, w0 = (np.array([x[i] for x in seen]) for i in range(1, 5))
        low = max(floor, float(np.where(w0 > 0, -np.inf, firsts).min()))
        high = float(lasts.max())
        pts = np.linspace(low, high, _GRID)
        at = np.floor((pts[None, :] - firsts[:, None]) / self._step[who, None] + 1e-6)
        at = np.clip(at.astype(np.int64) + 1, 0, self._last[who, None])
        f = np.where(pts[None, :] >= cuts[:, None], 1.0, self._cum[self._at[who, None] + at])
        cdf = (w0[:, None] + (1.0 - w0[:, None]) * f).prod(axis=0)
        cycle = low + float((1.0 - 0.5 * (cdf[:-1] + cdf[1:])).sum()) * (high - low) / (_GRID - 1)
        return tokens / cycle


def _quantile_problem(problem: Problem, q: float) -> Problem:
    """The mean model's problem in which each link takes its noise's ``q`` quantile."""
    users = tuple(
        dataclasses.replace(
            u,
            comm_ms=u.comm_ms + (u.comm_noise.quantile(q) if u.comm_noise is not None else 0.0),
            comm_noise=None,
        )
        for u in problem.users
    )
    return dataclasses.replace(problem, users=users)


def _neighbours(
    problem: Problem, batch_of: IntArray, n: int, lengths: IntArray
) -> Iterator[tuple[IntArray, int, IntArray]]:
    """Plans one step away: each user's draft one shorter or longer (the batches' tail-setting
    members first), then each batch's tail-setting member moved to another batch."""
    p = problem
    tail = p.ready_ms(lengths) + np.array(
        [u.comm_noise.quantile(TAIL_QUANTILE) if u.comm_noise is not None else 0.0 for u in p.users]
    )
    order = np.argsort(-tail, kind="stable")
    for m in order:
        for d in (-1, 1):
            ln = int(lengths[m]) + d
            if 0 <= ln <= p.max_draft_len:
                trial = lengths.copy()
                trial[m] = ln
                yield batch_of, n, trial
    for k in range(n):
        members = np.flatnonzero(batch_of == k)
        if members.size < 2:
            continue
        worst = int(members[np.argmax(tail[members])])
        for j in range(n):
            if j != k:
                moved = batch_of.copy()
                moved[worst] = j
                yield moved, n, lengths


def _search(problem: Problem, scorer: NoisyScorer, plan: Plan, budget: int) -> tuple[float, Plan]:
    """First-improvement local search from ``plan`` under ``scorer``, ``budget`` scorings."""
    n = len(plan.batches)
    batch_of = plan.batch_of(problem.size)
    lengths = np.asarray(plan.draft_len, dtype=np.int64)
    best = scorer.ratio(batch_of, n, lengths)
    improved = True
    while improved and budget > 0:
        improved = False
        for trial_of, trial_n, trial_len in _neighbours(problem, batch_of, n, lengths):
            if budget <= 0:
                break
            budget -= 1
            r = scorer.ratio(trial_of, trial_n, trial_len)
            if r > best * (1 + 1e-9):
                best, batch_of, lengths, improved = r, trial_of, trial_len, True
                break
    return best, Plan.from_arrays(batch_of, lengths)


def _choose_close(problem: Problem, scorer: NoisyScorer, plan: Plan, budget: int) -> Plan:
    """Each batch's close deadline: its tolerance (``CloseRule``) from ``CLOSE_TOLERANCES``
    and the edge's own, under ``scorer`` within ``budget`` scorings: first one tolerance for
    every batch, then each batch's own, in turn, while that gains. A tight deadline suits a
    batch whose stragglers are rare and far late (retransmissions): their rounds are lost
    rather than the batch's wait; a loose one a batch whose members are often a little late.
    The plan without tolerances where the edge's suits every batch."""
    edge = problem.edge.close
    if edge is None:  # the edge waits for every draft: nothing to choose
        return plan
    n = len(plan.batches)
    batch_of = plan.batch_of(problem.size)
    lengths = np.asarray(plan.draft_len, dtype=np.int64)
    ladder = sorted({*CLOSE_TOLERANCES, edge.tolerance})

    def score(tol: list[float]) -> float:
        return scorer.ratio(batch_of, n, lengths, tol)

    chosen = [edge.tolerance] * n
    best = score(chosen)
    for t in ladder:
        r = score([t] * n)
        if r > best * (1 + 1e-9):
            best, chosen = r, [t] * n
    budget -= len(ladder) + 1
    improved = n > 1
    while improved and budget > 0:
        improved = False
        for k in range(n):
            for t in ladder:
                if t == chosen[k] or budget <= 0:
                    continue
                budget -= 1
                trial = chosen.copy()
                trial[k] = t
                r = score(trial)
                if r > best * (1 + 1e-9):
                    best, chosen, improved = r, trial, True
    if all(t == edge.tolerance for t in chosen):
        return plan
    return dataclasses.replace(plan, close_tolerance=tuple(chosen))


def jitter_aware(problem: Problem, previous: Plan | None = None) -> Plan:
    """Plan for the expected throughput when every batch waits for all its members' random
    ready times (see the module docstring); ``previous`` re-plans warm, as for dipsd."""
    base = dipsd(problem, previous=previous)
    if not has_noise(problem):
        return base
    scorer = NoisyScorer(problem)
    starts = [base]
    if previous is not None:
        starts.append(previous)
    k = problem.size / len(base.batches)
    # Unpolished: the polish costs as much again, and the search below does its work (on 20
    # random instances of 14 and 30 users at 10 and 20 ms it was worth 0.0-0.1% of expected
    # throughput).
    starts.append(replan_warm(_quantile_problem(problem, k / (k + 1)), base, polish=False))
    # The best-scored start (the first of equals).
    start = max(
        starts,
        key=lambda s: scorer.ratio(
            s.batch_of(problem.size), len(s.batches), np.asarray(s.draft_len)
        ),
    )
    budget = int(np.clip(_BUDGET_WORK // problem.size, _MIN_EVALS, _MAX_EVALS))
    _, found = _search(problem, scorer, start, budget)
    found = _choose_close(problem, scorer, found, budget)
    # The last word is the exact model's, against dipsd's own plan.
    if (
        stochastic_evaluate(problem, found).throughput_tok_s
        > stochastic_evaluate(problem, base).throughput_tok_s
    ):
        return found
    return base
