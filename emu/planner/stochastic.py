"""The DiP-SD cost model with random ready times: each user's per-round ready time as a
distribution, a batch's as the maximum of its members', and the cycle's expectation when each
batch waits for all its members (the model the jitter-aware policy plans with).

Layer: pure (emu.planner).

The published model (``emu.planner.cost``) plans with means: batch n is ready at
t_d_n = max over members (tau_d_m + tau_c_m), and the cycle is S = max(sum_n t_v_n,
max_n (t_d_n + t_v_n)). On a real link tau_c_m is random, and the expectation of a maximum is
not the maximum of the expectations: a batch waits for its slowest member's draw each round.

A member's ready time here is its mean-model ready time (``Problem.ready_ms``: its draft and its
link's delays both ways) plus its ``User.comm_noise`` (``emu.planner.lattice``): for a link of
``draftnet sim`` or the emulation's shaper, on each way, a half-normal jitter and one RTO for
every transmission lost; or what the edge measured of the user's rounds. For independent
members the maximum is exact, P(max <= t) = prod_m F_m(t), and so is the expected cycle when
every batch waits for all its members: S <= s exactly when sum_n t_v_n <= s and every member m
of every batch n has X_m + t_v_n <= s. ``monte_carlo_cycle`` samples the same model, for what is
not independent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.planner.cost import Plan
from emu.planner.lattice import STEP_MS, Lattice, LinkNoise
from emu.planner.model import CloseRule, FloatArray, Problem, expected_tokens

__all__ = [
    "MAX_POINTS",
    "Rounds",
    "StochasticEvaluation",
    "batch_rules",
    "carried",
    "closed",
    "expected_cycle",
    "expected_max",
    "has_noise",
    "missed_turns",
    "monte_carlo_cycle",
    "plan_rounds",
    "ready_times",
    "stochastic_evaluate",
    "turn_ms",
    "with_noise",
]


def with_noise(problem: Problem, noise: LinkNoise | Sequence[Lattice | None]) -> Problem:
    """The problem with each user's ``comm_noise`` set: one link's noise for every user (drawn
    up and down each round), or a distribution (or None) per user."""
    each = [noise.round_trip()] * problem.size if isinstance(noise, LinkNoise) else list(noise)
    if len(each) != problem.size:
        raise ValueError(f"{len(each)} noise distributions for {problem.size} users")
    users = tuple(
        dataclasses.replace(u, comm_noise=n) for u, n in zip(problem.users, each, strict=True)
    )
    return dataclasses.replace(problem, users=users)


def has_noise(problem: Problem) -> bool:
    """Whether any user's communication time is random."""
    return any(u.comm_noise is not None and u.comm_noise.pmf.size > 1 for u in problem.users)


def ready_times(
    problem: Problem, draft_len: Sequence[int] | npt.NDArray[np.int64]
) -> list[Lattice]:
    """Each user's ready time (after its batch's verification ends): its mean-model ready
    time (``Problem.ready_ms``) plus its ``comm_noise``; a user that does not draft (length 0)
    is ready at once, as in the mean model."""
    lengths = np.asarray(draft_len, dtype=np.int64)
    mean = problem.ready_ms(lengths)
    out = []
    for m, u in enumerate(problem.users):
        noise = u.comm_noise if u.comm_noise is not None else Lattice.point(0.0, STEP_MS)
        out.append(noise.shift(float(mean[m])) if lengths[m] > 0 else Lattice.point(0.0))
    return out


MAX_POINTS = 20_000  # past this many support points, the maximum is taken on a grid


def expected_max(
    members: Sequence[Lattice], floor_ms: float = -math.inf, max_points: int = MAX_POINTS
) -> float:
    """E[max(floor, X_1, ..., X_n)] for independent members, from P(max <= t) = prod_m F_m(t).

    Exact over the union of their supports when it has at most ``max_points`` points (above
    the floor); otherwise on ``max_points`` evenly spaced points from the floor (or the lowest
    value) to the highest value, E = low + integral of P(max > t) dt with the CDF between two
    points taken as the mean of its values there: within one grid width of the exact value.
    """
    members = [x for x in members if x.top_ms > floor_ms]
    if not members:
        return floor_ms
    low = max(floor_ms, min(x.t0_ms for x in members))
    high = max(x.top_ms for x in members)
    if sum(x.pmf.size for x in members) > max_points:
        pts = np.linspace(low, high, max_points)
        cdf = np.ones_like(pts)
        for x in members:
            cdf *= x.cdf(pts)
        return low + float((1.0 - 0.5 * (cdf[:-1] + cdf[1:])).sum()) * (high - low) / (
            max_points - 1
        )
    pts = np.unique(np.concatenate([x.support for x in members]))
    if math.isfinite(floor_ms):
        pts = np.unique(np.append(pts[pts > floor_ms], floor_ms))
    cdf = np.ones_like(pts)
    for x in members:
        cdf *= x.cdf(pts)
    return float(np.diff(cdf, prepend=0.0) @ pts)


