"""Assignment step of DiP-SD: draft lengths fixed, split users into N batches minimising S.

Layer: pure (emu.planner).

S = max(sum_n t_v_n, max_n (t_d_n + t_v_n)) is not additive, so the split is found by a
threshold search: for a bound B on every batch's ready-plus-verify time, a dynamic programme
over users taken in a fixed order finds the contiguous split into exactly N batches with the
least total verify time f(B). f is non-increasing in B and changes only at the finitely many
batch times, so S* = min_B max(f(B), B) is found by bisection over those values. The DP is
exact over contiguous splits of the order; several orders (by ready time, by padded length, by
prefix) are tried, and a local search (moves, swaps) then reaches non-contiguous splits.
"""

from __future__ import annotations

import numpy as np

from emu.planner.cost import Tableau
from emu.planner.model import FloatArray, IntArray

__all__ = ["assign_batches", "local_search"]

_INF = float("inf")
# Pairwise swaps are O(M^2) span evaluations a pass: worth it only on small instances.
_MAX_SWAP_USERS = 10


def _segment_tables(
    tab: Tableau, order: IntArray, draft_len: IntArray
) -> tuple[FloatArray, FloatArray]:
    """T[j, k] and DT[j, k] for the batch order[j:k] (inf where j >= k or memory breaks)."""
    p = tab.problem
    M = order.size
    ready = p.ready_ms(draft_len)[order]
    Lv = np.maximum(draft_len[order], 1).astype(np.float64)
    pref = p.prefix[order]
    Lmax = np.zeros((M + 1, M + 1))
    Imax = np.zeros((M + 1, M + 1))
    Rmax = np.zeros((M + 1, M + 1))
    for j in range(M):
        Lmax[j, j + 1 :] = np.maximum.accumulate(Lv[j:])
        Imax[j, j + 1 :] = np.maximum.accumulate(pref[j:])
        Rmax[j, j + 1 :] = np.maximum.accumulate(ready[j:])
    idx = np.arange(M + 1, dtype=np.float64)
    size = idx[None, :] - idx[:, None]
    valid = size > 0
    size_c = np.where(valid, size, 1.0)
    T = p.verify_ms(size_c, Lmax, Imax)
    ok = valid & p.fits(size_c, Imax)
    T = np.where(ok, T, _INF)
    return T, np.where(ok, Rmax + T, _INF)


def _dp(Tm: FloatArray, n: int) -> tuple[float, list[int]]:
    """Least sum of T over splits of 0..M into exactly n segments; returns cuts."""
    M = Tm.shape[0] - 1
    f = np.full(M + 1, _INF)
    f[0] = 0.0
    back = np.zeros((n, M + 1), dtype=np.int64)
    for s in range(n):
        cand = f[:, None] + Tm
        back[s] = np.argmin(cand, axis=0)
        f = cand[back[s], np.arange(M + 1)]
    if not np.isfinite(f[M]):
        return _INF, []
    cuts = [M]
    k = M
    for s in range(n - 1, -1, -1):
        k = int(back[s, k])
        cuts.append(k)
    return float(f[M]), cuts[::-1]


def _split_in_order(T: FloatArray, DT: FloatArray, n: int) -> tuple[float, list[int]]:
    """Best contiguous split into n segments under S = max(sum T, max DT)."""
    M = T.shape[0] - 1
    # One or two segments: score the whole, or every cut, directly (no bisection of DPs).
    if n == 1:
        whole = float(max(T[0, M], DT[0, M]))
        return (whole, [0, M]) if np.isfinite(whole) else (_INF, [])
    if n == 2:
        cut = np.arange(1, M)
        span = np.maximum(T[0, cut] + T[cut, M], np.maximum(DT[0, cut], DT[cut, M]))
        if span.size == 0 or not np.isfinite(span.min()):
            return _INF, []
        i = int(np.argmin(span))
        return float(span[i]), [0, int(cut[i]), M]
    cands = np.unique(DT[np.isfinite(DT)])
    if cands.size == 0:
        return _INF, []

    def f(B: float) -> tuple[float, list[int]]:
        return _dp(np.where(DT <= B, T, _INF), n)

    lo, hi = 0, cands.size - 1
    top, top_cuts = f(float(cands[hi]))
    if not np.isfinite(top):
        return _INF, []
    # Smallest candidate B with f(B) <= B; the one below it has f > B.
    if top > cands[hi]:
        return top, top_cuts
    while lo < hi:
        mid = (lo + hi) // 2
        v, _ = f(float(cands[mid]))
        if v <= cands[mid]:
            hi = mid
        else:
            lo = mid + 1
    best_val, best_cuts = f(float(cands[lo]))
    best = float(cands[lo])
    if lo > 0:
        below, below_cuts = f(float(cands[lo - 1]))
        if below < best:
            return below, below_cuts
    return max(best, best_val), best_cuts


