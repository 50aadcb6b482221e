"""Two tiers: a macro cell with small cells inside it, the heterogeneous edge's radio (hetnet.md
3.4; issue 17, deliverable 2).

Layer: pure (numpy; no I/O; a generator passed in).

- **Geometry.** The macro site is at the origin and its cell is the disc of ``macro_radius_m``.
  ``small_cells`` small cells are dropped uniformly over it, each at least ``macro_gap_m`` from
  the macro site and ``spacing_m`` from the others.
- **Users.** User i is dropped around small cell i mod S (equal numbers a cell, as
  ``layout.drop`` does for sites), uniform over the annulus from ``near_m`` to ``far_m``; with
  ``hotspot_share`` < 1, that share of the users is dropped so and the rest uniformly over the
  macro cell (at least ``near_m`` from every small cell).
- **Path loss** to each small cell: ``paper``, 128.1 + 37.6 log10(d_km) dB (hetnet.md 3.4), or
  ``umi``, TR 38.901's UMi street canyon at ``carrier_hz`` with each link's line of sight drawn
  from the standard's probability. Log-normal shadowing of ``shadowing_db`` (hetnet.md: 8 dB,
  off by default), independent per user and small cell.
- **Attachment.** Each user attaches to the small cell it hears best (least path loss with
  shadowing: every user transmits at its one power, so the best uplink is the best downlink).
  Users are served by their small cell only; the macro cell verifies and serves no user.
- **Interference.** ``reuse = "orthogonal"`` (the default): each small cell has a band of its
  own, and none hears another's users. ``"shared"``: all small cells use one band, and each
  hears the others' users as a rise over the noise. Its density at small cell c is the sum over
  the users u of every other cell of p_u g_(u,c) / B: the interference if they all upload at once
  across their bands (a user on b Hz spreads p_u over b, so averaged over the band each one adds
  p_u g / B whatever its share). Uploads in turn (batch by batch) see less: it is an upper bound.
- **Time variation.** ``gain_series`` gives each user's gain to its small cell over time: its
  mean gain times small-scale fading (``fading.fading_gain``: Rayleigh with the Doppler of
  ``speed_mps`` at the carrier, or block fading held ``block_ms``), the positions fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from channel_models.fading import fading_gain
from channel_models.pathloss import C_M_S, los_probability
from channel_models.pathloss import path_loss_db as nr_path_loss_db
from emu.errors import ConfigError

__all__ = [
    "FADING",
    "PATH_LOSS",
    "REUSE",
    "TwoTier",
    "TwoTierConfig",
    "drop",
    "gain_series",
    "paper_path_loss_db",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
PATH_LOSS = ("paper", "umi")
REUSE = ("orthogonal", "shared")
FADING = ("none", "rayleigh", "block")
_H_SMALL_CELL_M = 10.0  # UMi's base station height (TR 38.901)
_H_USER_M = 1.5
WHERE = "hetnet.radio"  # the scenario's section, which error messages name


def paper_path_loss_db(distance_m: npt.ArrayLike) -> FloatArray:
    """128.1 + 37.6 log10(d_km) [dB]: the small cell's path loss in hetnet.md 3.4."""
    return np.asarray(128.1 + 37.6 * np.log10(np.asarray(distance_m, dtype=np.float64) / 1000.0))


