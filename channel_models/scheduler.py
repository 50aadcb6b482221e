"""Sharing a cell's PRBs among its users, slot by slot.

Layer: pure (numpy; no I/O). Every user is taken as backlogged (the link state is the rate a
user gets when it has data, as a shaper needs). Each function returns the share of the cell's
PRBs each user holds in each slot, [users, slots], summing to 1 over a cell's users.

- ``round_robin``: equal shares in every slot.
- ``proportional_fair``: each slot's resource-block groups go to the users with the largest
  instantaneous rate over their exponentially averaged served rate (time constant
  ``tc_slots``), one group each: the classic PF metric, in frequency as NR schedules; users with
  equal channels get equal time, and a user's share follows its rate relative to its own
  average. A loop over slots, vectorised over users (when k = 1 a slot goes whole to one user).
- ``min_max_upload``: the closed form that minimises the largest upload time of the users'
  payloads, share_i proportional to payload_i / rate_i: every user then finishes at once
  (the bandwidth split of the heterogeneous-edge paper), per slot, with no loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = ["SCHEDULERS", "min_max_upload", "proportional_fair", "round_robin", "shares"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SCHEDULERS = ("rr", "pf", "minmax")


def _groups(cell: IntArray) -> list[IntArray]:
    return [np.flatnonzero(cell == c) for c in np.unique(cell)]


def round_robin(rate: FloatArray, cell: IntArray) -> FloatArray:
    share = np.zeros_like(rate)
    for members in _groups(cell):
        share[members] = 1.0 / members.size
    return share


def proportional_fair(
    rate: FloatArray, cell: IntArray, *, tc_slots: float = 100.0, groups: int = 1
) -> FloatArray:
    """``rate`` [users, slots]: what each user would get with the whole cell in that slot.
    Each slot's ``groups`` resource-block groups go to the users of each cell with the largest
    PF metrics, one group each (a user with a group holds 1/groups of the cell)."""
    users, slots = rate.shape
    avg = np.maximum(rate.mean(axis=1), 1e-9)  # start from the long-term mean: no warm-up
    beta = 1.0 / tc_slots
    cells, sizes = np.unique(cell, return_counts=True)
    # Every cell serves k users a slot (k: the groups, or the smallest cell's users).
    k = int(min(groups, sizes.min()))
    # Slot-major copies, so that each slot reads and writes contiguous memory.
    rate_t = np.ascontiguousarray(rate.T)
    share_t = np.zeros((slots, users))
    blocks = bool(np.all(sizes == sizes[0])) and bool(np.all(cell == np.repeat(cells, sizes[0])))
    if blocks:
        # Cells as equal contiguous blocks (one cell, or the two directions of one): the
        # metric reshapes to [cells, users per cell] with no masking.
        offset = (np.arange(cells.size) * sizes[0])[:, None]
        shape = (cells.size, int(sizes[0]))
    else:
        outside = np.where(cell[None, :] == cells[:, None], 0.0, -np.inf)  # [cells, users]
    for t in range(slots):
        r = rate_t[t]
        metric = r / avg
        if blocks:
            m = metric.reshape(shape)
            local = (
                m.argmax(axis=1)[:, None] if k == 1 else np.argpartition(-m, k - 1, axis=1)[:, :k]
            )
            winners = (local + offset).ravel()
        else:
            m = outside + metric
            winners = (
                m.argmax(axis=1) if k == 1 else np.argpartition(-m, k - 1, axis=1)[:, :k].ravel()
            )
        share_t[t, winners] = 1.0 / k
        avg *= 1.0 - beta
        avg[winners] += beta * r[winners] / k
        np.maximum(avg, 1e-9, out=avg)
    return np.ascontiguousarray(share_t.T)


def min_max_upload(rate: FloatArray, cell: IntArray, payload_bits: FloatArray) -> FloatArray:
    """Shares proportional to payload / rate within each cell (0-rate users get nothing)."""
    need = np.where(rate > 0, payload_bits[:, None] / np.maximum(rate, 1e-30), 0.0)
    share = np.zeros_like(rate)
    for members in _groups(cell):
        total = need[members].sum(axis=0, keepdims=True)
        share[members] = np.where(total > 0, need[members] / np.maximum(total, 1e-30), 0.0)
    return share


def shares(
    kind: str,
    rate: FloatArray,
    cell: IntArray,
    *,
    payload_bits: FloatArray | None = None,
    tc_slots: float = 100.0,
    groups: int = 1,
) -> FloatArray:
    if kind == "rr":
        return round_robin(rate, cell)
    if kind == "pf":
        return proportional_fair(rate, cell, tc_slots=tc_slots, groups=groups)
    if kind == "minmax":
        if payload_bits is None:
            raise ValueError("min_max_upload needs the users' payloads")
        return min_max_upload(rate, cell, payload_bits)
    raise ConfigError(f"radio.scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
