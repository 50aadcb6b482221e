"""Plans and their evaluation under the DiP-SD cost model.

Layer: pure (emu.planner).

A plan assigns every user to exactly one batch and gives each user an integer draft length.
Batches are verified in the listed (cyclic) order while the others draft. A draft length of 0
means the user does not draft: the target decodes one token for it autoregressively.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emu.errors import ConfigError
from emu.planner.model import MAX_TOLERANCE, FloatArray, IntArray, Problem, expected_tokens

__all__ = ["Evaluation", "Plan", "Tableau", "evaluate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """batches: user indices per batch, in verification order; draft_len: per user [tokens];
    close_tolerance: each batch's deadline tolerance where the planner chose one (``CloseRule``:
    the batch closes at 1 + tolerance times its latest member's expected ready time plus the
    edge's grace), empty for the edge's own. The published model ignores it: it waits for
    every draft."""

    batches: tuple[tuple[int, ...], ...]
    draft_len: tuple[int, ...]
    close_tolerance: tuple[float, ...] = ()

    def check(self, problem: Problem) -> None:
        """Raise ConfigError unless every user is in exactly one batch and lengths are in range."""
        M = problem.size
        seen = [u for b in self.batches for u in b]
        if any(len(b) == 0 for b in self.batches):
            raise ConfigError("plan.batches must not contain an empty batch")
        if sorted(seen) != list(range(M)):
            raise ConfigError(
                f"plan.batches must hold each of the {M} users exactly once, got {seen}"
            )
        if len(self.draft_len) != M:
            raise ConfigError(f"plan.draft_len must have {M} entries, got {len(self.draft_len)}")
        for m, ln in enumerate(self.draft_len):
            if not 0 <= ln <= problem.max_draft_len:
                raise ConfigError(
                    f"plan.draft_len[{m}] must be in [0, {problem.max_draft_len}], got {ln}"
                )
        tol = self.close_tolerance
        if tol and len(tol) != len(self.batches):
            raise ConfigError(
                f"plan.close_tolerance must have one per batch ({len(self.batches)}) or none, "
                f"got {tol!r}"
            )
        for k, t in enumerate(tol):
            if not (isinstance(t, int | float) and 0.0 <= t <= MAX_TOLERANCE):
                raise ConfigError(
                    f"plan.close_tolerance[{k}] must be in [0, {MAX_TOLERANCE:g}], got {t!r}"
                )

    @classmethod
    def from_arrays(cls, batch_of: IntArray, draft_len: IntArray) -> Plan:
        """Build from a batch index per user; batches are numbered in verification order."""
        n = int(batch_of.max()) + 1 if batch_of.size else 0
        batches = tuple(tuple(int(u) for u in np.flatnonzero(batch_of == k)) for k in range(n))
        return cls(
            batches=tuple(b for b in batches if b),
            draft_len=tuple(int(x) for x in draft_len),
        )

    def batch_of(self, size: int) -> IntArray:
        out = np.full(size, -1, dtype=np.int64)
        for k, b in enumerate(self.batches):
            out[list(b)] = k
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """What the cost model predicts for a plan. Times in ms, throughput in tokens/s."""

    throughput_tok_s: float
    cycle_ms: float
    tokens_per_cycle: float
    verify_ms: tuple[float, ...]
    ready_ms: tuple[float, ...]
    memory_bytes: tuple[float, ...]
    feasible: bool


class Tableau:
    """Fast repeated evaluation of plans on one problem (used inside the optimisers).

    ``span(batch_of, n, draft_len)`` returns the cycle span S [ms] and the per-cycle committed
    tokens U, or S = inf where a batch breaks the memory bound.
    """

    __slots__ = ("n_users", "problem")

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.n_users = problem.size

    def batch_stats(
        self, batch_of: IntArray, n: int, draft_len: IntArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per batch: size b, padded verify length L, padded prefix I, ready time D."""
        p = self.problem
        size = np.bincount(batch_of, minlength=n).astype(np.float64)
        L = np.ones(n)
        np.maximum.at(L, batch_of, draft_len.astype(np.float64))
        I = np.zeros(n)
        np.maximum.at(I, batch_of, p.prefix)
        D = np.zeros(n)
        np.maximum.at(D, batch_of, p.ready_ms(draft_len))
        return size, L, I, D

    def span(self, batch_of: IntArray, n: int, draft_len: IntArray) -> tuple[float, float]:
        p = self.problem
        size, L, I, D = self.batch_stats(batch_of, n, draft_len)
        U = float(expected_tokens(p.alpha, draft_len).sum())
        if not p.fits(size, I).all():
            return float("inf"), U
        T = p.verify_ms(size, L, I)
        return float(max(T.sum(), (D + T).max())), U


def evaluate(problem: Problem, plan: Plan) -> Evaluation:
    """Predict throughput and timing of ``plan`` on ``problem`` (the published cost model)."""
    plan.check(problem)
    n = len(plan.batches)
    batch_of = plan.batch_of(problem.size)
    lengths = np.asarray(plan.draft_len, dtype=np.int64)
    size, L, I, D = Tableau(problem).batch_stats(batch_of, n, lengths)
    T = problem.verify_ms(size, L, I)
    edge = problem.edge
    mem = edge.target.weight_bytes + edge.target.kv_bytes(size * I)
    cycle = float(max(T.sum(), (D + T).max()))
    U = float(expected_tokens(problem.alpha, lengths).sum())
    return Evaluation(
        throughput_tok_s=1000.0 * U / cycle,
        cycle_ms=cycle,
        tokens_per_cycle=U,
        verify_ms=tuple(float(t) for t in T),
        ready_ms=tuple(float(d) for d in D),
        memory_bytes=tuple(float(x) for x in mem),
        feasible=bool((mem <= edge.memory_bytes).all()),
    )
