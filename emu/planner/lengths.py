"""Length step of DiP-SD: assignment fixed, choose integer draft lengths maximising U / S.

Layer: pure (emu.planner).

Dinkelbach's method turns the ratio into a sequence of parametric problems
max_l U(l) - lam S(l), with lam set to the ratio of the last iterate; it stops when the
parametric optimum is zero. Each parametric problem is solved by exact coordinate ascent:
one user's length over all 0..l_max at a time, then moves of a whole batch (every member set
to one length, or capped at one), and bound sweeps, until no move improves. Every iterate is
feasible and the ratio never decreases.

A bound sweep gives every user the longest draft that meets a bound P on every batch's
ready-plus-verify time. With each batch's padding fixed, it shrinks all batches together. With
each batch choosing its padding as its best response to P, it also moves length from one batch
to another, which is what the cycle needs when several batches' ready-plus-verify times tie
for its maximum: no single batch's move shortens the cycle there.
"""

from __future__ import annotations

import numpy as np

from emu.planner.cost import Tableau
from emu.planner.model import FloatArray, IntArray, expected_tokens

__all__ = ["optimise_lengths"]

# Most bounds P one sweep move scores; below this the sweep is exact.
_MAX_SWEEP = 128
# The best-response sweep scores bounds x caps x users at once: about this many entries at
# most (and at least _MIN_RESPONSE_BOUNDS bounds).
_MAX_RESPONSE_ENTRIES = 100_000
_MIN_RESPONSE_BOUNDS = 32
# Prices on verify time, as fractions of lam, at which the best-response sweep shares the
# verify times' budget among batches.
_PRICES = np.r_[0.0, 2.0 ** np.arange(-6, 1)]


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
        self._sweeps: dict[bytes, tuple[FloatArray, FloatArray, IntArray]] = {}
        self._responses: tuple[FloatArray, FloatArray] | None = None
        # Users grouped by batch, and per batch the totals of "every member at length c".
        self.order = np.argsort(batch_of, kind="stable")
        bo = batch_of[self.order]
        self.starts = np.flatnonzero(np.r_[True, bo[1:] != bo[:-1]])
        self.all_u = np.add.reduceat(self.u[self.order], self.starts, axis=0)
        self.all_ready = np.maximum.reduceat(self.ready[self.order], self.starts, axis=0)
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

    def _others_all(self) -> tuple[FloatArray, FloatArray]:
        """Per batch k: the sum of T and the max of D + T over the other batches."""
        DT = self.D + self.T
        if self.n > 1:
            top = int(np.argmax(DT))
            second = float(np.max(np.delete(DT, top)))
            maxDT = np.where(np.arange(self.n) == top, second, DT[top])
        else:
            maxDT = np.zeros(1)
        return self.T.sum() - self.T, maxDT

    def best_user_moves(self, lam: float, U: float) -> tuple[FloatArray, IntArray]:
        """Every user's best single-length move at once: objective and length per user."""
        M, n = self.l.size, self.n
        k = self.batch_of
        idx = np.arange(M)
        L = self.l.astype(np.float64)
        R = self.ready[idx, self.l]
        L_rest = _max_excluding_self(L, k, n)
        r_rest = _max_excluding_self(R, k, n)
        sumT, maxDT = self._others_all()
        Lnew = np.maximum(np.maximum(self.cand[None, :], L_rest[:, None]), 1).astype(np.int64)
        Tnew = self.Tc[k[:, None], Lnew]
        Dnew = np.maximum(self.ready, r_rest[:, None])
        S = np.maximum(sumT[k][:, None] + Tnew, np.maximum(maxDT[k][:, None], Dnew + Tnew))
        obj = (U - self.u[idx, self.l])[:, None] + self.u - lam * S
        best = np.argmax(obj, axis=1)
        return obj[idx, best], best

    def best_batch_move(self, lam: float, U: float) -> tuple[float, int, IntArray]:
        """Best whole-batch move over every batch k and length c: every member of k at c, or
        every member capped at c. Returns the objective, the batch and its members' lengths."""
        order, starts = self.order, self.starts
        n = self.n
        cur = self.l[order]
        u_cur = np.add.reduceat(self.u[order, cur], starts)
        sumT, maxDT = self._others_all()
        U_rest = U - u_cur
        best = (-np.inf, 0, self.l[self.members[0]])
        capped = np.minimum(cur[:, None], self.cand[None, :])
        for lens in (None, capped):
            if lens is None:
                Uc = self.all_u
                Dc = self.all_ready
                Lc = np.broadcast_to(np.maximum(self.cand, 1)[None, :], (n, self.cand.size))
            else:
                Uc = np.add.reduceat(self.u[order[:, None], lens], starts, axis=0)
                Dc = np.maximum.reduceat(self.ready[order[:, None], lens], starts, axis=0)
                Lc = np.maximum(np.maximum.reduceat(lens, starts, axis=0), 1)
            Tc = np.take_along_axis(self.Tc, Lc, axis=1)
            S = np.maximum(sumT[:, None] + Tc, np.maximum(maxDT[:, None], Dc + Tc))
            obj = U_rest[:, None] + Uc - lam * S
            k, c = np.unravel_index(int(np.argmax(obj)), obj.shape)
            if obj[k, c] > best[0]:
                mem = self.members[k]
                new = np.full(mem.size, c) if lens is None else np.minimum(self.l[mem], c)
                best = (float(obj[k, c]), int(k), new.astype(np.int64))
        return best

    def best_sweep(self, lam: float, caps: IntArray) -> tuple[float, IntArray]:
        """Best response to a bound P on every batch's ready + verify time, over all P.

        With batch n capped at length caps[n], each member drafts the longest length whose ready
        time meets P - t_v(caps[n]). Every P at which some user's response changes is scored at
        once; this is the move that shrinks all batches together when S is a max over them.
        The responses do not depend on lam, so they are computed once per caps.
        """
        key = caps.tobytes()
        table = self._sweeps.get(key)
        if table is None:
            table = self._sweeps[key] = self._sweep_table(caps)
        U, S, lens = table
        i = int(np.argmax(U - lam * S))
        return float(U[i] - lam * S[i]), lens[i].copy()

    def _sweep_table(self, caps: IntArray) -> tuple[FloatArray, FloatArray, IntArray]:
        """U, S (inf where a bound is infeasible) and lengths for every bound P."""
        p, order, starts = self.p, self.order, self.starts
        bo = self.batch_of[order]
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
        avail = P[:, None] - Tcap[self.batch_of][None, :]
        ok = (avail >= 0).all(axis=1)
        lens = self._steps(avail, np.broadcast_to(caps[self.batch_of], avail.shape))[:, order]
        U = self.u[order[None, :], lens].sum(axis=1)
        Lb = np.maximum(np.maximum.reduceat(lens, starts, axis=1), 1)
        T = self.Tc[bo[starts][None, :], Lb]
        D = np.maximum.reduceat(self.ready[order[None, :], lens], starts, axis=1)
        S = np.where(ok, np.maximum(T.sum(axis=1), (D + T).max(axis=1)), np.inf)
        out = np.empty_like(lens)
        out[:, order] = lens
        return np.where(ok, U, 0.0), S, out

    def best_response_sweep(self, lam: float) -> tuple[float, IntArray]:
        """Best bound sweep where every batch also picks its padding, per bound P.

        Under a bound P on every batch's ready-plus-verify time, batches are independent: each
        picks the cap c whose members' longest drafts within P - t_v(c) carry the most tokens.
        That is exact where the bound sets the cycle alone. Where the verify times' sum may set
        it too, the batches share one budget: each batch weighs its tokens against a price on
        its verify time, for prices from 0 to lam, and the best choice is kept.
        """
        if self._responses is None:
            self._responses = self._response_table()
        P, Ukc = self._responses
        Tkc = self.Tc[None, :, :]
        ok = Tkc <= P[:, None, None]
        best, best_obj = None, -np.inf
        for weight in lam * _PRICES:
            # Ties go to the shorter padding: the same tokens for less verify time.
            score = np.where(ok, Ukc - weight * Tkc - 1e-9 * Tkc, -np.inf)
            caps = np.argmax(score, axis=2)
            U = np.take_along_axis(Ukc, caps[:, :, None], axis=2)[:, :, 0].sum(axis=1)
            T = self.Tc[np.arange(self.n)[None, :], caps].sum(axis=1)
            feasible = np.isfinite(np.max(score, axis=2)).all(axis=1)
            obj = np.where(feasible, U - lam * np.maximum(T, P), -np.inf)
            i = int(np.argmax(obj))
            if obj[i] > best_obj:
                best_obj, best = float(obj[i]), (float(P[i]), caps[i])
        if best is None:
            return -np.inf, self.l.copy()
        bound, caps = best
        return best_obj, self._longest_within(bound, caps)

    def _longest_within(self, bound: float, caps: IntArray) -> IntArray:
        """Each user's longest draft within its batch's cap and bound - t_v(cap)."""
        k = self.batch_of
        avail = bound - self.Tc[k, np.maximum(caps[k], 1)]
        return self._steps(avail, caps[k])

    def _steps(self, avail: FloatArray, cap: IntArray) -> IntArray:
        """The longest length whose ready time fits in ``avail``, at most ``cap`` (per user,
        broadcast over leading axes)."""
        g, c = self.p.draft_ms, self.p.comm_ms
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.floor((avail - c) / np.where(g > 0, g, np.inf) + 1e-9)
        # A user that drafts in no time drafts its cap, if its link time fits at all.
        steps = np.where(g > 0, steps, np.where(avail - c >= -1e-9, cap, 0))
        return np.clip(steps, 0, cap).astype(np.int64)

    def _response_table(self) -> tuple[FloatArray, FloatArray]:
        """The bounds P worth scoring, and per bound, batch and cap the tokens its members
        carry when each drafts the longest length within the cap and P - t_v(cap)."""
        p, M = self.p, self.l.size
        C = p.max_draft_len + 1
        T_user = self.Tc[self.batch_of]  # (M, C): the verify time of my batch at cap c
        cand = np.arange(C)
        within = (cand[:, None] <= cand[None, :])[None, :, :] & (cand[None, :, None] > 0)
        # Every bound at which some user's longest draft under some cap changes.
        P = np.unique(
            np.r_[
                (self.ready[:, :, None] + T_user[:, None, :])[np.broadcast_to(within, (M, C, C))],
                self.Tc.ravel(),
            ]
        )
        most = max(_MIN_RESPONSE_BOUNDS, _MAX_RESPONSE_ENTRIES // (C * M))
        if P.size > most:
            P = P[np.linspace(0, P.size - 1, most).round().astype(np.int64)]
        avail = P[:, None, None] - T_user[None, :, :]  # (P, M, C)
        lens = self._steps(
            np.moveaxis(avail, 1, 2), np.broadcast_to(cand[None, :, None], (P.size, C, M))
        )  # (P, C, M)
        u = self.u[np.arange(M)[None, None, :], lens]
        Ukc = np.add.reduceat(u[:, :, self.order], self.starts, axis=2)  # (P, C, n)
        return P, np.moveaxis(Ukc, 1, 2)

    def padded(self) -> IntArray:
        return np.array([max(1, int(self.l[m].max())) for m in self.members], dtype=np.int64)

    def apply_user(self, m: int, c: int) -> None:
        self.l[m] = c
        self._refresh(int(self.batch_of[m]))

    def apply_batch(self, k: int, lens: IntArray) -> None:
        self.l[self.members[k]] = lens
        self._refresh(k)


def _max_excluding_self(x: FloatArray, group: IntArray, n: int) -> FloatArray:
    """For each element, the max of x over the other members of its group (0 if none)."""
    top = np.full(n, -np.inf)
    np.maximum.at(top, group, x)
    # The first position attaining its group's max stands for it; the rest see that max.
    is_top = x == top[group]
    first = np.full(n, -1, dtype=np.int64)
    pos = np.flatnonzero(is_top)[::-1]
    first[group[pos]] = pos
    mask = np.zeros(x.size, dtype=bool)
    mask[first[group]] = True
    second = np.full(n, -np.inf)
    np.maximum.at(second, group[~mask], x[~mask])
    out = np.where(mask, second[group], top[group])
    return np.where(np.isfinite(out), out, 0.0)


def _ascend(st: _State, lam: float, *, respond: bool, max_sweeps: int = 50) -> float:
    """Coordinate ascent on U - lam S from the state's lengths; returns the final value.

    The aggregate moves (the bound sweep, whole batches) do most of the work; the
    best-response sweep and then the per-user pass, O(M) small moves, run only once they
    stall. A sweep's score is a bound on S, so each is kept only if the lengths it gives
    really do better.
    """
    U, S = st.value()
    cur = U - lam * S
    tol = 1e-12 * max(1.0, abs(U))

    def kept(lens: IntArray) -> bool:
        nonlocal U, S, cur
        before = st.l.copy()
        st.set(lens)
        U_new, S_new = st.value()
        if U_new - lam * S_new > cur + tol:
            U, S, cur = U_new, S_new, U_new - lam * S_new
            return True
        st.set(before)
        return False

    full = np.full(st.n, st.p.max_draft_len, dtype=np.int64)
    for _ in range(max_sweeps):
        moved = False
        for caps in (st.padded(), full):
            obj, lens = st.best_sweep(lam, caps)
            if obj > cur + tol:
                moved = kept(lens) or moved
        for _ in range(st.n):
            obj, k, lens = st.best_batch_move(lam, U)
            if obj <= cur + tol:
                break
            st.apply_batch(k, lens)
            U, S = st.value()
            cur, moved = U - lam * S, True
        if moved:
            continue
        if respond:
            obj, lens = st.best_response_sweep(lam)
            if obj > cur + tol and kept(lens):
                continue
        # Steepest single-user moves, all users scored at once, until none improves.
        for _ in range(st.l.size):
            objs, cs = st.best_user_moves(lam, U)
            m = int(np.argmax(objs))
            if objs[m] <= cur + tol:
                break
            st.apply_user(m, int(cs[m]))
            U, S = st.value()
            cur, moved = U - lam * S, True
        if not moved:
            break
    return cur


def optimise_lengths(
    tab: Tableau,
    batch_of: IntArray,
    n: int,
    lengths: IntArray,
    *,
    respond: bool = False,
    max_iter: int = 50,
) -> tuple[IntArray, float]:
    """Dinkelbach on the length step; returns the lengths and their ratio U / S [tokens/ms].

    ``respond`` adds the best-response sweep (the batches' paddings chosen per bound): it
    finds what the other moves miss where batches tie for the cycle, and costs several times
    as much, so a planner runs it on the plan it settles on, not on every plan it tries.
    """
    st = _State(tab, batch_of, n, lengths)
    U, S = st.value()
    lam = U / S
    for _ in range(max_iter):
        gain = _ascend(st, lam, respond=respond)
        U, S = st.value()
        if gain <= 1e-12 * max(1.0, U):
            break
        lam = U / S
    return st.l.copy(), U / S
