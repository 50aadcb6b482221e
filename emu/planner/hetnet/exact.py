"""The heterogeneous-edge system's exact reference: the best plan over every batching of the
tasks (any grouping, any order of the batches) and every speculation length per batch, by
branch and bound on the evaluator's objective (the sum of the tasks' latencies).

Layer: pure (emu.planner).

Plans are built a batch at a time, in the order the batches run. A partial plan (its batches
fixed, the remaining tasks R still to group) is dropped when a lower bound on every plan that
completes it is no better than the best plan found. Every bound holds for any schedule that
respects the releases, each batch's chain of stages and one stage at a time per resource, so it
holds for the evaluator's (which is one such schedule):

- **alone**: a batch ends no earlier than its release plus every stage of its own, back to back
  (``chain``); a task of R no earlier than the prefix's uploads plus, over every batch it could
  be in, the least of that batch's uploads and chain.
- **MBS** and **SBS**: a server does its batches' work one stage at a time, from the first
  moment any of it can start (S). Ordering the batches by when their last stage there ends,
  the j-th ends no earlier than S plus the work of the first j, and its latency adds at least
  what follows its last stage there (its tail). Tasks of R enter as jobs of their own, each
  with the least share of a batch's work it could carry (a batch split into its tasks' shares
  can only end sooner, so the bound stays below).
- **combined**: each job's latency is at least the larger of its alone bound and its place in
  the server's order; the least over every order of the sum of these larger values, by a DP
  over subsets of the jobs (at most 2^K of them), is tighter than either bound alone: a
  batch that runs at its chain's pace and one that waits for the server both count.

Each child is screened by the first three (cheap, per length and group); a node that passes is
tested again by the combined bound before its children are made. The planner's own plan is
the first incumbent. The bounds are relaxations of the evaluator's list schedule, which
shares the servers less well than the ideal (on near-optimal plans the best bound is 75-90% of
the evaluator's total), so the search still scores many plans; ``max_nodes`` stops it
(ConfigError) rather than run without end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.planner.hetnet.bandwidth import spectral_efficiency, upload_bits
from emu.planner.hetnet.evaluate import Chains, HetnetPlan, evaluate, stages_of
from emu.planner.hetnet.model import HetnetProblem

__all__ = [
    "EXACT_MAX_TASKS",
    "EXACT_PLANS_MAX",
    "ExactStats",
    "exact_plan",
    "exact_search",
    "plans_over_every_batching",
]

EXACT_PLANS_MAX = 2_000_000  # plans the search may face (a few minutes at most; the bounds
# prune a half to nine tenths of them, no more: see the module's docstring)
EXACT_MAX_TASKS = 8  # 255 groups of tasks: the batches' stages are computed for each
_RESOURCES = ("mbs", "sbs")


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the bounds need of one (group, length) batch [ms]."""

    size: int
    upload: float  # its tasks' uploads, the whole band to them
    chain: float  # every stage back to back, its fronthaul latencies included
    work: tuple[float, float]  # at the MBS, at the SBS
    head: tuple[float, float]  # before its first stage there, from its release
    tail: tuple[float, float]  # after its last stage there


@dataclass(frozen=True, slots=True, kw_only=True)
class ExactStats:
    """How much the search did: partial plans entered, complete plans scored."""

    nodes: int
    scored: int


def _summarise(
    problem: HetnetProblem, batch: tuple[int, ...], length: int, upload: float
) -> _Batch:
    stages = stages_of(problem, batch, length)
    chain = math.fsum(s.hold_ms + s.after_ms for s in stages)

    def on(resource: str) -> tuple[float, float, float]:
        at = [i for i, s in enumerate(stages) if s.resource == resource]
        if not at:  # no drafting (length 0): no SBS work, the whole chain after it
            return 0.0, 0.0, chain
        work = math.fsum(stages[i].hold_ms for i in at)
        head = math.fsum(s.hold_ms + s.after_ms for s in stages[: at[0]])
        tail = math.fsum(s.hold_ms + s.after_ms for s in stages[at[-1] + 1 :])
        return work, head, tail + stages[at[-1]].after_ms

    mbs, sbs = on("mbs"), on("sbs")
    return _Batch(len(batch), upload, chain, (mbs[0], sbs[0]), (mbs[1], sbs[1]), (mbs[2], sbs[2]))


