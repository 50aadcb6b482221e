"""The exact reference: the whole DiP-SD problem as a MILP, solved by HiGHS under Dinkelbach.

Layer: pure (emu.planner).

Maximising U / S is fractional; Dinkelbach solves max U - lam S for a rising lam, each one
mixed-integer linear program solved to optimality by HiGHS (``scipy.optimize.milp``), until the
optimum is zero: the last lam is the optimal throughput. It starts from the DiP-SD plan's ratio,
so on the instances where DiP-SD is already optimal one MILP proves it.

Variables (n indexes up to M batch slots, k the levels (L, I) a batch may be padded to):
x[m,n] user m in batch n; y[m,l] user m drafts l tokens; z[n,k] batch n padded to level k;
o[n] batch n used; T[n] verify time; D[n] ready time; S the cycle span.
Batch slots are used in order and user m may only sit in slots 0..m (symmetry breaking).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from emu.errors import ConfigError, DraftnetError
from emu.planner.baselines import ad
from emu.planner.cost import Plan, Tableau
from emu.planner.dipsd import dipsd
from emu.planner.model import Problem, expected_tokens, verify_flops

if TYPE_CHECKING:
    from scipy.optimize import LinearConstraint

__all__ = ["MAX_EXACT_USERS", "exact"]

MAX_EXACT_USERS = 10


class _Builder:
    """Sparse rows lb <= a x <= ub, collected then handed to HiGHS."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: dict[int, float], lb: float, ub: float) -> None:
        r = len(self.lb)
        for c, v in terms.items():
            self.rows.append(r)
            self.cols.append(c)
            self.vals.append(v)
        self.lb.append(lb)
        self.ub.append(ub)

    def constraint(self, n_vars: int) -> LinearConstraint:
        import scipy.sparse as sp  # scipy's solvers load in 0.4 s: only when an exact plan is made
        from scipy.optimize import LinearConstraint

        A = sp.csr_array(
            (self.vals, (self.rows, self.cols)), shape=(len(self.lb), n_vars), dtype=np.float64
        )
        return LinearConstraint(A, np.array(self.lb), np.array(self.ub))


