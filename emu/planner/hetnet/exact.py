"""The heterogeneous-edge system's exact reference: the best plan over every batching of the
tasks (any grouping, any order of the batches) and every speculation length per batch, by
branch and bound on the evaluator's objective (the sum of the tasks' latencies).

Layer: pure (emu.planner).

Plans are built a batch at a time, in the order the batches run. A partial plan (its batches
fixed, the remaining tasks R still to group) is dropped when a lower bound on every plan that
completes it is no better than the best plan found. Three bounds hold for any plan, and the
largest is used:

- **alone**: a batch ends no earlier than its release plus every stage of its own, back to back
  (``chain``); a task of R no earlier than the prefix's uploads and its own, plus the shortest
  such chain of any batch it could be in.
- **MBS** and **SBS**: a server does its batches' work one stage at a time, from the first
  moment any of it can start. Ordering the batches by when their last stage there ends, the
  j-th ends no earlier than that moment plus the work of the first j; the weighted sum of such
  ends is least in Smith's order (work over weight, ascending), and each batch's latency adds
  at least what follows its last stage there. Tasks of R enter as jobs of their own, each with
  the least share of a batch's work it could carry (a batch split into its tasks' shares can
  only end sooner, so the bound stays below).

The planner's own plan is the first incumbent. Every (group, length) batch's stages are
computed once, so the search is exact and its cost grows with the partial plans it cannot
prune; ``max_nodes`` stops it (ConfigError) rather than run without end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.planner.hetnet.bandwidth import spectral_efficiency, upload_bits
from emu.planner.hetnet.evaluate import Chains, HetnetPlan, evaluate, stages_of
from emu.planner.hetnet.model import HetnetProblem

__all__ = ["EXACT_MAX_TASKS", "EXACT_PLANS_MAX", "exact_plan", "plans_over_every_batching"]

EXACT_PLANS_MAX = 2_000_000  # plans the search may face (it prunes about half, not more)
EXACT_MAX_TASKS = 8  # 255 groups of tasks: the batches' stages are computed for each


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the bounds need of one (group, length) batch [ms]."""

    chain: float  # every stage back to back, its fronthaul latencies included
    mbs: float  # its work at the macro cell
    mbs_tail: float  # after its last stage there
    mbs_head: float  # before its first stage there, from its release
    sbs: float
    sbs_tail: float


def _summarise(problem: HetnetProblem, batch: tuple[int, ...], length: int) -> _Batch:
    stages = stages_of(problem, batch, length)
    chain = math.fsum(s.hold_ms + s.after_ms for s in stages)

    def on(resource: str) -> tuple[float, float, float]:
        at = [i for i, s in enumerate(stages) if s.resource == resource]
        work = math.fsum(stages[i].hold_ms for i in at)
        head = math.fsum(s.hold_ms + s.after_ms for s in stages[: at[0]])
        tail = math.fsum(s.hold_ms + s.after_ms for s in stages[at[-1] + 1 :])
        return work, head, tail + stages[at[-1]].after_ms

    mbs, mbs_head, mbs_tail = on("mbs")
    sbs, _, sbs_tail = on("sbs") if length else (0.0, 0.0, chain)
    return _Batch(chain, mbs, mbs_tail, mbs_head, sbs, sbs_tail)


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