def _check(where: str, ok: bool, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{where} must be {rule}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TwoTierConfig:
    """The two tiers' geometry and propagation (validated on construction: ConfigError naming
    the field of ``[hetnet.radio]``). Distances in metres."""

    small_cells: int = 1
    macro_radius_m: float = 500.0
    macro_gap_m: float = 75.0  # a small cell's least distance to the macro site
    spacing_m: float = 40.0  # ... and to another small cell
    near_m: float = 20.0  # a user's least distance to a small cell
    far_m: float = 250.0  # the radius of a small cell's hotspot
    hotspot_share: float = 1.0  # the share of users dropped around a small cell
    path_loss: str = "paper"  # PATH_LOSS
    carrier_hz: float = 3.5e9  # for umi and the Doppler
    shadowing_db: float = 0.0  # log-normal sigma; 0: off
    reuse: str = "orthogonal"  # REUSE
    fading: str = "none"  # FADING, for gain_series
    speed_mps: float = 1.0  # the Doppler of rayleigh fading
    block_ms: float = 10.0  # a block of block fading

    def __post_init__(self) -> None:
        w = WHERE
        _check(
            f"{w}.small_cells",
            isinstance(self.small_cells, int) and self.small_cells >= 1,
            "an integer >= 1",
            self.small_cells,
        )
        for name in ("macro_radius_m", "near_m", "far_m", "carrier_hz", "block_ms"):
            v = getattr(self, name)
            _check(f"{w}.{name}", math.isfinite(v) and v > 0, "a finite number > 0", v)
        for name in ("macro_gap_m", "spacing_m", "shadowing_db", "speed_mps"):
            v = getattr(self, name)
            _check(f"{w}.{name}", math.isfinite(v) and v >= 0, "a finite number >= 0", v)
        _check(f"{w}.far_m", self.far_m > self.near_m, f"> near_m ({self.near_m:g})", self.far_m)
        _check(
            f"{w}.macro_gap_m",
            self.macro_gap_m < self.macro_radius_m,
            f"< macro_radius_m ({self.macro_radius_m:g})",
            self.macro_gap_m,
        )
        _check(
            f"{w}.hotspot_share",
            0.0 <= self.hotspot_share <= 1.0,
            "in [0, 1]",
            self.hotspot_share,
        )
        for name, options in (("path_loss", PATH_LOSS), ("reuse", REUSE), ("fading", FADING)):
            v = getattr(self, name)
            _check(f"{w}.{name}", v in options, f"one of {', '.join(options)}", v)
        # Room for the small cells: each needs a disc of spacing / 2 inside the macro annulus.
        room = self.macro_radius_m**2 - self.macro_gap_m**2
        need = self.small_cells * (self.spacing_m / 2.0) ** 2 * 2.0  # a loose packing
        _check(
            f"{w}.small_cells",
            need <= room,
            f"few enough to be {self.spacing_m:g} m apart in a {self.macro_radius_m:g} m macro "
            "cell",
            self.small_cells,
        )


@dataclass(frozen=True, slots=True)
class TwoTier:
    """A drop: where the small cells and the users are, whom each user attaches to, and what
    it hears."""

    small_cells_m: FloatArray  # [S, 2]
    users_m: FloatArray  # [K, 2]
    cell: IntArray  # [K]: each user's small cell
    distance_m: FloatArray  # [K]: to it
    gain_db: FloatArray  # [K]: the path gain to it (minus path loss and shadowing)
    interference_dbm_per_hz: FloatArray  # [S]: the rise each small cell hears (-inf: none)

    @property
    def members(self) -> list[list[int]]:
        """Each small cell's users."""
        return [np.flatnonzero(self.cell == c).tolist() for c in range(len(self.small_cells_m))]


def _disc(rng: np.random.Generator, n: int, r_lo: float, r_hi: float) -> FloatArray:
    """``n`` points uniform over the annulus r_lo..r_hi around the origin."""
    r = np.sqrt(rng.uniform(r_lo**2, r_hi**2, n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _small_cells(cfg: TwoTierConfig, rng: np.random.Generator) -> FloatArray:
    """The small cells' sites, by rejection: uniform over the macro cell past ``macro_gap_m``,
    each ``spacing_m`` from those before it."""
    sites: list[FloatArray] = []
    for _ in range(10_000 * cfg.small_cells):
        p = _disc(rng, 1, cfg.macro_gap_m, cfg.macro_radius_m)[0]
        if all(np.hypot(*(p - q)) >= cfg.spacing_m for q in sites):
            sites.append(p)
            if len(sites) == cfg.small_cells:
                return np.array(sites)
    raise ConfigError(
        f"{WHERE}.small_cells: {cfg.small_cells} small cells {cfg.spacing_m:g} m apart "
        f"did not fit in the {cfg.macro_radius_m:g} m macro cell"
    )


def _users(
    cfg: TwoTierConfig, sites: FloatArray, count: int, rng: np.random.Generator
) -> FloatArray:
    hot = round(cfg.hotspot_share * count)
    out = np.empty((count, 2))
    for i in range(hot):
        out[i] = sites[i % len(sites)] + _disc(rng, 1, cfg.near_m, cfg.far_m)[0]
    for i in range(hot, count):  # uniform over the macro cell, never too near a small cell
        while True:
            p = _disc(rng, 1, 0.0, cfg.macro_radius_m)[0]
            if np.hypot(*(sites - p).T).min() >= cfg.near_m:
                out[i] = p
                break
    return out


def _loss_db(cfg: TwoTierConfig, d_m: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Path loss [dB] over [users, small cells] of 2D distances."""
    if cfg.path_loss == "paper":
        return paper_path_loss_db(d_m)
    los = rng.uniform(size=d_m.shape) < los_probability("umi", d_m, h_ut_m=_H_USER_M)
    return nr_path_loss_db(
        "umi", los, d_m, freq_hz=cfg.carrier_hz, h_bs_m=_H_SMALL_CELL_M, h_ut_m=_H_USER_M
    )


def drop(
    cfg: TwoTierConfig,
    count: int,
    rng: np.random.Generator,
    *,
    power_w: npt.ArrayLike = 0.2,
    bandwidth_hz: float = 10e6,
) -> TwoTier:
    """``count`` users and the small cells, each user attached to the one it hears best;
    ``power_w`` (each user's, or one for all) and ``bandwidth_hz`` (a small cell's band) set the
    interference under shared reuse."""
    sites = _small_cells(cfg, rng)
    users = _users(cfg, sites, count, rng)
    d = np.maximum(np.hypot(*(users[:, None, :] - sites[None, :, :]).transpose(2, 0, 1)), 1.0)
    loss = _loss_db(cfg, d, rng) + cfg.shadowing_db * rng.standard_normal(d.shape)
    cell = np.argmin(loss, axis=1).astype(np.int64)
    rows = np.arange(count)
    gain_w = 10.0 ** (-loss / 10.0)  # [users, cells]
    interference = np.full(len(sites), -math.inf)
    if cfg.reuse == "shared" and len(sites) > 1:
        p = np.broadcast_to(np.asarray(power_w, dtype=np.float64), (count,))
        for c in range(len(sites)):
            others = cell != c
            if others.any():
                density_w = float((p[others] * gain_w[others, c]).sum()) / bandwidth_hz
                interference[c] = 10.0 * math.log10(density_w) + 30.0
    return TwoTier(
        small_cells_m=sites,
        users_m=users,
        cell=cell,
        distance_m=d[rows, cell],
        gain_db=-loss[rows, cell],
        interference_dbm_per_hz=interference,
    )


def gain_series(
    cfg: TwoTierConfig,
    mean_gain_db: npt.ArrayLike,
    duration_s: float,
    tick_ms: float,
    rng: np.random.Generator,
) -> FloatArray:
    """Each user's gain to its small cell [dB] at every tick of ``tick_ms`` over ``duration_s``
    [users, ticks]: its mean gain times the small-scale fading of ``cfg.fading`` (mean power 1,
    so the mean linear gain is the planner's)."""
    mean = np.asarray(mean_gain_db, dtype=np.float64).ravel()
    ticks = max(1, math.ceil(duration_s * 1e3 / tick_ms))
    doppler = np.full(mean.size, cfg.speed_mps * cfg.carrier_hz / C_M_S)
    power = fading_gain(cfg.fading, doppler, ticks, tick_ms / 1e3, rng, block_s=cfg.block_ms / 1e3)
    return np.asarray(mean[:, None] + 10.0 * np.log10(np.maximum(power, 1e-12)))