def plans_over_every_batching(tasks: int, lengths: int) -> int:
    """sum over m of S(K, m) m! |L|^m: the plans of every ordered batching and length."""
    stirling = [1]  # S(n, m) for m = 0..n, from n = 0
    for n in range(1, tasks + 1):
        stirling = [0] + [
            m * (stirling[m] if m < n else 0) + stirling[m - 1] for m in range(1, n + 1)
        ]
    return sum(c * math.factorial(m) * lengths**m for m, c in enumerate(stirling))


def _smith(jobs: list[tuple[float, float]]) -> float:
    """min over orders of sum w_j C_j on one machine from 0, jobs (work, weight): Smith's
    order."""
    total, t = 0.0, 0.0
    for work, weight in sorted(jobs, key=lambda j: j[0] / j[1]):
        t += work
        total += weight * t
    return total


def _least_over_orders(jobs: list[tuple[float, float, float, float]], start: float) -> float:
    """min over orders of sum_j w_j max(a_j, start + C_j + q_j), C_j the work of the jobs up
    to j in the order: jobs (weight w, alone a, work, tail q), by a DP over subsets (the
    subset done first; its work fixes when the next ends)."""
    n = len(jobs)
    size = 1 << n
    done = [0.0] * size  # the work of each subset
    for s in range(1, size):
        low = s & -s
        done[s] = done[s ^ low] + jobs[low.bit_length() - 1][2]
    best = [math.inf] * size
    best[0] = 0.0
    for s in range(size):
        here = best[s]
        if here == math.inf:
            continue
        at = start + done[s]
        for j in range(n):
            bit = 1 << j
            if s & bit:
                continue
            w, a, work, tail = jobs[j]
            end = at + work + tail
            v = here + w * (a if a > end else end)
            best[s | bit] = min(best[s | bit], v)
    return best[size - 1]


def exact_plan(
    problem: HetnetProblem,
    *,
    lengths: tuple[int, ...] | None = None,
    incumbent: HetnetPlan | None = None,
    max_nodes: int = 5_000_000,
) -> HetnetPlan:
    """The plan of least total latency over every batching, every order of the batches and
    every length of ``lengths`` (default 0..l_max, 0 the target alone) per batch, by branch
    and bound (the batch-ordered band split; the sum objective)."""
    return exact_search(problem, lengths=lengths, incumbent=incumbent, max_nodes=max_nodes)[0]


