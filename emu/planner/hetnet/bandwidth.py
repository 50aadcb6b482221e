"""Splitting the uplink band among tasks (hetnet.md section 3.4): the closed forms the
planner uses under linear rates, and the exact min-max under Shannon rates as a reference.

Layer: pure (emu.planner).

Task k uploads D_k = I_k b_tok bits. Its planner rate on b hertz is b eta_k, with eta_k =
log2(1 + p_k g_k / (N0 B_ref)) and the path loss 128.1 + 37.6 log10(d_km) dB; its exact rate
is b log2(1 + p_k g_k / (b N0)). With x_k = D_k / eta_k:

- min-max in a group G: b_k = B x_k / sum_G x (every upload ends at sum_G x / B);
- min-sum in G: b_k = B sqrt(x_k) / sum_G sqrt(x) (the sum of times (sum_G sqrt x)^2 / B);
- batch-ordered: the whole band to batch 1 under min-max, then to batch 2, ...: batch m is
  released at U_m = sum_{i <= m} sum_{S_i} x / B, each U_m as early as it can be;
- uniform (a baseline): b_k = B / K.

With several small cells (``HetnetProblem.cells``) each splits a band B of its own among its
tasks, and K, B_ref and N0 are its own (N0 with the interference it hears).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from channel_models.two_tier import paper_path_loss_db
from emu.planner.hetnet.model import HetnetProblem
from emu.planner.model import FloatArray

__all__ = [
    "allocation_hz",
    "batch_ordered_release_ms",
    "exact_min_max",
    "exact_upload_ms",
    "min_max",
    "min_sum",
    "path_loss_db",
    "release_times_ms",
    "spectral_efficiency",
    "uniform_release_ms",
    "uplink_bps",
    "upload_bits",
    "windows",
]


path_loss_db = paper_path_loss_db  # 128.1 + 37.6 log10(d_km) [dB] (hetnet.md 3.4)


def gain_db(problem: HetnetProblem) -> FloatArray:
    """Each task's path gain to its small cell [dB]: its own, or the paper's law at its
    distance."""
    own = np.array([np.nan if t.gain_db is None else t.gain_db for t in problem.tasks])
    law = -path_loss_db([t.distance_m for t in problem.tasks])
    return np.asarray(np.where(np.isnan(own), law, own))


def _snr_num(problem: HetnetProblem, gains_db: FloatArray | None = None) -> FloatArray:
    """p_k g_k / N0 [Hz]: a task's received power over the noise density (and interference);
    ``gains_db`` [K] or [K, T] in place of the tasks' own gains."""
    p_w = np.array([t.power_w for t in problem.tasks])
    gains = gain_db(problem) if gains_db is None else np.asarray(gains_db)
    per_task = (p_w / problem.noise_w_per_hz()).reshape((-1,) + (1,) * (gains.ndim - 1))
    return np.asarray(per_task * 10.0 ** (gains / 10.0))


def spectral_efficiency(problem: HetnetProblem, gains_db: FloatArray | None = None) -> FloatArray:
    """eta_k = log2(1 + p_k g_k / (N0 B_ref)) [bit/s/Hz]: the planner's rate per hertz; with
    ``gains_db`` [K, T] (a faded gain over time, ``channel_models.two_tier.gain_series``),
    each task's at every tick."""
    snr = _snr_num(problem, gains_db)
    b_ref = problem.reference_band_hz().reshape((-1,) + (1,) * (snr.ndim - 1))
    return np.asarray(np.log2(1.0 + snr / b_ref))


def upload_bits(problem: HetnetProblem) -> FloatArray:
    return np.array([t.input_len * problem.bits_per_token for t in problem.tasks], dtype=float)


def _x(problem: HetnetProblem) -> FloatArray:
    return np.asarray(upload_bits(problem) / spectral_efficiency(problem))


def min_max(problem: HetnetProblem, group: Sequence[int]) -> FloatArray:
    """The band split over ``group`` so that every upload ends together (linear rates) [Hz]."""
    x = _x(problem)[list(group)]
    return np.asarray(problem.bandwidth_hz * x / x.sum())


def min_sum(problem: HetnetProblem, group: Sequence[int]) -> FloatArray:
    """The band split over ``group`` that minimises the sum of upload times [Hz]."""
    r = np.sqrt(_x(problem)[list(group)])
    return np.asarray(problem.bandwidth_hz * r / r.sum())


def batch_ordered_release_ms(
    problem: HetnetProblem, batches: Sequence[Sequence[int]]
) -> list[float]:
    """U_m: when batch m's last upload ends, its small cell's band given whole to each of its
    batches in turn."""
    x = _x(problem)
    out, t = [], [0.0] * problem.cells
    for batch in batches:
        c = problem.tasks[batch[0]].cell
        t[c] += float(x[list(batch)].sum()) / problem.bandwidth_hz * 1000.0
        out.append(t[c])
    return out


def uniform_release_ms(problem: HetnetProblem, batches: Sequence[Sequence[int]]) -> list[float]:
    """U_m under B / K each, all uploading at once: the batch's slowest task [ms]."""
    times = upload_bits(problem) / (problem.even_share_hz() * spectral_efficiency(problem)) * 1000.0
    return [float(times[list(b)].max()) for b in batches]


class Window(NamedTuple):
    """Batches planned together: when they could start, which they are (the plan's numbers),
    their tasks, those tasks' problem alone, and the batches in its numbers."""

    open_ms: float
    batches: list[int]
    tasks: list[int]
    problem: HetnetProblem
    local: list[list[int]]