def _solve_parametric(
    problem: Problem, lam: float, time_limit_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """max U - lam S; returns (batch_of, lengths)."""
    M = problem.size
    lmax = problem.max_draft_len
    lengths = range(lmax + 1)
    prefixes = [float(i) for i in np.unique(problem.prefix)]
    levels = [(L, i) for L in range(1, lmax + 1) for i in prefixes]
    K = len(levels)
    lat, edge = problem.edge.latency, problem.edge
    F = np.array([float(verify_flops(edge.target, L, i)) for L, i in levels])
    cap = np.array([int(edge.batch_capacity(i)) for _, i in levels])

    def x(m: int, n: int) -> int:
        return m * M + n

    y0 = M * M
    z0 = y0 + M * (lmax + 1)
    o0 = z0 + M * K
    T0, D0 = o0 + M, o0 + 2 * M
    s_idx = o0 + 3 * M
    n_vars = s_idx + 1

    def y(m: int, ln: int) -> int:
        return y0 + m * (lmax + 1) + ln

    def z(n: int, k: int) -> int:
        return z0 + n * K + k

    lens = np.arange(lmax + 1)
    ready = np.where(
        lens[None, :] > 0, lens[None, :] * problem.draft_ms[:, None] + problem.comm_ms[:, None], 0.0
    )
    r_max = float(ready.max())
    b = _Builder()
    for m in range(M):
        b.add({x(m, n): 1.0 for n in range(m + 1)}, 1, 1)
        b.add({y(m, ln): 1.0 for ln in lengths}, 1, 1)
    for n in range(M):
        b.add({**{z(n, k): 1.0 for k in range(K)}, o0 + n: -1.0}, 0, 0)
        if n + 1 < M:
            b.add({o0 + n: 1.0, o0 + n + 1: -1.0}, 0, np.inf)
        b.add({o0 + n: 1.0, **{x(m, n): -1.0 for m in range(n, M)}}, -np.inf, 0)
        for m in range(n, M):
            b.add({x(m, n): 1.0, o0 + n: -1.0}, -np.inf, 0)
            # Padded length and prefix of the batch cover every member's.
            terms = {y(m, ln): float(max(ln, 1)) for ln in lengths}
            terms.update({z(n, k): -float(levels[k][0]) for k in range(K)})
            terms[x(m, n)] = float(lmax)
            b.add(terms, -np.inf, float(lmax))
            terms = {x(m, n): float(problem.prefix[m])}
            terms.update({z(n, k): -levels[k][1] for k in range(K)})
            b.add(terms, -np.inf, 0)
            # Ready time of the batch covers every member's.
            terms = {y(m, ln): float(ready[m, ln]) for ln in lengths}
            terms[x(m, n)] = r_max
            terms[D0 + n] = -1.0
            b.add(terms, -np.inf, r_max)
        members = range(n, M)
        for k in range(K):
            big = lat.c_ms_per_flop * F[k] * M + lat.beta_ms
            terms = {x(m, n): lat.c_ms_per_flop * F[k] for m in members}
            terms[z(n, k)] = big
            terms[T0 + n] = -1.0
            b.add(terms, -np.inf, big - lat.beta_ms)
            terms = {x(m, n): 1.0 for m in members}
            terms[z(n, k)] = float(M)
            b.add(terms, -np.inf, float(cap[k] + M))
        b.add({D0 + n: 1.0, T0 + n: 1.0, s_idx: -1.0}, -np.inf, 0)
    b.add({**{T0 + n: 1.0 for n in range(M)}, s_idx: -1.0}, -np.inf, 0)
    # Valid cuts free of big-M terms, which tighten the LP bound a great deal: padding only
    # adds work, so S covers the sum of unpadded verify costs, and every user's own ready time
    # plus its own unpadded verify time.
    own = np.array(
        [
            [lat.c_ms_per_flop * float(verify_flops(edge.target, max(ln, 1), i)) for ln in lengths]
            for i in problem.prefix
        ]
    )
    terms = {o0 + n: lat.beta_ms for n in range(M)}
    for m in range(M):
        terms.update({y(m, ln): float(own[m, ln]) for ln in lengths})
    terms[s_idx] = -1.0
    b.add(terms, -np.inf, 0)
    for m in range(M):
        terms = {y(m, ln): float(ready[m, ln] + own[m, ln]) for ln in lengths}
        terms[s_idx] = -1.0
        b.add(terms, -np.inf, -lat.beta_ms)

    c = np.zeros(n_vars)
    u = expected_tokens(problem.alpha[:, None], lens[None, :])
    for m in range(M):
        for ln in lengths:
            c[y(m, ln)] = -float(u[m, ln])
    c[s_idx] = lam
    integrality = np.zeros(n_vars)
    integrality[:T0] = 1
    ub = np.full(n_vars, np.inf)
    ub[:T0] = 1.0
    for m in range(M):
        for n in range(m + 1, M):
            ub[x(m, n)] = 0.0
    for n in range(M):
        for k in range(K):
            if cap[k] < 1:
                ub[z(n, k)] = 0.0
    from scipy.optimize import Bounds, milp

    res = milp(
        c,
        constraints=[b.constraint(n_vars)],
        integrality=integrality,
        bounds=Bounds(np.zeros(n_vars), ub),
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-9},
    )
    if res.x is None:
        raise DraftnetError(f"HiGHS found no solution: {res.message}")
    sol = np.round(res.x).astype(np.int64)
    batch_of = np.array([int(np.argmax(sol[x(m, 0) : x(m, 0) + M])) for m in range(M)])
    chosen = np.array([int(np.argmax(sol[y(m, 0) : y(m, 0) + lmax + 1])) for m in range(M)])
    # Compact used slot numbers to 0..N-1.
    _, batch_of = np.unique(batch_of, return_inverse=True)
    return batch_of.astype(np.int64), chosen


def exact(problem: Problem, *, time_limit_s: float = 120.0, warm_start: bool = True) -> Plan:
    """The optimal plan (up to HiGHS's tolerance) for small M.

    ``warm_start=False`` starts Dinkelbach from the all-autoregressive plan instead of DiP-SD's,
    so that the MILP alone is shown to find the optimum (a test does this).
    """
    if problem.size > MAX_EXACT_USERS:
        raise ConfigError(
            f"users.count must be <= {MAX_EXACT_USERS} for policy exact "
            f"(it solves MILPs exponential in M), got {problem.size}; use policy dipsd"
        )
    tab = Tableau(problem)
    start = dipsd(problem) if warm_start else ad(problem)
    b0 = start.batch_of(problem.size)
    best_plan, (S, U) = start, tab.span(b0, len(start.batches), np.array(start.draft_len))
    lam = U / S
    for _ in range(30):
        batch_of, lens = _solve_parametric(problem, lam, time_limit_s)
        n = int(batch_of.max()) + 1
        S, U = tab.span(batch_of, n, lens)
        if U - lam * S <= 1e-9 * U:
            break
        lam = U / S
        best_plan = Plan.from_arrays(batch_of, lens)
    return best_plan