def exact_search(
    problem: HetnetProblem,
    *,
    lengths: tuple[int, ...] | None = None,
    incumbent: HetnetPlan | None = None,
    max_nodes: int = 5_000_000,
) -> tuple[HetnetPlan, ExactStats]:
    """``exact_plan``'s plan and how much its search did."""
    K = problem.size
    if K > EXACT_MAX_TASKS:
        raise ConfigError(f"exact plans at most {EXACT_MAX_TASKS} tasks, got {K}")
    if problem.objective != "sum":
        raise ConfigError("exact bounds the sum of latencies: set hetnet.objective = sum")
    if problem.cells != 1:  # its bounds count one SBS and one release order
        raise ConfigError(
            f"--policy hetnet-exact plans one small cell's tasks, got {problem.cells} small cells"
        )
    if incumbent is not None and incumbent.bandwidth != "batch-ordered":
        raise ConfigError("exact searches the batch-ordered band split only")
    allowed = lengths or problem.lengths
    count = plans_over_every_batching(K, len(allowed))
    if count > EXACT_PLANS_MAX:
        raise ConfigError(
            f"exact: {count} plans for {K} tasks and {len(allowed)} lengths (0..hetnet."
            f"max_draft_len), over {EXACT_PLANS_MAX}: fewer tasks or a smaller max_draft_len"
        )
    full = (1 << K) - 1
    members = {s: tuple(k for k in range(K) if s >> k & 1) for s in range(1, full + 1)}
    groups = [s for s in members if len(members[s]) <= problem.batch_cap]
    x_ms = 1000.0 * upload_bits(problem) / spectral_efficiency(problem) / problem.bandwidth_hz
    upload = {s: float(x_ms[list(members[s])].sum()) for s in groups}
    info = {
        (s, ln): _summarise(problem, members[s], ln, upload[s]) for s in groups for ln in allowed
    }
    # Per task, the least of any batch it could be in: (alone, then per resource its share of
    # the work, its head from the prefix's uploads' end, its tail).
    alone_of: list[float] = []
    share_of: list[list[tuple[float, float, float]]] = [[], []]
    for k in range(K):
        mine = [info[s, ln] for s in groups for ln in allowed if s >> k & 1]
        alone_of.append(min(b.upload + b.chain for b in mine))
        for r in range(2):
            share_of[r].append(
                (
                    min(b.work[r] / b.size for b in mine),
                    min(b.upload + b.head[r] for b in mine),
                    min(b.tail[r] for b in mine),
                )
            )

    cache: Chains = {}
    scored = 0

    def score(batches: list[tuple[int, int]]) -> tuple[float, HetnetPlan]:
        nonlocal scored
        scored += 1
        plan = HetnetPlan(
            batches=tuple(members[s] for s, _ in batches), spec_len=tuple(ln for _, ln in batches)
        )
        return evaluate(problem, plan, cache=cache, record=False).total_ms, plan

    if incumbent is None:
        from emu.planner.hetnet.refine import planned

        incumbent = planned(problem, lengths=allowed)
    best_ms = evaluate(problem, incumbent, cache=cache, record=False).total_ms
    best = incumbent
    nodes = 0

    # A partial plan's jobs per resource: (weight, alone, work, tail), and the earliest start.
    Jobs = list[tuple[float, float, float, float]]

    def jobs_of(
        batches: list[tuple[int, int, float]], rest: int
    ) -> tuple[float, list[Jobs], list[float]]:
        end = batches[-1][2] if batches else 0.0
        alone = 0.0
        jobs: list[Jobs] = [[], []]
        starts = [math.inf, math.inf]
        for s, ln, u in batches:
            b = info[s, ln]
            alone += b.size * (u + b.chain)
            for r in range(2):
                jobs[r].append((float(b.size), u + b.chain, b.work[r], b.tail[r]))
                starts[r] = min(starts[r], u + b.head[r])
        for k in members[rest] if rest else ():
            alone += end + alone_of[k]
            for r in range(2):
                work, head, tail = share_of[r][k]
                jobs[r].append((1.0, end + alone_of[k], work, tail))
                starts[r] = min(starts[r], end + head)
        return alone, jobs, starts

    def cheap(batches: list[tuple[int, int, float]], rest: int) -> float:
        alone, jobs, starts = jobs_of(batches, rest)
        bound = alone
        for r in range(2):
            smith = _smith([(work, w) for w, _, work, _ in jobs[r]])
            tails = math.fsum(w * tail for w, _, _, tail in jobs[r])
            weight = math.fsum(w for w, _, _, _ in jobs[r])
            bound = max(bound, weight * starts[r] + smith + tails)
        return bound

    def combined(batches: list[tuple[int, int, float]], rest: int) -> float:
        _, jobs, starts = jobs_of(batches, rest)
        return max(_least_over_orders(jobs[r], starts[r]) for r in range(2))

    def search(batches: list[tuple[int, int, float]], rest: int) -> None:
        nonlocal best_ms, best, nodes
        nodes += 1
        if nodes > max_nodes:
            raise ConfigError(
                f"exact: over {max_nodes} partial plans for {K} tasks and {len(allowed)} "
                "lengths: restrict the lengths or the tasks"
            )
        if not rest:
            ms, plan = score([(s, ln) for s, ln, _ in batches])
            if ms < best_ms:
                best_ms, best = ms, plan
            return
        if batches and combined(batches, rest) >= best_ms:
            return
        end = batches[-1][2] if batches else 0.0
        children = []
        sub = rest
        while sub:  # every non-empty group of the remaining tasks
            if sub in upload:
                u = end + upload[sub]
                for ln in allowed:
                    child = [*batches, (sub, ln, u)]
                    b = cheap(child, rest & ~sub)
                    if b < best_ms:
                        children.append((b, sub, ln, u))
            sub = (sub - 1) & rest
        children.sort()
        for b, sub, ln, u in children:
            if b < best_ms:
                search([*batches, (sub, ln, u)], rest & ~sub)

    search([], full)
    return best, ExactStats(nodes=nodes, scored=scored)