def _orders(tab: Tableau, draft_len: IntArray, many: bool) -> list[IntArray]:
    p = tab.problem
    ready = p.ready_ms(draft_len)
    Lv = np.maximum(draft_len, 1)
    orders = [np.lexsort((p.prefix, Lv, ready))]
    if many:
        orders.append(np.lexsort((ready, p.prefix, Lv)))
        orders.append(np.lexsort((ready, Lv, p.prefix)))
    return orders


def assign_batches(
    tab: Tableau, n: int, draft_len: IntArray, *, improve: bool = True
) -> IntArray | None:
    """Users' batch indices (0..n-1, in verification order) minimising S, or None if infeasible.

    ``improve=False`` is the published step: one order (ready time), no local search.
    """
    M = tab.n_users
    if not 1 <= n <= M:
        return None
    best_val = _INF
    best: IntArray | None = None
    for order in _orders(tab, draft_len, improve):
        T, DT = _segment_tables(tab, order, draft_len)
        val, cuts = _split_in_order(T, DT, n)
        if val < best_val:
            batch_of = np.empty(M, dtype=np.int64)
            for k in range(n):
                batch_of[order[cuts[k] : cuts[k + 1]]] = k
            best_val, best = val, batch_of
    if best is None:
        return None
    if improve:
        best = local_search(tab, best, n, draft_len)
    return _renumber_by_ready(tab, best, n, draft_len)


def _renumber_by_ready(tab: Tableau, batch_of: IntArray, n: int, draft_len: IntArray) -> IntArray:
    """Number batches so the earliest ready is verified first (S does not depend on order)."""
    _, _, _, D = tab.batch_stats(batch_of, n, draft_len)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(D, kind="stable")] = np.arange(n)
    return rank[batch_of]


def local_search(
    tab: Tableau, batch_of: IntArray, n: int, draft_len: IntArray, *, max_passes: int = 20
) -> IntArray:
    """First-improvement moves (and swaps for small M) that lower S, keeping n batches."""
    p = tab.problem
    M = tab.n_users
    cur = batch_of.copy()
    S, _ = tab.span(cur, n, draft_len)
    ready = p.ready_ms(draft_len)
    Lv = np.maximum(draft_len, 1).astype(np.float64)
    for _ in range(max_passes):
        improved = False
        for m in range(M):
            src = int(cur[m])
            size, L, I, D = tab.batch_stats(cur, n, draft_len)
            if size[src] <= 1:
                continue
            T = p.verify_ms(size, L, I)
            rest = (cur == src) & (np.arange(M) != m)
            sz_s = size[src] - 1
            L_s = max(1.0, float(Lv[rest].max()))
            I_s = float(p.prefix[rest].max())
            D_s = float(ready[rest].max())
            T_s = float(p.verify_ms(np.array(sz_s), np.array(L_s), np.array(I_s)))
            # Destination k gains m.
            sz_k = size + 1
            L_k = np.maximum(L, Lv[m])
            I_k = np.maximum(I, p.prefix[m])
            D_k = np.maximum(D, ready[m])
            T_k = p.verify_ms(sz_k, L_k, I_k)
            ok = p.fits(sz_k, I_k)
            sumT = T.sum() - T[src] + T_s - T + T_k
            DT = D + T
            DT[src] = D_s + T_s
            order = np.argsort(DT)[::-1]
            first, second = order[0], (order[1] if n > 1 else order[0])
            excl = np.where(np.arange(n) == first, DT[second], DT[first])
            cand = np.maximum(sumT, np.maximum(excl, D_k + T_k))
            cand[src] = _INF
            cand[~ok] = _INF
            k = int(np.argmin(cand))
            if cand[k] < S * (1 - 1e-12):
                cur[m] = k
                S = float(cand[k])
                improved = True
        if M <= _MAX_SWAP_USERS:
            for a in range(M):
                for b in range(a + 1, M):
                    if cur[a] == cur[b]:
                        continue
                    cur[a], cur[b] = cur[b], cur[a]
                    s2, _ = tab.span(cur, n, draft_len)
                    if s2 < S * (1 - 1e-12):
                        S = s2
                        improved = True
                    else:
                        cur[a], cur[b] = cur[b], cur[a]
        if not improved:
            break
    return cur
