"""Training AWC's network (dsd.md section 4.3, "Training"; draftnet's choice): the oracle's
label for a scenario, and the fit of the residual network to snapshots of features.

Layer: pure (emu.planner). The oracle runs that produce the snapshots and measurements are the
trainer's (``emu.runners.train_awc``).

- **Label.** In a scenario (a round trip, a load and a prompt length), every allowed window
  was run as a constant (a window of 1 fused, in hybrid mode); the label is the window of least
  mean TPOT among those that meet the service levels (TTFT p95 <= 300 ms, TPOT p95 <= 35 ms),
  or of least mean TPOT when none does. Every snapshot of the scenario, whichever window's run
  it came from, gets it.
- **Fit.** The network of ``AwcNetwork`` (``proj = P x``; ``h = proj + W2 SiLU(W1 proj + b1)``;
  ``out = head . h + bias``), hidden 16, fitted to ``label - default`` (AWC adds its output to
  the default window) under the Smooth-L1 loss with Adam, on minibatches of standardised
  features (the standardisation folded into the weights after), seeded: the same data give
  the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.planner.dsd.awc import FEATURES, AwcNetwork

__all__ = [
    "SLO",
    "Fit",
    "Measured",
    "fit_awc",
    "forward_backward",
    "oracle_window",
    "smooth_l1",
    "stakes",
]

Array = npt.NDArray[np.float64]
LEAST_STAKES = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class SLO:
    """The service levels a label must meet (ms)."""

    ttft_p95_ms: float = 300.0
    tpot_p95_ms: float = 35.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """What a constant window's runs in one scenario measured (means over seeds)."""

    tpot_mean_ms: float
    tpot_p95_ms: float
    ttft_p95_ms: float


def oracle_window(by_window: Mapping[int, Measured], slo: SLO = SLO()) -> int:
    """The label: the window of least mean TPOT among those meeting ``slo``, else of least
    mean TPOT; a tie goes to the smaller window."""
    if not by_window:
        raise ValueError("oracle_window needs at least one window's measurements")
    meeting = [
        g
        for g, m in by_window.items()
        if m.ttft_p95_ms <= slo.ttft_p95_ms and m.tpot_p95_ms <= slo.tpot_p95_ms
    ]
    pool = meeting or list(by_window)
    return min(pool, key=lambda g: (by_window[g].tpot_mean_ms, g))


def smooth_l1(err: Array, beta: float = 1.0, weight: Array | None = None) -> tuple[float, Array]:
    """The mean Smooth-L1 loss of ``err`` (each weighted by ``weight``) and its gradient with
    respect to ``err``."""
    w = np.ones_like(err) if weight is None else weight
    a = np.abs(err)
    loss = w * np.where(a < beta, 0.5 * err**2 / beta, a - 0.5 * beta)
    grad = w * np.where(a < beta, err / beta, np.sign(err)) / err.size
    return float(loss.mean()), grad


def _silu(z: Array) -> tuple[Array, Array]:
    s = 1.0 / (1.0 + np.exp(-z))
    return z * s, s * (1.0 + z * (1.0 - s))


def forward_backward(
    net: dict[str, Array], x: Array, y: Array, weight: Array | None = None
) -> tuple[float, dict[str, Array]]:
    """The loss of ``net`` (the arrays of ``AwcNetwork``) on ``x`` -> ``y`` (each sample
    weighted by ``weight``, mean 1 for a mean loss) and its gradient."""
    proj = x @ net["p"].T
    pre = proj @ net["w1"].T + net["b1"]
    act, dact = _silu(pre)
    h = proj + act @ net["w2"].T
    out = h @ net["head"] + net["bias"]
    loss, dout = smooth_l1(out - y, weight=weight)
    dh = dout[:, None] * net["head"][None, :]
    dpre = (dh @ net["w2"]) * dact
    dproj = dh + dpre @ net["w1"]
    grads = {
        "head": h.T @ dout,
        "bias": np.asarray(dout.sum()),
        "w2": dh.T @ act,
        "w1": dpre.T @ proj,
        "b1": dpre.sum(axis=0),
        "p": dproj.T @ x,
    }
    return loss, grads


@dataclass(frozen=True, slots=True)
class Fit:
    network: AwcNetwork
    losses: tuple[float, ...]  # the training loss after each epoch


def fit_awc(
    x: Array,
    y: Array,
    *,
    hidden: int = 16,
    epochs: int = 40,
    batch: int = 512,
    lr: float = 3e-3,
    max_gamma: int = 8,
    seed: int = 0,
    weight: Array | None = None,
) -> Fit:
    """The network fitted to features ``x`` (n x 11) and targets ``y`` (n: the label minus
    the default window), each sample weighted by ``weight`` (default: alike)."""
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or y.shape != (x.shape[0],) or not len(y):
        raise ValueError(f"fit_awc needs x of n x {len(FEATURES)} and y of n, n >= 1, "
                         f"got {x.shape} and {y.shape}")  # fmt: skip
    rng = np.random.default_rng(seed)
    n_in = len(FEATURES)
    # Fitted on standardised features, then folded back into P, b1 and the bias, so the
    # network reads the raw features as AWC computes them.
    w = np.ones(len(y)) if weight is None else weight * len(y) / weight.sum()
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-9] = 1.0
    x = (x - mu) / sd
    net: dict[str, Array] = {
        "p": rng.normal(0.0, 1.0 / np.sqrt(n_in), (hidden, n_in)),
        "w1": rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, 0.5 / np.sqrt(hidden), (hidden, hidden)),
        "head": rng.normal(0.0, 1.0 / np.sqrt(hidden), hidden),
        "bias": np.asarray(float(np.median(y))),
    }
    m = {k: np.zeros_like(v) for k, v in net.items()}
    v2 = {k: np.zeros_like(v) for k, v in net.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            _, grads = forward_backward(net, x[idx], y[idx], w[idx])
            step += 1
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v2[k] = b2 * v2[k] + (1 - b2) * g * g
                mhat, vhat = m[k] / (1 - b1**step), v2[k] / (1 - b2**step)
                net[k] = net[k] - lr * mhat / (np.sqrt(vhat) + eps)
        losses.append(forward_backward(net, x, y, w)[0])
    p = net["p"] / sd  # proj = P (x - mu) / sd = p x - c
    c = p @ mu
    network = AwcNetwork(
        p=p, w1=net["w1"], b1=net["b1"] - net["w1"] @ c, w2=net["w2"], head=net["head"],
        bias=float(net["bias"] - net["head"] @ c), max_gamma=max_gamma,
    )  # fmt: skip
    return Fit(network=network, losses=tuple(losses))


def stakes(by_window: Mapping[int, Measured], slo: SLO = SLO()) -> float:
    """How much a scenario's label matters, its snapshots' weight in the fit: the mean TPOT
    of the other windows over the label's, less 1 (at least 0.01). A scenario where every
    window does alike barely pulls the network; one where a wrong window costs much, a lot.
    A window whose runs finished no conversation has an infinite TPOT: never the label unless
    every window's is, and then the scenario weighs the least."""
    best = by_window[oracle_window(by_window, slo)].tpot_mean_ms
    others = float(np.mean([m.tpot_mean_ms for m in by_window.values()]))
    if not (math.isfinite(best) and math.isfinite(others)) or best <= 0:
        return LEAST_STAKES  # a window whose runs finished nothing: no measure of the stakes
    return max(LEAST_STAKES, others / best - 1.0)
