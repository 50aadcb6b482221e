"""The verifier's planning rule: the problem it plans (users as it now believes them), the plan
in force in the planner's indices, the plan it gets back in user ids, and when to plan again.

Layer: pure (no clock, no I/O; the planner is called by the shell, never from here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emu.planner.cost import Evaluation, Plan
from emu.planner.lattice import TAIL_QUANTILE, Lattice
from emu.planner.model import Edge, FloatArray, LatencyModel, Problem, User
from nodes.core.estimate import UserEstimate
from nodes.core.schedule import EdgePlan

__all__ = ["ReplanRule", "believed", "edge_plan", "in_force", "planning_problem"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplanRule:
    """When the plan is made again: every ``every`` cycles (0: never on a timer), and when a
    trusted estimate (``min_rounds`` samples) has moved by ``drift`` (relative) from what the
    plan assumed, and by more than its noise. Planning with the mean link time, a mean has
    moved by more than its noise if it moved by more than 3 standard errors of the difference
    of two windows' means: one round stalled by a host (a 0.3 s hiccup among 16 rounds), or a
    few retransmissions 200 ms late coming and going in the window, move the mean by several
    ms, and are no new link to plan for; a move of every round is, though a slow round among
    them widened the mean's error, so a mean moved also if the median moved as far, beyond
    its own error. A link's tail (its ``TAIL_QUANTILE``, which the
    jitter-aware policy plans with) that moved as far is a new link too, though its mean
    stayed, if the rounds say so beyond chance: more of them past the plan's tail, or fewer
    past the new one, than the plan's distribution gives with probability ``_UNLIKELY``."""

    every: int = 50
    drift: float = 0.2
    min_rounds: int = 16
    comm_quantile: float | None = None  # plan with the mean link time, or this quantile

    def reason(
        self,
        cycles: int,
        estimates: Mapping[int, UserEstimate],
        basis: Mapping[int, User],
        priors: Mapping[int, User],
    ) -> str | None:
        """Why the plan should be made again after ``cycles`` cycles, if it should."""
        if self.every and cycles % self.every == 0:
            return "periodic"
        for uid, est in estimates.items():
            base = basis.get(uid)
            if base is None or est.rounds < self.min_rounds:
                continue
            now = believed(priors[uid], est, self)
            # A change must be large (drift) and real: beyond 3 standard errors of the estimate.
            trials = max(1, sum(est.trials))
            noise = 3.0 * math.sqrt(max(base.alpha * (1 - base.alpha), 1e-4) / trials)
            if abs(now.alpha - base.alpha) > max(self.drift * base.alpha, noise):
                return f"user {uid} alpha drifted from {base.alpha:.3g} to {now.alpha:.3g}"
            for name, a, b in (
                ("comm_ms", now.comm_ms, base.comm_ms),
                ("draft_ms", now.draft_ms_per_token, base.draft_ms_per_token),
            ):
                if abs(a - b) <= max(self.drift * b, 0.5):
                    continue
                # Beyond its noise too (asked only of a large move: the rule runs every cycle).
                # The plan's value is a mean only when it plans with the mean: a quantile plan
                # must see its tail grow.
                mean = name == "comm_ms" and self.comm_quantile is None
                if (
                    not mean
                    or abs(a - b) > 3.0 * _mean_difference_error(est, base)
                    or self._median_moved(est, base)
                ):
                    return f"user {uid} {name} drifted from {b:.3g} to {a:.3g}"
            tail_now, tail_then = _tail_ms(now), _tail_ms(base)
            if (
                tail_now is not None
                and tail_then is not None
                and abs(tail_now - tail_then) > max(self.drift * tail_then, 0.5)
                and _tail_moved(est, base, tail_then, tail_now)
            ):
                return (
                    f"user {uid} comm_ms tail (p{100 * TAIL_QUANTILE:.0f}) moved from "
                    f"{tail_then:.3g} to {tail_now:.3g}"
                )
        return None

    def _median_moved(self, est: UserEstimate, base: User) -> bool:
        """Whether the typical round moved too, as far as the mean and beyond 3 standard
        errors of the two medians' difference: a mean that one slow round moved is noise,
        but one slow round also widens the mean's error past a move every round made."""
        x = _link_samples(est)
        now = float(np.median(x))
        then = base.comm_ms
        error = _median_error(float(np.subtract(*np.percentile(x, [75, 25]))), x.size)
        if base.comm_noise is not None:
            q = base.comm_noise.quantile
            then += q(0.5)
            error = math.hypot(error, _median_error(q(0.75) - q(0.25), x.size))
        return abs(now - then) > max(self.drift * then, 0.5, 3.0 * error)


# How unlikely a count of rounds past a tail must be under the plan's distribution to say the
# tail moved: 3 standard deviations' worth, one-sided.
_UNLIKELY = 0.00135


def _link_samples(est: UserEstimate) -> FloatArray:
    return np.fromiter(est.comm_ms, dtype=np.float64)