def expected_cycle(
    batches: Sequence[Sequence[Lattice]],
    verify_ms: Sequence[float],
    max_points: int = MAX_POINTS,
) -> float:
    """E[S], S = max(sum_n t_v_n, max_n (t_d_n + t_v_n)) with t_d_n the maximum of batch n's
    members' ready times (every batch waits for all its members), members independent."""
    shifted = [x.shift(v) for batch, v in zip(batches, verify_ms, strict=True) for x in batch]
    return expected_max(shifted, floor_ms=float(sum(verify_ms)), max_points=max_points)


def monte_carlo_cycle(
    batches: Sequence[Sequence[Lattice]],
    verify_ms: Sequence[float],
    rng: np.random.Generator,
    n: int = 100_000,
) -> float:
    """E[S] of ``expected_cycle`` by sampling (``n`` cycles)."""
    s = np.full(n, float(sum(verify_ms)))
    for batch, v in zip(batches, verify_ms, strict=True):
        for x in batch:
            s = np.maximum(s, x.sample(rng, n) + v)
    return float(s.mean())


def closed(x: Lattice, deadline_ms: float) -> tuple[Lattice, float]:
    """A member's ready time as a batch that closes at ``deadline_ms`` sees it,
    min(X, deadline) (the deadline rounded down to the lattice), and the probability that it is
    late."""
    k = math.floor((deadline_ms - x.t0_ms) / x.step_ms + 1e-9)
    if k >= x.pmf.size - 1:
        return x, 0.0
    if k < 0:
        return Lattice.point(deadline_ms, x.step_ms), 1.0
    pmf = x.pmf[: k + 1].copy()
    late = float(x.pmf[k + 1 :].sum())
    pmf[k] += late
    return Lattice(x.t0_ms, x.step_ms, pmf), late


def missed_turns(x: Lattice, deadline_ms: float, turn_ms: float) -> float:
    """E[K], the turns of its batch that a member with ready time ``x`` misses when the batch
    closes at ``deadline_ms`` and comes round every ``turn_ms``: a draft in after the deadline
    is verified at the first later turn that it is in by, K = ceil((X - deadline) / turn) turns
    later, so E[K] = sum over i >= 0 of P(X > deadline + i turn), each time rounded down to the
    lattice as ``closed`` rounds the deadline (K = 0 when it is in time; P(K >= 1) is
    ``closed``'s probability of being late). A retransmission longer than a turn costs more
    than one turn."""
    if x.top_ms <= deadline_ms:
        return 0.0
    times = deadline_ms + turn_ms * np.arange(math.ceil((x.top_ms - deadline_ms) / turn_ms))
    k = np.floor((times - x.t0_ms) / x.step_ms + 1e-9).astype(np.int64)
    cum = np.concatenate(([0.0], np.cumsum(x.pmf)))
    return float((1.0 - cum[np.clip(k + 1, 0, x.pmf.size)]).sum())


def carried(x: Lattice, missed: float) -> Lattice:
    """A member that misses ``missed`` of its batch's turns a round in the long run
    (``missed_turns``): its late draft is verified at a later turn, which then finds it in
    (ready at once), and the turns between hold nobody up either; so in missed / (1 + missed) of
    its batch's turns it is ready at once, and ``x`` is its ready time in the others."""
    if missed <= 0:
        return x
    w0 = missed / (1.0 + missed)
    k0 = max(1, math.ceil(x.t0_ms / x.step_ms))
    pmf = np.concatenate(([w0], np.zeros(k0 - 1), (1.0 - w0) * x.pmf))
    return Lattice(x.t0_ms - k0 * x.step_ms, x.step_ms, pmf)


