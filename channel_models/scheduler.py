"""Sharing a cell's PRBs among its users, slot by slot.

Layer: pure (numpy; no I/O). Every user is taken as backlogged (the link state is the rate a
user gets when it has data, as a shaper needs). Each function returns the share of the cell's
PRBs each user holds in each slot, [users, slots], summing to 1 over a cell's users. A user's
cell is fixed ([users]) or changes with handovers ([users, ticks], a tick a whole number of
slots).

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

__all__ = [
    "SCHEDULERS",
    "cell_totals",
    "min_max_upload",
    "proportional_fair",
    "round_robin",
    "shares",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SCHEDULERS = ("rr", "pf", "minmax")


def _per_tick(cell: IntArray, slots: int) -> IntArray:
    """Each user's cell per tick [users, ticks] (a cell for the whole run: one tick)."""
    c = np.asarray(cell, dtype=np.int64)
    c = c[:, None] if c.ndim == 1 else c
    if slots % c.shape[1]:
        raise ValueError(f"{slots} slots do not split into {c.shape[1]} ticks")
    return c


def cell_totals(x: FloatArray, cell: IntArray) -> FloatArray:
    """Per user and slot, the sum of ``x`` [users, slots] over the users of its cell in that
    slot; ``cell``: [users] or [users, ticks] (each tick a whole number of slots)."""
    users, slots = x.shape
    c = _per_tick(cell, slots)
    ticks = c.shape[1]
    per = slots // ticks
    # one key per (cell, tick) that has users: at most users x ticks of them
    _, key = np.unique((c * ticks + np.arange(ticks)).ravel(), return_inverse=True)
    xs = x.reshape(users * ticks, per)
    n = int(key.max()) + 1
    acc = np.empty((n, per))
    for j in range(per):
        acc[:, j] = np.bincount(key, weights=xs[:, j], minlength=n)
    return np.asarray(acc[key].reshape(users, slots), dtype=np.float64)


def round_robin(rate: FloatArray, cell: IntArray) -> FloatArray:
    """Equal shares of each cell among its users, in every slot."""
    return 1.0 / cell_totals(np.ones_like(rate), cell)


class _Members:
    """The users of each cell as rows of an index matrix [cells, most users], padded with
    ``pad`` (an index past the users), rebuilt only when the membership changes."""

    def __init__(self, users: int, groups: int) -> None:
        self.pad, self.groups = users, groups
        self.key: IntArray | None = None
        self.index = np.zeros((0, 0), dtype=np.int64)
        self.k = 1
        self.share = np.zeros(0)

    def update(self, cell: IntArray) -> None:
        if self.key is not None and np.array_equal(cell, self.key):
            return
        self.key = cell.copy()
        order = np.argsort(cell, kind="stable")
        cells, start, sizes = np.unique(cell[order], return_index=True, return_counts=True)
        width = int(sizes.max())
        index = np.full((cells.size, width), self.pad, dtype=np.int64)
        col = np.arange(cell.size) - np.repeat(start, sizes)
        index[np.repeat(np.arange(cells.size), sizes), col] = order
        self.index = index
        self.k = min(self.groups, width)
        # each cell gives its groups to min(groups, its users) users, one group each
        self.share = 1.0 / np.minimum(self.groups, sizes).astype(np.float64)
        self.full = bool(sizes.min() >= self.k)  # no row short of k users: no padding chosen
        self.part = np.repeat(self.share, self.k)
        self.metric = np.empty(index.shape)
        self.flat = index.ravel()
        self.row_start = (np.arange(cells.size) * width)[:, None]


def proportional_fair(
    rate: FloatArray, cell: IntArray, *, tc_slots: float = 100.0, groups: int = 1
) -> FloatArray:
    """``rate`` [users, slots]: what each user would get with the whole cell in that slot;
    ``cell``: [users] or [users, ticks]. Each slot's ``groups`` resource-block groups go to the
    users of each cell with the largest PF metrics, one group each (a cell with fewer users
    than groups gives each of them an equal part)."""
    users, slots = rate.shape
    c = _per_tick(cell, slots)
    per = slots // c.shape[1]
    avg = np.maximum(rate.mean(axis=1), 1e-9)  # start from the long-term mean: no warm-up
    beta = 1.0 / tc_slots
    # Slot-major copies, so that each slot reads and writes contiguous memory.
    rate_t = np.ascontiguousarray(rate.T)
    share_t = np.zeros((slots, users))
    metric = np.full(users + 1, -np.inf)  # the last entry: the padding's, never chosen
    members = _Members(users, groups)
    for t in range(slots):
        if t % per == 0:
            members.update(c[:, t // per])
            index, flat, start, buf = members.index, members.flat, members.row_start, members.metric
            k, part, full = members.k, members.part, members.full
        r = rate_t[t]
        np.divide(r, avg, out=metric[:users])
        m = metric.take(index, out=buf)
        if k == 1:
            local = m.argmax(axis=1)[:, None]
        else:
            np.negative(m, out=m)
            local = m.argpartition(k - 1, axis=1)[:, :k]
        winners = flat[(local + start).ravel()]
        got = part
        if not full:
            real = winners < users
            winners, got = winners[real], part[real]
        row = share_t[t]
        row[winners] = got
        avg *= 1.0 - beta
        avg[winners] += beta * r[winners] * got
        np.maximum(avg, 1e-9, out=avg)
    return np.ascontiguousarray(share_t.T)


def min_max_upload(rate: FloatArray, cell: IntArray, payload_bits: FloatArray) -> FloatArray:
    """Shares proportional to payload / rate within each cell (0-rate users get nothing)."""
    need = np.where(rate > 0, payload_bits[:, None] / np.maximum(rate, 1e-30), 0.0)
    total = cell_totals(need, cell)
    return np.asarray(np.where(total > 0, need / np.maximum(total, 1e-30), 0.0), np.float64)


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