def _mean_difference_error(est: UserEstimate, base: User) -> float:
    """The standard error of the window's mean link time less the plan's, two windows of
    the same size: from the window's spread and the plan's (its ``comm_noise``)."""
    x = _link_samples(est)
    if x.size < 2:
        return 0.0
    then = 0.0
    if base.comm_noise is not None:
        d = base.comm_noise.support - base.comm_noise.mean
        then = float(base.comm_noise.pmf @ (d * d))
    return math.sqrt((float(x.var(ddof=1)) + then) / x.size)


def _median_error(iqr: float, n: int) -> float:
    """The standard error of a median of ``n`` rounds whose interquartile range is ``iqr``
    (normal rounds: a standard deviation of iqr / 1.349, and the median's error 1.2533 times
    the mean's); the range, unlike the variance, does not see a few slow rounds."""
    return 1.2533 * (iqr / 1.349) / math.sqrt(n)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return float(sum(math.comb(n, j) * p**j * (1.0 - p) ** (n - j) for j in range(k + 1)))


def _tail_moved(est: UserEstimate, base: User, tail_then: float, tail_now: float) -> bool:
    """Whether the window's rounds are unlikely under the plan's link distribution: too many
    past the plan's tail, or too few past the window's own."""
    noise = base.comm_noise
    assert noise is not None
    x = _link_samples(est)

    def past(t: float) -> float:  # the plan's P(link time > t)
        return 1.0 - float(noise.cdf(t - base.comm_ms))

    more = int((x > tail_then).sum())
    fewer = int((x > tail_now).sum())
    return (
        1.0 - _binomial_cdf(more - 1, x.size, past(tail_then)) < _UNLIKELY
        or _binomial_cdf(fewer, x.size, past(tail_now)) < _UNLIKELY
    )


def _tail_ms(user: User) -> float | None:
    """The link time per round that the user's rounds exceed with 1 - TAIL_QUANTILE."""
    if user.comm_noise is None:
        return None
    return user.comm_ms + user.comm_noise.quantile(TAIL_QUANTILE)


def believed(prior: User, est: UserEstimate | None, rule: ReplanRule) -> User:
    """The user as the verifier now believes it is: estimates where trusted, else the prior.
    A measured link is its mean (or the rule's quantile) and, as its noise, the distribution
    of the rounds' link times around that value."""
    if est is None or est.rounds < rule.min_rounds:
        return prior
    alpha = est.alpha()
    comm = est.comm(rule.comm_quantile)
    draft = est.draft_ms()
    noise = prior.comm_noise
    if comm is not None:
        noise = Lattice.empirical(np.fromiter(est.comm_ms, dtype=np.float64)).shift(-comm)
    return User(
        alpha=alpha if alpha is not None else prior.alpha,
        prefix_len=prior.prefix_len,
        comm_ms=comm if comm is not None else prior.comm_ms,
        draft=prior.draft,
        device=per_token(draft, prior.device),
        name=prior.name,
        comm_noise=noise,
    )


def per_token(draft_ms: float | None, fallback: LatencyModel) -> LatencyModel:
    """A device known only by its measured time per drafted token: G(1, F) = that time."""
    if draft_ms is None:
        return fallback
    return LatencyModel(c_ms_per_flop=0.0, beta_ms=float(draft_ms))


def planning_problem(
    users: Sequence[User], edge: Edge, *, max_draft_len: int, initial: int, fixed: int
) -> Problem:
    return Problem(
        users=tuple(users),
        edge=edge,
        max_draft_len=max_draft_len,
        initial_draft_len=min(initial, max_draft_len),
        fixed_draft_len=min(fixed, max_draft_len),
    )


def in_force(plan: EdgePlan | None, uids: Sequence[int]) -> Plan | None:
    """The plan in force in the indices of ``uids`` (sorted), if it covers exactly them."""
    if plan is None or sorted(plan.draft_len) != list(uids):
        return None
    index = {u: i for i, u in enumerate(uids)}
    return Plan(
        batches=tuple(tuple(index[u] for u in b) for b in plan.batches),
        draft_len=tuple(plan.draft_len[u] for u in uids),
        close_tolerance=plan.close_tolerance,
    )


def edge_plan(
    plan: Plan,
    uids: Sequence[int],
    problem: Problem,
    evaluation: Evaluation,
    *,
    plan_id: int,
    reason: str,
) -> EdgePlan:
    """The planner's plan (in the problem's indices) in user ids. Its link times are what the
    stochastic model expects of each user's round (its delay plus its noise's mean), which
    the deadlines scale."""
    expected_comm = [
        u.comm_ms + (u.comm_noise.mean if u.comm_noise is not None else 0.0) for u in problem.users
    ]
    return EdgePlan(
        plan_id=plan_id,
        batches=tuple(tuple(uids[i] for i in b) for b in plan.batches),
        draft_len={uids[i]: int(v) for i, v in enumerate(plan.draft_len)},
        draft_ms_per_token={u: float(v) for u, v in zip(uids, problem.draft_ms, strict=True)},
        comm_ms={u: float(v) for u, v in zip(uids, expected_comm, strict=True)},
        cycle_ms=float(evaluation.cycle_ms),
        predicted_tok_s=float(evaluation.throughput_tok_s),
        reason=reason,
        close_tolerance=tuple(float(t) for t in plan.close_tolerance),
    )
