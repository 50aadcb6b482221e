"""Where users are over time: static, linear and random-waypoint mobility, inside a disc.

Layer: pure (numpy; no I/O; a generator passed in). Positions are metres in the plane of the
serving site, sampled at ``ticks`` instants ``dt_s`` apart: an array [users, ticks, 2].

- ``static``: users stay where they were placed.
- ``linear``: constant speed in a random direction; a user that would leave the disc reflects
  off its rim. A path may pass closer to the site than ``r_min`` (the placement's bound); path
  loss is then taken at the model's shortest valid distance.
- ``waypoint``: random waypoint: walk at ``speed_mps`` to a point drawn uniformly in the
  annulus, pause ``pause_s``, repeat. The loop is per user per leg (a few legs a minute), never
  per tick.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = ["MOBILITY", "place_uniform", "trajectories"]

FloatArray = npt.NDArray[np.float64]
MOBILITY = ("static", "linear", "waypoint")


def place_uniform(users: int, r_min: float, r_max: float, rng: np.random.Generator) -> FloatArray:
    """Points uniform over the annulus r_min <= r <= r_max: [users, 2]."""
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, size=users))
    a = rng.uniform(0.0, 2.0 * math.pi, size=users)
    return np.column_stack([r * np.cos(a), r * np.sin(a)])


def _reflect(p: FloatArray, r_max: float) -> FloatArray:
    """Fold points beyond the rim back inside along their radius (a reflection off the rim;
    continuous, and never longer a step than the straight one)."""
    r = np.hypot(p[..., 0], p[..., 1])
    x = np.mod(r, 2.0 * r_max)
    folded = np.where(x > r_max, 2.0 * r_max - x, x)
    scale = np.where(r > 0, folded / np.maximum(r, 1e-12), 1.0)
    return p * scale[..., None]


def trajectories(
    kind: str,
    start: FloatArray,
    ticks: int,
    dt_s: float,
    rng: np.random.Generator,
    *,
    speed_mps: float,
    r_min: float,
    r_max: float,
    pause_s: float = 0.0,
) -> FloatArray:
    """Positions [users, ticks, 2] from ``start`` [users, 2]."""
    users = start.shape[0]
    t = np.arange(ticks) * dt_s
    if kind == "static" or speed_mps == 0:
        return np.repeat(start[:, None, :], ticks, axis=1)
    if kind == "linear":
        a = rng.uniform(0.0, 2.0 * math.pi, size=users)
        v = speed_mps * np.column_stack([np.cos(a), np.sin(a)])
        return _reflect(start[:, None, :] + v[:, None, :] * t[None, :, None], r_max)
    if kind == "waypoint":
        out = np.empty((users, ticks, 2))
        horizon = ticks * dt_s
        for u in range(users):
            times, points = [0.0], [start[u]]
            while times[-1] < horizon:
                nxt = place_uniform(1, r_min, r_max, rng)[0]
                walk = float(np.hypot(*(nxt - points[-1]))) / speed_mps
                times += [times[-1] + walk, times[-1] + walk + pause_s]
                points += [nxt, nxt]
            tt, pp = np.asarray(times), np.asarray(points)
            out[u, :, 0] = np.interp(t, tt, pp[:, 0])
            out[u, :, 1] = np.interp(t, tt, pp[:, 1])
        return out
    raise ConfigError(f"radio.mobility must be one of {', '.join(MOBILITY)}, got {kind!r}")
