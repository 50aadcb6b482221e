"""Length step of DiP-SD: assignment fixed, choose integer draft lengths maximising U / S.

Layer: pure (emu.planner).

Dinkelbach's method turns the ratio into a sequence of parametric problems
max_l U(l) - lam S(l), with lam set to the ratio of the last iterate; it stops when the
parametric optimum is zero. Each parametric problem is solved by exact coordinate ascent:
one user's length over all 0..l_max at a time, then moves of a whole batch (every member set
to one length, or capped at one), until no move improves. Every iterate is feasible and the
ratio never decreases.
"""

from __future__ import annotations

import numpy as np

from emu.planner.cost import Tableau
from emu.planner.model import IntArray, expected_tokens

__all__ = ["optimise_lengths"]

# Most bounds P one sweep move scores; below this the sweep is exact.
_MAX_SWEEP = 128


class _State:
    """Per-batch aggregates of one plan, kept in step with the lengths as they change."""

    def __init__(self, tab: Tableau, batch_of: IntArray, n: int, lengths: IntArray) -> None:
        self.tab = tab
        self.p = tab.problem
        self.batch_of = batch_of
        self.n = n
        self.members = [np.flatnonzero(batch_of == k) for k in range(n)]
        self.size = np.array([m.size for m in self.members], dtype=np.float64)
        self.I = np.array([self.p.prefix[m].max() for m in self.members])
        self.cand = np.arange(self.p.max_draft_len + 1, dtype=np.int64)
        # u_m(c) and ready_m(c) for every user and candidate length: (M, l_max + 1).
        self.u = expected_tokens(self.p.alpha[:, None], self.cand[None, :])
        c = self.cand[None, :].astype(np.float64)
        self.ready = np.where(c > 0, c * self.p.draft_ms[:, None] + self.p.comm_ms[:, None], 0.0)
        self.Tc = self.p.verify_ms(self.size[:, None], np.maximum(c, 1.0), self.I[:, None])
        self.set(lengths)

    def set(self, lengths: IntArray) -> None:
        self.l = lengths.copy()
        self.T = np.empty(self.n)
        self.D = np.empty(self.n)
        for k in range(self.n):
            self._refresh(k)

    def _refresh(self, k: int) -> None:
        mem = self.members[k]
        L = max(1, int(self.l[mem].max()))
        self.T[k] = self.Tc[k, L]
        self.D[k] = self.ready[mem, self.l[mem]].max()

    def value(self) -> tuple[float, float]:
        U = float(self.u[np.arange(self.l.size), self.l].sum())
        S = float(max(self.T.sum(), (self.D + self.T).max()))
        return U, S

    def _others(self, k: int) -> tuple[float, float]:
        """Sum of T and max of D + T over the batches other than k."""
        sumT = float(self.T.sum() - self.T[k])
        if self.n == 1:
            return sumT, 0.0
        DT = self.D + self.T
        saved = DT[k]
        DT[k] = -np.inf
        other = float(DT.max())
        DT[k] = saved
        return sumT, other

    def best_user_move(self, m: int, lam: float, U: float) -> tuple[float, int]:
        k = int(self.batch_of[m])
        mem = self.members[k]
        rest = mem[mem != m]
        L_rest = int(self.l[rest].max()) if rest.size else 0
        r_rest = float(self.ready[rest, self.l[rest]].max()) if rest.size else 0.0
        Lnew = np.maximum(np.maximum(self.cand, L_rest), 1)
        Tnew = self.Tc[k, Lnew]
        Dnew = np.maximum(self.ready[m], r_rest)
        sumT, maxDT = self._others(k)
        S = np.maximum(sumT + Tnew, np.maximum(maxDT, Dnew + Tnew))
        obj = U - self.u[m, self.l[m]] + self.u[m] - lam * S
        c = int(np.argmax(obj))
        return float(obj[c]), c

    def best_batch_move(self, k: int, lam: float, U: float) -> tuple[float, IntArray]:
        """Best of: every member at length c, or every member capped at c, over all c."""
        mem = self.members[k]
        cur = self.l[mem]
        U_rest = U - float(self.u[mem, cur].sum())
        sumT, maxDT = self._others(k)
        cand = self.cand
        options = (
            np.broadcast_to(cand[None, :], (mem.size, cand.size)),
            np.minimum(cur[:, None], cand[None, :]),
        )
        best_obj, best_l = -np.inf, cur
        for lens in options:
            rows = mem[:, None]
            Uc = U_rest + self.u[rows, lens].sum(axis=0)
            Lc = np.maximum(lens.max(axis=0), 1)
            Tc = self.Tc[k, Lc]
            Dc = self.ready[rows, lens].max(axis=0)
            S = np.maximum(sumT + Tc, np.maximum(maxDT, Dc + Tc))
            obj = Uc - lam * S
            c = int(np.argmax(obj))
            if obj[c] > best_obj:
                best_obj, best_l = float(obj[c]), lens[:, c].copy()
        return best_obj, best_l

    def best_sweep(self, lam: float, caps: IntArray) -> tuple[float, IntArray]:
        """Best response to a bound P on every batch's ready + verify time, over all P.

        With batch n capped at length caps[n], each member drafts the longest length whose ready
        time meets P - t_v(caps[n]). Every P at which some user's response changes is scored at
        once; this is the move that shrinks all batches together when S is a max over them.
        """
        p = self.p
        order = np.argsort(self.batch_of, kind="stable")
        bo = self.batch_of[order]
        starts = np.flatnonzero(np.r_[True, bo[1:] != bo[:-1]])
        Tcap = self.Tc[np.arange(self.n), np.maximum(caps, 1)]
        lens_idx = np.arange(1, p.max_draft_len + 1)
        within = lens_idx[None, :] <= caps[self.batch_of][:, None]
        P = np.unique(
            np.r_[
                (self.ready[:, 1:] + Tcap[self.batch_of][:, None])[within],
                Tcap,
            ]
        )
        if P.size > _MAX_SWEEP:
            # Large instances: an even subsample of the bounds keeps the move O(M) per call.
            P = P[np.linspace(0, P.size - 1, _MAX_SWEEP).round().astype(np.int64)]
        avail = P[:, None] - Tcap[bo][None, :]
        g, c = p.draft_ms[order], p.comm_ms[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.floor((avail - c[None, :]) / np.where(g > 0, g, np.inf)[None, :] + 1e-9)
        steps = np.where(g[None, :] > 0, steps, caps[bo][None, :])
        lens = np.clip(steps, 0, caps[bo][None, :]).astype(np.int64)
        ok = (avail >= 0).all(axis=1)
        U = self.u[order[None, :], lens].sum(axis=1)
        Lb = np.maximum(np.maximum.reduceat(lens, starts, axis=1), 1)
        T = self.Tc[bo[starts][None, :], Lb]
        D = np.maximum.reduceat(self.ready[order[None, :], lens], starts, axis=1)
        S = np.maximum(T.sum(axis=1), (D + T).max(axis=1))
        obj = np.where(ok, U - lam * S, -np.inf)
        i = int(np.argmax(obj))
        out = np.empty_like(self.l)
        out[order] = lens[i]
        return float(obj[i]), out

    def padded(self) -> IntArray:
        return np.array([max(1, int(self.l[m].max())) for m in self.members], dtype=np.int64)

    def apply_user(self, m: int, c: int) -> None:
        self.l[m] = c
        self._refresh(int(self.batch_of[m]))

    def apply_batch(self, k: int, lens: IntArray) -> None:
        self.l[self.members[k]] = lens
        self._refresh(k)


def _ascend(st: _State, lam: float, *, max_sweeps: int = 50) -> float:
    """Coordinate ascent on U - lam S from the state's lengths; returns the final value.

    The aggregate moves (the bound sweep, whole batches) are cheap and do most of the work;
    the per-user pass, O(M) small moves, runs only once they stall.
    """
    U, S = st.value()
    cur = U - lam * S
    tol = 1e-12 * max(1.0, abs(U))
    full = np.full(st.n, st.p.max_draft_len, dtype=np.int64)
    for _ in range(max_sweeps):
        moved = False
        for caps in (st.padded(), full):
            obj, lens = st.best_sweep(lam, caps)
            if obj > cur + tol:
                st.set(lens)
                U, S = st.value()
                cur, moved = U - lam * S, True
        for k in range(st.n):
            obj, lens = st.best_batch_move(k, lam, U)
            if obj > cur + tol:
                st.apply_batch(k, lens)
                U, S = st.value()
                cur, moved = U - lam * S, True
        if moved:
            continue
        for m in range(st.l.size):
            obj, c = st.best_user_move(m, lam, U)
            if obj > cur + tol:
                st.apply_user(m, c)
                U, S = st.value()
                cur, moved = U - lam * S, True
        if not moved:
            break
    return cur


def optimise_lengths(
    tab: Tableau, batch_of: IntArray, n: int, lengths: IntArray, *, max_iter: int = 50
) -> tuple[IntArray, float]:
    """Dinkelbach on the length step; returns the lengths and their ratio U / S [tokens/ms]."""
    st = _State(tab, batch_of, n, lengths)
    U, S = st.value()
    lam = U / S
    for _ in range(max_iter):
        gain = _ascend(st, lam)
        U, S = st.value()
        if gain <= 1e-12 * max(1.0, U):
            break
        lam = U / S
    return st.l.copy(), U / S
