"""The heterogeneous-edge planner's dynamic programme (hetnet.md section 4, as draftnet
reconstructs the paper's): batches as contiguous runs of the tasks sorted by output then input
length, each with its speculation length, chosen on a surrogate of a batch's duration; the
plan is then scored by the evaluator.

Layer: pure (emu.planner).

Surrogate of the batch of sorted tasks i+1..j at length l: D = t_pre + R max(a, v) + min(a,
v), with t_pre the drafts' and the target's prefill, R = ceil(O / L(l, alpha)) rounds, and a
and v a round's mean time at the small cell (drafting, the fronthaul up) and at the macro cell
(verifying, the fronthaul down): the steady state of two batches ping-ponging (``alone``: t_pre
+ R (a + v)). The batch also waits for its uploads: under the batch-ordered split its release
U_j depends on j alone, so the wait max(0, U_j - T_i), T_i the time the batches before it end
in the surrogate's sequence, is carried through the recursion. For the sum of latencies:

    V[0] = 0,  V[j] = min over i < j (j - i <= b_max) and l <= l_max of V[i] + (K - i) D'(i, j, l)

(the K - i tasks not yet finished all wait for the batch); for the makespan, V[i] + D'.
Vectorised over i and l: O(K^2 l_max) numbers, under a second at K = 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emu.planner.hetnet.bandwidth import spectral_efficiency, upload_bits
from emu.planner.hetnet.evaluate import HetnetPlan
from emu.planner.hetnet.model import HetnetProblem, prefill_flops
from emu.planner.model import FloatArray, draft_flops, verify_flops

__all__ = ["SURROGATES", "dp_plan", "sorted_order"]

SURROGATES = ("pipelined", "alone")


def sorted_order(problem: HetnetProblem) -> list[int]:
    """The tasks by ascending output length, then input length (then index)."""
    return sorted(
        range(problem.size),
        key=lambda k: (problem.tasks[k].output_len, problem.tasks[k].input_len, k),
    )


@dataclass(frozen=True, slots=True)
class _Batches:
    """Every batch ending at sorted position j (starting at i = j - n for n = 1..cap), as
    arrays over (start, length)."""

    start: np.ndarray  # i, shape (S,)
    n: FloatArray  # tasks
    prompt: FloatArray  # I_m
    output: FloatArray  # O_m
    alpha: FloatArray  # mean acceptance


def _durations(
    problem: HetnetProblem, b: _Batches, surrogate: str, allowed: tuple[int, ...]
) -> FloatArray:
    """D(i, j, l) for every batch of ``b`` (rows) and allowed length l (columns) [ms]."""
    lengths = np.array(allowed, dtype=np.float64)[None, :]
    n, prompt = b.n[:, None], b.prompt[:, None]
    per_round = (1.0 - b.alpha[:, None] ** (lengths + 1.0)) / (1.0 - b.alpha[:, None])
    rounds = np.ceil(b.output[:, None] / per_round - 1e-12)
    context = prompt + (rounds - 1.0) / 2.0 * per_round  # a round's mean KV length
    d, t = problem.draft, problem.target
    draft = np.zeros_like(context * lengths)
    for step in range(max(allowed)):  # the l decode steps of a round
        on = lengths > step
        ms = problem.pass_ms("draft", n, draft_flops(d, context + step), context + step)
        draft += np.where(on, ms, 0.0)
    tau, hold = problem.fronthaul_latency_ms, problem.fronthaul_transfer_ms
    a = draft + hold(problem.fronthaul_up_bits(n, lengths)) + tau
    v = problem.pass_ms("verify", n, verify_flops(t, lengths + 1.0, context), context)
    v = v + hold(problem.fronthaul_down_bits(n)) + tau
    pre_draft = problem.pass_ms("draft", b.n, prefill_flops(d, b.prompt), b.prompt)
    pre_target = problem.pass_ms("verify", b.n, prefill_flops(t, b.prompt), b.prompt)
    if problem.time_mode == "affine":  # the target's prefill rides on round 1's pass
        pre_target = pre_target - problem.verify_latency.beta_ms
    t_pre = (pre_draft + pre_target)[:, None]
    if surrogate == "alone":
        return np.asarray(t_pre + rounds * (a + v))
    return np.asarray(t_pre + rounds * np.maximum(a, v) + np.minimum(a, v))


def dp_plan(
    problem: HetnetProblem,
    *,
    surrogate: str = "pipelined",
    lengths: tuple[int, ...] | None = None,
    bandwidth: str = "batch-ordered",
) -> HetnetPlan:
    """The DP's plan: contiguous batches of the sorted tasks and their lengths (of
    ``lengths``: default 0..l_max, 0 the target alone), the uploads split as ``bandwidth`` says."""
    allowed = lengths or problem.lengths
    order = sorted_order(problem)
    tasks = [problem.tasks[k] for k in order]
    K, cap = problem.size, problem.batch_cap
    prompt = np.array([t.input_len for t in tasks], dtype=np.float64)
    output = np.array([t.output_len for t in tasks], dtype=np.float64)
    alpha_sum = np.concatenate([[0.0], np.cumsum([t.alpha for t in tasks])])
    x = (upload_bits(problem) / spectral_efficiency(problem))[order]
    release = 1000.0 * np.cumsum(x) / problem.bandwidth_hz  # U_j, batch-ordered [ms]
    alone = 1000.0 * x * problem.size / problem.bandwidth_hz  # each upload on B / K [ms]
    value = np.full(K + 1, np.inf)
    value[0] = 0.0
    ends = np.zeros(K + 1)  # T_j: when the surrogate's sequence of batches ends
    choice: list[tuple[int, int]] = [(0, 0)] * (K + 1)
    for j in range(1, K + 1):
        starts = np.arange(max(0, j - cap), j)
        sizes = (j - starts).astype(np.float64)
        prompts = _suffix_max(prompt, starts, j)
        batches = _Batches(
            start=starts,
            n=sizes,
            prompt=prompts,
            output=np.full(len(starts), output[j - 1]),  # sorted: the last is the longest
            alpha=(alpha_sum[j] - alpha_sum[starts]) / sizes,
        )
        dur = _durations(problem, batches, surrogate, allowed)
        ready = release[j - 1] if bandwidth == "batch-ordered" else _suffix_max(alone, starts, j)
        dur = dur + np.maximum(0.0, ready - ends[starts])[:, None]
        if problem.objective == "sum":
            cost = value[starts][:, None] + (K - starts)[:, None] * dur
        else:  # the makespan: when the last batch ends
            cost = ends[starts][:, None] + dur
        flat = int(np.argmin(cost))
        row, col = divmod(flat, cost.shape[1])
        value[j] = cost[row, col]
        ends[j] = ends[starts[row]] + dur[row, col]
        choice[j] = (int(starts[row]), allowed[col])
    cuts, j = [], K
    while j > 0:
        i, length = choice[j]
        cuts.append((i, j, length))
        j = i
    cuts.reverse()
    return HetnetPlan(
        batches=tuple(tuple(order[i:j]) for i, j, _ in cuts),
        spec_len=tuple(length for _, _, length in cuts),
        bandwidth=bandwidth,
    )


def _suffix_max(values: FloatArray, starts: np.ndarray, j: int) -> FloatArray:
    """max(values[i:j]) for each i of ``starts`` (consecutive, ending at j - 1)."""
    window = values[starts[0] : j]
    return np.asarray(np.maximum.accumulate(window[::-1])[::-1])