def exact_plan(
    problem: HetnetProblem,
    *,
    lengths: tuple[int, ...] | None = None,
    incumbent: HetnetPlan | None = None,
    max_nodes: int = 2_000_000,
) -> HetnetPlan:
    """The plan of least total latency over every batching, every order of the batches and
    every length of ``lengths`` (default 0..l_max, 0 the target alone) per batch, by branch
    and bound (the batch-ordered band split; the sum objective)."""
    K = problem.size
    if K > EXACT_MAX_TASKS:
        raise ConfigError(f"exact plans at most {EXACT_MAX_TASKS} tasks, got {K}")
    if problem.objective != "sum":
        raise ConfigError("exact bounds the sum of latencies: set hetnet.objective = sum")
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
    info = {(s, ln): _summarise(problem, members[s], ln) for s in groups for ln in allowed}
    x_ms = 1000.0 * upload_bits(problem) / spectral_efficiency(problem) / problem.bandwidth_hz
    group_upload = {s: float(x_ms[list(members[s])].sum()) for s in groups}
    # Per task: the least of any batch it could be in (its chain, its per-task work shares).
    least: dict[int, dict[str, float]] = {}
    for k in range(K):
        mine = [(s, ln) for s in groups for ln in allowed if s >> k & 1]
        least[k] = {
            "chain": min(info[g].chain for g in mine),
            "mbs": min(info[g].mbs / len(members[g[0]]) for g in mine),
            "mbs_tail": min(info[g].mbs_tail for g in mine),
            "mbs_head": min(info[g].mbs_head for g in mine),
            "sbs": min(info[g].sbs / len(members[g[0]]) for g in mine),
            "sbs_tail": min(info[g].sbs_tail for g in mine),
        }

    cache: Chains = {}

    def score(batches: list[int], spec: list[int]) -> tuple[float, HetnetPlan]:
        plan = HetnetPlan(batches=tuple(members[s] for s in batches), spec_len=tuple(spec))
        return evaluate(problem, plan, cache=cache, record=False).total_ms, plan

    if incumbent is None:
        from emu.planner.hetnet.refine import planned

        incumbent = planned(problem, lengths=allowed)
    best_ms = evaluate(problem, incumbent, cache=cache, record=False).total_ms
    best = incumbent
    nodes = 0

    def bound(batches: list[int], spec: list[int], released: list[float], rest: int) -> float:
        left = members[rest] if rest else ()
        end = released[-1] if released else 0.0
        alone = sum(
            len(members[s]) * (u + info[s, ln].chain)
            for s, ln, u in zip(batches, spec, released, strict=True)
        ) + sum(end + float(x_ms[k]) + least[k]["chain"] for k in left)
        bounds = [alone]
        for where in ("mbs", "sbs"):
            jobs = [
                (getattr(info[s, ln], where), float(len(members[s])))
                for s, ln in zip(batches, spec, strict=True)
            ]
            jobs += [(least[k][where], 1.0) for k in left]
            tails = sum(
                len(members[s]) * getattr(info[s, ln], f"{where}_tail")
                for s, ln in zip(batches, spec, strict=True)
            ) + sum(least[k][f"{where}_tail"] for k in left)
            if where == "mbs":
                starts = [
                    u + info[s, ln].mbs_head
                    for s, ln, u in zip(batches, spec, released, strict=True)
                ]
                starts += [end + float(x_ms[k]) + least[k]["mbs_head"] for k in left]
            else:
                starts = [*released, *(end + float(x_ms[k]) for k in left)]
            bounds.append(K * min(starts) + _smith(jobs) + tails)
        return max(bounds)

    def search(batches: list[int], spec: list[int], released: list[float], rest: int) -> None:
        nonlocal best_ms, best, nodes
        nodes += 1
        if nodes > max_nodes:
            raise ConfigError(
                f"exact: over {max_nodes} partial plans for {K} tasks and {len(allowed)} "
                "lengths: restrict the lengths or the tasks"
            )
        if not rest:
            ms, plan = score(batches, spec)
            if ms < best_ms:
                best_ms, best = ms, plan
            return
        end = released[-1] if released else 0.0
        children = []
        sub = rest
        while sub:  # every non-empty group of the remaining tasks
            if sub in group_upload:
                u = end + group_upload[sub]
                for ln in allowed:
                    b = bound([*batches, sub], [*spec, ln], [*released, u], rest & ~sub)
                    if b < best_ms:
                        children.append((b, sub, ln, u))
            sub = (sub - 1) & rest
        for b, sub, ln, u in sorted(children):
            if b < best_ms:
                search([*batches, sub], [*spec, ln], [*released, u], rest & ~sub)

    search([], [], [], full)
    return best