def turn_ms(
    expected_ready_ms: FloatArray,
    batches: Sequence[Sequence[int]],
    verify_ms: Sequence[float],
) -> float:
    """The time between two turns of a batch, for ``missed_turns``: the cycle of the mean
    model with each member at its expected ready time (its link's mean noise included),
    S = max(sum_n t_v_n, max_n (t_d_n + t_v_n))."""
    latest = [
        max((float(expected_ready_ms[m]) for m in b), default=0.0) + v
        for b, v in zip(batches, verify_ms, strict=True)
    ]
    return max(float(sum(verify_ms)), *latest)


@dataclass(frozen=True, slots=True)
class Rounds:
    """A plan's rounds under the stochastic model: each batch's members' ready times as the
    batch sees them (after its verification ends, under the edge's close rule), each user's
    probability of missing its batch and the turns it misses a round, and the tokens a cycle
    commits in the long run."""

    batches: list[list[Lattice]]
    late: FloatArray
    missed: FloatArray
    tokens: float


def batch_rules(
    problem: Problem, batches: int, close_tolerance: Sequence[float] = ()
) -> list[CloseRule | None]:
    """How each of ``batches`` batches closes: by the edge's rule (``problem.edge.close``; None:
    it waits for all its members), with the batch's own tolerance where the plan chose one."""
    edge = problem.edge.close
    if not close_tolerance:
        return [edge] * batches
    return [(edge or CloseRule()).with_tolerance(t) for t in close_tolerance]


def plan_rounds(
    problem: Problem,
    batches: Sequence[Sequence[int]],
    draft_len: npt.NDArray[np.int64],
    verify_ms: Sequence[float],
    close_tolerance: Sequence[float] = (),
) -> Rounds:
    """Each batch waits for all its members (``batch_rules`` None) or closes at its deadline:
    a late member's round then takes 1 + K of its batch's turns (``missed_turns``), so it
    commits u(l) / (1 + E[K]) tokens a cycle. ``verify_ms`` is each batch's verification."""
    ready = ready_times(problem, draft_len)
    means = np.array([x.mean for x in ready])
    turn = turn_ms(means, batches, verify_ms)
    late = np.zeros(problem.size)
    missed = np.zeros(problem.size)
    members: list[list[Lattice]] = []
    rules = batch_rules(problem, len(batches), close_tolerance)
    for b, close in zip(batches, rules, strict=True):
        drafting = [m for m in b if draft_len[m] > 0]
        if close is None or not drafting:
            members.append([ready[m] for m in b])
            continue
        deadline = close.deadline_ms(max(means[m] for m in drafting))
        seen = []
        for m in drafting:
            x, late[m] = closed(ready[m], deadline)
            if late[m] > 0:
                missed[m] = missed_turns(ready[m], deadline, turn)
            seen.append(carried(x, float(missed[m])))
        members.append(seen)
    u = expected_tokens(problem.alpha, draft_len)
    return Rounds(members, late, missed, float((u / (1.0 + missed)).sum()))


@dataclass(frozen=True, slots=True, kw_only=True)
class StochasticEvaluation:
    """A plan under random ready times: the expected cycle [ms], the throughput it gives (the
    tokens of a cycle over its expected span: a long run's rate), each batch's expected
    ready time beside the mean model's, and each user's probability of missing its batch."""

    throughput_tok_s: float
    cycle_ms: float
    ready_ms: tuple[float, ...]
    mean_model_ready_ms: tuple[float, ...]
    late: tuple[float, ...]


def stochastic_evaluate(problem: Problem, plan: Plan) -> StochasticEvaluation:
    """``plan`` under the stochastic model: each user's ``comm_noise``, and each batch's close
    rule (``batch_rules``: the edge's, with the plan's own tolerances; without a rule, each
    batch waits for all its members)."""
    from emu.planner.cost import evaluate

    plan.check(problem)
    mean = evaluate(problem, plan)
    rounds = plan_rounds(
        problem,
        plan.batches,
        np.asarray(plan.draft_len, dtype=np.int64),
        mean.verify_ms,
        plan.close_tolerance,
    )
    cycle = expected_cycle(rounds.batches, mean.verify_ms)
    return StochasticEvaluation(
        throughput_tok_s=1000.0 * rounds.tokens / cycle,
        cycle_ms=cycle,
        ready_ms=tuple(expected_max(b) for b in rounds.batches),
        mean_model_ready_ms=mean.ready_ms,
        late=tuple(float(p) for p in rounds.late),
    )
