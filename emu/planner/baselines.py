"""Baseline policies the DiP-SD planner is measured against.

Layer: pure (emu.planner).

- ``ad``: the target alone, one user per forward, one token per forward.
- ``ad_batch``: the target alone, greedy batching: users in prefix order fill each forward
  until the next would break the memory bound.
- ``sd``: speculative decoding with every user verified alone (singleton batches in a
  cycle), each user's draft length optimised.
- ``fixed``: the DiP-SD structure (N and the assignment optimised) with one fixed length.
"""

from __future__ import annotations

import numpy as np

from emu.planner.cost import Plan, Tableau
from emu.planner.dipsd import scan_batches, solo_lengths
from emu.planner.lengths import optimise_lengths
from emu.planner.model import Problem

__all__ = ["ad", "ad_batch", "fixed", "sd"]


def ad(problem: Problem) -> Plan:
    M = problem.size
    return Plan(batches=tuple((m,) for m in range(M)), draft_len=(0,) * M)


def ad_batch(problem: Problem) -> Plan:
    order = np.argsort(problem.prefix, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for m in order:
        trial = [*current, int(m)]
        if current and not problem.fits(np.array(len(trial)), problem.prefix[trial].max()):
            batches.append(current)
            trial = [int(m)]
        current = trial
    batches.append(current)
    return Plan(batches=tuple(tuple(b) for b in batches), draft_len=(0,) * problem.size)


def sd(problem: Problem) -> Plan:
    M = problem.size
    tab = Tableau(problem)
    batch_of = np.arange(M, dtype=np.int64)
    best: tuple[float, np.ndarray] = (-np.inf, np.zeros(M, dtype=np.int64))
    for start in (np.full(M, problem.initial_draft_len, dtype=np.int64), solo_lengths(problem)):
        lengths, ratio = optimise_lengths(tab, batch_of, M, start)
        if ratio > best[0]:
            best = (ratio, lengths)
    return Plan.from_arrays(batch_of, best[1])


def fixed(problem: Problem, draft_len: int | None = None) -> Plan:
    length = problem.fixed_draft_len if draft_len is None else draft_len
    start = np.full(problem.size, length, dtype=np.int64)
    return scan_batches(problem, [start], optimise=False, improve=True).plan()