def windows(
    problem: HetnetProblem, batches: Sequence[Sequence[int]], opens_ms: Sequence[float] = ()
) -> list[Window]:
    """A plan's windows: its runs of batches with the same ``opens_ms``; without them, one
    window of the whole problem, opening at 0."""
    if not opens_ms:
        return [Window(0.0, list(range(len(batches))), list(range(problem.size)), problem,
                       [list(b) for b in batches])]  # fmt: skip
    out = []
    start = 0
    for end in range(1, len(batches) + 1):
        if end < len(batches) and opens_ms[end] == opens_ms[start]:
            continue
        idx = list(range(start, end))
        tasks = [k for m in idx for k in batches[m]]
        number = {k: i for i, k in enumerate(tasks)}
        local = [[number[k] for k in batches[m]] for m in idx]
        out.append(Window(opens_ms[start], idx, tasks, problem.subset(tasks), local))
        start = end
    return out


def release_times_ms(
    problem: HetnetProblem,
    batches: Sequence[Sequence[int]],
    mode: str,
    opens_ms: Sequence[float] = (),
) -> list[float]:
    """U_m: when batch m's last upload ends. A window's tasks share their small cell's band
    from when it opens, or when the cell's uploads of earlier windows end if later."""
    out = [0.0] * len(batches)
    free = [0.0] * problem.cells  # when each cell's band is next free
    within = uniform_release_ms if mode == "uniform" else batch_ordered_release_ms
    for w in windows(problem, batches, opens_ms):
        rel = within(w.problem, w.local)
        cells = [problem.tasks[batches[m][0]].cell for m in w.batches]
        start = {c: max(w.open_ms, free[c]) for c in cells}
        for m, c, r in zip(w.batches, cells, rel, strict=True):
            out[m] = start[c] + r
            free[c] = max(free[c], out[m])
    return out


def allocation_hz(
    problem: HetnetProblem,
    batches: Sequence[Sequence[int]],
    mode: str,
    opens_ms: Sequence[float] = (),
) -> FloatArray:
    """Each task's band [Hz] while it uploads: its batch's min-max share of the whole band
    (``batch-ordered``, the batches in turn), or B / K (``uniform``); K a window's tasks of the
    cell where the plan has windows."""
    out = np.zeros(problem.size)
    for w in windows(problem, batches, opens_ms):
        if mode == "uniform":
            out[w.tasks] = w.problem.even_share_hz()
            continue
        for batch in w.local:
            out[[w.tasks[i] for i in batch]] = min_max(w.problem, batch)
    return out


def uplink_bps(
    problem: HetnetProblem,
    batches: Sequence[Sequence[int]],
    mode: str,
    opens_ms: Sequence[float] = (),
    gains_db: FloatArray | None = None,
) -> FloatArray:
    """Each task's planner rate while it uploads: its band (``allocation_hz``) times eta_k
    (B_ref its window's); with ``gains_db`` [K, T], at every tick of its faded gain."""
    band = allocation_hz(problem, batches, mode, opens_ms)
    shape = (problem.size,) if gains_db is None else np.shape(gains_db)
    out = np.zeros(shape)
    for w in windows(problem, batches, opens_ms):
        gains = None if gains_db is None else np.asarray(gains_db)[w.tasks]
        eta = spectral_efficiency(w.problem, gains)
        out[w.tasks] = band[w.tasks].reshape((-1,) + (1,) * (eta.ndim - 1)) * eta
    return out


def exact_upload_ms(problem: HetnetProblem, k: int, hz: float) -> float:
    """Task k's upload on ``hz`` hertz at the exact rate b log2(1 + p g / (b N0)) [ms]."""
    rate = hz * math.log2(1.0 + float(_snr_num(problem)[k]) / hz)
    return float(upload_bits(problem)[k]) / rate * 1000.0


def exact_min_max(
    problem: HetnetProblem, group: Sequence[int], *, rel_tol: float = 1e-9
) -> tuple[FloatArray, float]:
    """The min-max split of the band over ``group`` under exact (concave) rates, by bisection
    on the common finish time T: each task's band for T is found by bisection too (its rate is
    increasing in b), and T is the smallest whose bands fit in B. The split [Hz] and T [ms]."""
    members = list(group)
    snr = _snr_num(problem)[members]
    bits = upload_bits(problem)[members]
    band = problem.bandwidth_hz

    def band_for(k: int, t_s: float) -> float:
        need = bits[k] / t_s  # bit/s
        lo, hi = 0.0, band
        if hi * math.log2(1.0 + snr[k] / hi) < need:
            return math.inf
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid > 0 and mid * math.log2(1.0 + snr[k] / mid) >= need:
                hi = mid
            else:
                lo = mid
            if hi - lo <= rel_tol * hi:
                break
        return hi

    def total(t_s: float) -> float:
        return sum(band_for(k, t_s) for k in range(len(members)))

    lo_t, hi_t = 0.0, 1.0
    while total(hi_t) > band:
        hi_t *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo_t + hi_t)
        if mid > 0 and total(mid) <= band:
            hi_t = mid
        else:
            lo_t = mid
        if hi_t - lo_t <= rel_tol * hi_t:
            break
    split = np.array([band_for(k, hi_t) for k in range(len(members))])
    return split, hi_t * 1000.0
