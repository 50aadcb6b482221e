"""Where the cells are: hexagonal multi-site layouts, three sectors a site, the sector antenna
of TR 38.901, wrap-around, and users dropped per cell.

Layer: pure (numpy; no I/O; a generator passed in).

- Sites on a hexagonal grid at the inter-site distance: one, a site with a ring of six (7), or
  two rings (19); any count up to 7 takes the first ones of the ring.
- A site has one omnidirectional cell, or three sectors whose boresights point at 30, 150 and
  270 degrees (at the corners of the site's hexagon, as in TR 38.901's calibration layouts).
- Sector antennas (TR 38.901 7.3, Table 7.3-1): the element pattern
  A'' = -min(-(A_V + A_H), 30 dB), A_V = -min(12 ((theta - 90) / 65)^2, 30),
  A_H = -min(12 (phi / 65)^2, 30), and G_E,max (the table's 8 dBi); ``rows`` elements in a column
  (spacing ``spacing_wl`` wavelengths) fed as one port, its beam tilted ``downtilt_deg`` below
  the horizon by the column's phases (electrically); a single element is tilted mechanically
  instead (TR 38.901 7.1.3, beta; gamma = 0).
- Wrap-around (7 and 19 sites): the layout repeats over the plane, shifted by i a1 + j a2 with
  (i, j) = (2, 1) for 7 sites and (3, 2) for 19 (a1, a2 the grid's vectors), and each user sees
  each site at its nearest copy: a user at the layout's edge has neighbours on every side, as
  an inner one has.
- Drops: user ``i`` belongs to cell ``i mod cells`` (equal numbers per cell), uniform over its
  sector's share of the site's hexagon (a 120-degree wedge) or, with one cell a site, over the
  disc ``radius_m`` around its site; never nearer the site than ``min_m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ELEMENT_GAIN_DBI",
    "SECTOR_BORESIGHTS_DEG",
    "SITE_COUNTS",
    "Antenna",
    "Layout",
    "build",
    "drop",
    "element_pattern_db",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SITE_COUNTS = (1, 2, 3, 4, 5, 6, 7, 19)
SECTOR_BORESIGHTS_DEG = (30.0, 150.0, 270.0)
ELEMENT_GAIN_DBI = 8.0  # TR 38.901 Table 7.3-1: G_E,max
_WRAP_SHIFT = {7: (2, 1), 19: (3, 2)}  # (i, j): the layout repeats at i a1 + j a2


@dataclass(frozen=True, slots=True)
class Antenna:
    """A sector's panel: ``rows`` elements in a column ``spacing_wl`` wavelengths apart, its
    beam tilted ``downtilt_deg`` below the horizon, electrically (``rows`` > 1: the column's
    phases) or, with one element, mechanically."""

    rows: int = 1
    spacing_wl: float = 0.5
    downtilt_deg: float = 0.0
    peak_dbi: float = ELEMENT_GAIN_DBI  # G_E,max

    def gain_dbi(self, zenith_deg: FloatArray, azimuth_deg: FloatArray) -> FloatArray:
        """The gain toward a direction: ``zenith_deg`` from the site (90: the horizon),
        ``azimuth_deg`` from the boresight."""
        if self.rows == 1:
            zen, azi = _tilted(zenith_deg, azimuth_deg, self.downtilt_deg)
            return self.peak_dbi + element_pattern_db(zen, azi)
        # The column's array factor, steered to zenith 90 + downtilt and normalised to the
        # rows' power: |sum_m e^(j m psi)|^2 / M = sin^2(M psi / 2) / (M sin^2(psi / 2)), whose
        # peak is M (10 log10 M dB).
        psi = (
            2.0
            * math.pi
            * self.spacing_wl
            * (np.cos(np.radians(zenith_deg)) - math.cos(math.radians(90.0 + self.downtilt_deg)))
        )
        half = np.sin(psi / 2.0)
        near = np.abs(half) < 1e-9
        af = np.where(
            near,
            self.rows,
            np.sin(self.rows * psi / 2.0) ** 2 / (self.rows * np.where(near, 1.0, half) ** 2),
        )
        gain = self.peak_dbi + element_pattern_db(zenith_deg, azimuth_deg)
        return np.asarray(gain + 10.0 * np.log10(np.maximum(af, 1e-30)), dtype=np.float64)


def element_pattern_db(zenith_deg: npt.ArrayLike, azimuth_deg: npt.ArrayLike) -> FloatArray:
    """TR 38.901 Table 7.3-1: the element's attenuation [dB, <= 0] at a zenith angle (90: its
    boresight's elevation) and an azimuth from its boresight, in degrees."""
    theta = np.asarray(zenith_deg, dtype=np.float64)
    phi = (np.asarray(azimuth_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0
    a_v = -np.minimum(12.0 * ((theta - 90.0) / 65.0) ** 2, 30.0)
    a_h = -np.minimum(12.0 * (phi / 65.0) ** 2, 30.0)
    return np.asarray(-np.minimum(-(a_v + a_h), 30.0), dtype=np.float64)


def _tilted(
    zenith_deg: FloatArray, azimuth_deg: FloatArray, beta_deg: float
) -> tuple[FloatArray, FloatArray]:
    """A direction in the panel's own coordinates once the panel is tilted down by ``beta_deg``
    (TR 38.901 7.1.3, equations 7.1-7 and 7.1-8 with alpha at the boresight and gamma = 0)."""
    if beta_deg == 0.0:
        return zenith_deg, azimuth_deg
    th, ph, b = np.radians(zenith_deg), np.radians(azimuth_deg), math.radians(beta_deg)
    cos_t = math.cos(b) * np.cos(th) + math.sin(b) * np.cos(ph) * np.sin(th)
    zen = np.degrees(np.arccos(np.clip(cos_t, -1.0, 1.0)))
    azi = np.degrees(
        np.angle(
            math.cos(b) * np.sin(th) * np.cos(ph)
            - math.sin(b) * np.cos(th)
            + 1j * np.sin(ph) * np.sin(th)
        )
    )
    return zen, azi


@dataclass(frozen=True, slots=True)
class Layout:
    """The sites [sites, 2] in metres; each cell's site and boresight (NaN: omnidirectional);
    the wrap-around's two shift vectors [2, 2] (None: no wrap-around)."""

    sites: FloatArray
    cell_site: IntArray
    boresight_deg: FloatArray
    isd_m: float
    wrap: FloatArray | None

    @property
    def cells(self) -> int:
        return int(self.cell_site.size)

    @property
    def sectorised(self) -> bool:
        return not bool(np.isnan(self.boresight_deg).all())

    @property
    def extent_m(self) -> float:
        """The radius of a disc around the centre site that holds every site's hexagon."""
        return float(np.hypot(self.sites[:, 0], self.sites[:, 1]).max() + self.isd_m / math.sqrt(3))

    def offsets(self, positions: FloatArray) -> FloatArray:
        """From each site to each position [..., 2] -> [..., sites, 2], each site at its copy
        nearest the position where the layout wraps around."""
        d = positions[..., None, :] - self.sites
        if self.wrap is None:
            return d
        # In the shift vectors' basis, the nearest copy is a corner of the cell that holds the
        # point (for a 60-degree basis, the triangle's corners are among the four).
        (ax, ay), (bx, by) = self.wrap
        det = ax * by - ay * bx
        x, y = d[..., 0], d[..., 1]
        ci = np.floor((x * by - y * bx) / det)
        cj = np.floor((y * ax - x * ay) / det)
        best_x, best_y = x.copy(), y.copy()
        best = np.full(x.shape, np.inf)
        for di in (0.0, 1.0):
            for dj in (0.0, 1.0):
                cx = x - (ci + di) * ax - (cj + dj) * bx
                cy = y - (ci + di) * ay - (cj + dj) * by
                r2 = cx * cx + cy * cy
                closer = r2 < best
                np.copyto(best_x, cx, where=closer)
                np.copyto(best_y, cy, where=closer)
                np.copyto(best, r2, where=closer)
        return np.stack([best_x, best_y], axis=-1)


def _grid(sites: int, isd_m: float) -> FloatArray:
    ring1 = [
        (isd_m * math.cos(math.pi / 3 * k), isd_m * math.sin(math.pi / 3 * k)) for k in range(6)
    ]
    pts = [(0.0, 0.0), *ring1]
    if sites == 19:
        for k in range(6):  # ring 2: 2 a_k and a_k + a_(k+1)
            ak = np.array(ring1[k])
            ak1 = np.array(ring1[(k + 1) % 6])
            pts += [tuple(2 * ak), tuple(ak + ak1)]
    return np.asarray(pts[:sites], dtype=np.float64)


def build(sites: int, sectors: int, isd_m: float, *, wrap_around: bool = True) -> Layout:
    """The layout of ``sites`` sites (``SITE_COUNTS``) with ``sectors`` (1 or 3) cells each
    (checked by ``RadioConfig``)."""
    pos = _grid(sites, isd_m)
    cell_site = np.repeat(np.arange(sites), sectors)
    bore = np.tile(np.asarray(SECTOR_BORESIGHTS_DEG if sectors == 3 else [np.nan]), sites)
    wrap = None
    if wrap_around and sites in _WRAP_SHIFT:
        i, j = _WRAP_SHIFT[sites]
        t1 = i * np.array([isd_m, 0.0]) + j * np.array([isd_m / 2, isd_m * math.sqrt(3) / 2])
        c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
        t2 = np.array([c * t1[0] - s * t1[1], s * t1[0] + c * t1[1]])
        wrap = np.vstack([t1, t2])
    return Layout(pos, cell_site.astype(np.int64), bore.astype(np.float64), isd_m, wrap)


def _in_hexagon(p: FloatArray, isd_m: float) -> npt.NDArray[np.bool_]:
    """Inside the site's hexagon (corners at 30 + 60 k degrees, ``isd_m / sqrt(3)`` out): within
    ``isd_m / 2`` of the site along each of the three directions 0, 60 and 120 degrees."""
    inside = np.ones(p.shape[:-1], dtype=bool)
    for k in range(3):
        a = math.pi / 3 * k
        inside &= np.abs(p[..., 0] * math.cos(a) + p[..., 1] * math.sin(a)) <= isd_m / 2
    return inside


def drop(
    layout: Layout, users: int, rng: np.random.Generator, *, min_m: float, radius_m: float
) -> tuple[FloatArray, IntArray]:
    """Positions [users, 2] and each user's cell: user ``i`` in cell ``i mod cells`` (see the
    module docstring)."""
    home = np.arange(users, dtype=np.int64) % layout.cells
    site = layout.cell_site[home]
    out = np.empty((users, 2))
    if not layout.sectorised:
        r = np.sqrt(rng.uniform(min_m**2, radius_m**2, size=users))
        a = rng.uniform(0.0, 2.0 * math.pi, size=users)
        out[:] = np.column_stack([r * np.cos(a), r * np.sin(a)])
    else:
        bore = np.radians(layout.boresight_deg[home])
        todo = np.arange(users)
        rad = layout.isd_m / math.sqrt(3)
        while todo.size:  # rejection: uniform in the hexagon, kept where in the sector's wedge
            r = np.sqrt(rng.uniform(min_m**2, rad**2, size=todo.size))
            a = bore[todo] + rng.uniform(-math.pi / 3, math.pi / 3, size=todo.size)
            p = np.column_stack([r * np.cos(a), r * np.sin(a)])
            ok = _in_hexagon(p, layout.isd_m)
            out[todo[ok]] = p[ok]
            todo = todo[~ok]
    return out + layout.sites[site], home
