"""Which cell serves each user over time: attach to the strongest, then hand over on the A3
event, with an interruption.

Layer: pure (numpy; no I/O).

A user measures every cell's RSRP (large scale: path loss, shadowing, antenna gains; fast fading
averages out over the L1 measurement) and filters it at layer 3 (TS 38.331 5.5.3.2):
F_n = (1 - a) F_(n-1) + a M_n with a = 1 / 2^(k/4), the filter's time characteristics kept at
the tick's rate (k assumes one sample per L1 measurement period, ``L1_PERIOD_MS`` in FR1). The
A3 event (TS 38.331 5.5.4.4, a neighbour becomes offset better than the serving cell) enters
when Mn - Hys > Mp + Off, here with no cell-specific offsets; held for the time to trigger, the
user hands over to the best neighbour and has no link for the interruption time (TS 38.133
6.1.1 puts it in the tens of ms); then its timer starts afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "A3",
    "A3_OFFSET_RANGE_DB",
    "FILTER_COEFFICIENTS",
    "HYSTERESIS_RANGE_DB",
    "L1_PERIOD_MS",
    "TIME_TO_TRIGGER_MS",
    "Serving",
    "serve",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# TS 38.331 TimeToTrigger: ms0 ... ms5120
TIME_TO_TRIGGER_MS = (0, 40, 64, 80, 100, 128, 160, 256, 320, 480, 512, 640, 1024, 1280, 2560, 5120)
# TS 38.331 FilterCoefficient: fc0 ... fc19
FILTER_COEFFICIENTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 17, 19)
HYSTERESIS_RANGE_DB = (0.0, 15.0)  # TS 38.331 Hysteresis: 0 ... 30, in 0.5 dB steps
A3_OFFSET_RANGE_DB = (-15.0, 15.0)  # TS 38.331 a3-Offset: -30 ... 30, in 0.5 dB steps
L1_PERIOD_MS = 200.0  # the sample rate k assumes: one FR1 intra-frequency L1 period


@dataclass(frozen=True, slots=True)
class A3:
    """The A3 rule: offset and hysteresis [dB], time to trigger and interruption [ms], the
    layer-3 filter coefficient k."""

    offset_db: float = 3.0
    hysteresis_db: float = 1.0
    ttt_ms: float = 160.0
    filter_k: int = 4
    interruption_ms: float = 30.0


@dataclass(frozen=True, slots=True)
class Serving:
    """Each user's serving cell per tick, the ticks it has no link (an interruption), and its
    handovers."""

    cell: IntArray  # [users, ticks]
    interrupted: npt.NDArray[np.bool_]  # [users, ticks]
    handovers: IntArray  # [users]


def _filter_weight(k: int, tick_ms: float) -> float:
    """The filter's weight per tick: a = 1 / 2^(k/4) per L1 period, at the tick's rate."""
    a = 1.0 / 2.0 ** (k / 4.0)
    return float(1.0 - (1.0 - a) ** (tick_ms / L1_PERIOD_MS))


def serve(rsrp_dbm: FloatArray, tick_ms: float, rule: A3 | None) -> Serving:
    """``rsrp_dbm`` [users, cells, ticks]: each cell's RSRP at each user. Without a rule, each
    user stays with the cell strongest at the start."""
    users, cells, ticks = rsrp_dbm.shape
    rows = np.arange(users)
    filtered = rsrp_dbm[:, :, 0].copy()
    serving = filtered.argmax(axis=1)
    cell = np.empty((users, ticks), dtype=np.int64)
    interrupted = np.zeros((users, ticks), dtype=bool)
    count = np.zeros(users, dtype=np.int64)
    cell[:, 0] = serving
    if rule is None or cells == 1:
        cell[:] = serving[:, None]
        return Serving(cell, interrupted, count)
    a = _filter_weight(rule.filter_k, tick_ms)
    hold = math.ceil(rule.ttt_ms / tick_ms - 1e-9)  # ticks the condition must last
    gap = math.ceil(rule.interruption_ms / tick_ms - 1e-9)
    timer = np.zeros(users, dtype=np.int64)
    margin = rule.offset_db + rule.hysteresis_db
    for t in range(1, ticks):
        filtered += a * (rsrp_dbm[:, :, t] - filtered)
        own = filtered[rows, serving]
        other = filtered.copy()
        other[rows, serving] = -np.inf
        best = other.argmax(axis=1)
        entered = other[rows, best] - own > margin
        timer = np.where(entered, timer + 1, 0)
        go = timer > hold  # held for the time to trigger
        if go.any():
            serving = np.where(go, best, serving)
            count += go
            timer[go] = 0
            who = np.flatnonzero(go)
            interrupted[who, t : t + gap] = True
        cell[:, t] = serving
    return Serving(cell, interrupted, count)
