"""The NR uplink's transmit power and the interference it makes: open-loop fractional power
control (TS 38.213 7.1.1) and, where the layout has several cells, the interference each cell's
receiver sees from the users the other cells schedule.

Layer: pure (numpy; no I/O).

TS 38.213 7.1.1, the PUSCH power of a transmission on ``M`` resource blocks at numerology mu:

    P = min(P_CMAX, P_O_PUSCH + 10 log10(2^mu M) + alpha PL + Delta_TF + f)

with ``Delta_TF = 0`` (no MCS-dependent offset) and ``f = 0`` (no closed-loop corrections):
the open loop alone. ``PL`` is the downlink loss the user estimates: the reference signal's
power less its filtered RSRP, taken here as its large-scale value, the coupling loss to its
cell in the tick (path loss, shadowing and both antennas' gains; no fast fading). ``alpha``
takes the values TS 38.331 allows.

Interference (full load): every PRB of every other cell carries one of its users at a time,
each with the chance of its share of the cell's PRBs; the power it puts on that PRB reaches
this cell's receiver through its own coupling loss to it. ``interference_over_thermal_db`` is
the mean over the schedulers' choices (what a scheduler expects); ``interference_per_slot``
what the other cells' choices of one slot give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALPHAS",
    "P0_RANGE_DBM",
    "PowerControl",
    "headroom_db",
    "interference_over_thermal_db",
    "pusch_dbm",
]

FloatArray = npt.NDArray[np.float64]
ALPHAS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # TS 38.331 Alpha: alpha0 ... alpha1
P0_RANGE_DBM = (-202.0, 24.0)  # TS 38.331 p0-NominalWithGrant
_BLOCK = 1 << 20  # values of cells x slots heard at once


def _db(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(10.0 * np.log10(np.maximum(np.asarray(x, dtype=np.float64), 1e-30)))


@dataclass(frozen=True, slots=True)
class PowerControl:
    """The open loop's parameters: P_O_PUSCH [dBm], alpha, the numerology, P_CMAX [dBm]."""

    p0_dbm: float
    alpha: float
    numerology: int
    p_max_dbm: float

    def wanted_dbm(self, pl_db: npt.ArrayLike, prbs: npt.ArrayLike) -> FloatArray:
        """What the open loop asks for on ``prbs`` resource blocks, before the cap."""
        scaled = 2.0**self.numerology * np.asarray(prbs, dtype=np.float64)
        return self.p0_dbm + _db(scaled) + self.alpha * np.asarray(pl_db, dtype=np.float64)


def pusch_dbm(pl_db: npt.ArrayLike, prbs: npt.ArrayLike, pc: PowerControl) -> FloatArray:
    """The PUSCH transmit power [dBm] on ``prbs`` resource blocks at path loss ``pl_db``."""
    return np.asarray(np.minimum(pc.p_max_dbm, pc.wanted_dbm(pl_db, prbs)), dtype=np.float64)


def headroom_db(pl_db: npt.ArrayLike, n_prb: int, pc: PowerControl) -> FloatArray:
    """How far the open loop's power for the whole carrier stands from P_CMAX [dB]: negative
    where power control holds a user below its maximum. On a share ``s`` of the carrier a user
    sends min(P_CMAX, wanted(s M)), so its SINR there is the full-carrier, full-power SINR plus
    ``min(-10 log10 s, headroom)``: power concentrates on fewer PRBs only while the open loop
    asks for more than it has."""
    return np.asarray(pc.wanted_dbm(pl_db, n_prb) - pc.p_max_dbm, dtype=np.float64)


def interference_over_thermal_db(
    loss_db: FloatArray,
    serving: npt.NDArray[np.int64],
    prbs: FloatArray,
    pc: PowerControl,
    *,
    own_loss_db: FloatArray,
    noise_prb_dbm: float,
) -> FloatArray:
    """Each cell's uplink interference over thermal [dB] per tick [cells, ticks]: ``loss_db``
    [users, cells, ticks] every user's coupling loss to every cell (path loss, shadowing and
    both antennas' gains), ``serving`` [users, ticks] each user's cell, ``prbs`` [users, ticks]
    the resource blocks each uses when scheduled (its share of its cell's PRBs is 1 / the users
    the cell serves), ``own_loss_db`` [users, ticks] the loss each user's power control
    estimates (TS 38.213: the reference signal's power less the filtered RSRP; here the
    large-scale coupling loss to its own cell). ``noise_prb_dbm``: a PRB's receiver noise."""
    cells, ticks = loss_db.shape[1], loss_db.shape[2]
    serving = np.broadcast_to(serving, (serving.shape[0], ticks))
    power = pusch_dbm(own_loss_db, prbs, pc)
    per_prb_mw = 10.0 ** ((power - _db(prbs)) / 10.0)  # [users, ticks]
    key = (serving * ticks + np.arange(ticks)).ravel()
    members = np.bincount(key, minlength=cells * ticks)[key].reshape(serving.shape)
    weight = per_prb_mw / members  # a PRB of its cell, this share of the time
    received = weight[:, None, :] * 10.0 ** (-loss_db / 10.0)  # [users, cells, ticks]
    foreign = serving[:, None, :] != np.arange(cells)[None, :, None]
    interference = (received * foreign).sum(axis=0)  # [cells, ticks]
    return np.asarray(_db(1.0 + interference / 10.0 ** (noise_prb_dbm / 10.0)), dtype=np.float64)


def interference_per_slot(
    loss_db: FloatArray,
    serving: npt.NDArray[np.int64],
    occupancy: FloatArray,
    per_prb_dbm: FloatArray,
) -> FloatArray:
    """The interference [mW] on a PRB of each user's own cell in each slot [users, slots],
    from the users the other cells schedule in that slot: ``occupancy`` [users, slots] the
    share of its cell's PRBs each user holds (the chance that a given PRB carries it),
    ``per_prb_dbm`` [users, ticks'] its power on each of them, ``loss_db`` [users, cells,
    ticks'] and ``serving`` [users, ticks'] as in ``interference_over_thermal_db`` (a tick
    a whole number of slots; ticks' = 1: the same all along)."""
    users, cells, ticks = loss_db.shape
    slots = occupancy.shape[1]
    per = slots // ticks
    foreign = serving[:, None, :] != np.arange(cells)[None, :, None]
    gain = 10.0 ** (-loss_db / 10.0) * foreign  # [users, cells, ticks']
    sent = occupancy.reshape(users, ticks, per) * 10.0 ** (per_prb_dbm / 10.0)[:, :, None]
    out = np.empty((users, ticks, per))
    # heard[c, s] = sum over users of gain[u, c] sent[u, s], a block of the time axis at a
    # time (every cell's every slot at once would be a large array for long runs)
    if ticks == 1:
        g, width = gain[:, :, 0].T, max(1, _BLOCK // cells)  # [cells, users]
        for s0 in range(0, per, width):
            out[:, 0, s0 : s0 + width] = (g @ sent[:, 0, s0 : s0 + width])[serving[:, 0]]
    else:
        width = max(1, _BLOCK // (cells * per))
        for t0 in range(0, ticks, width):
            t1 = min(ticks, t0 + width)
            heard = np.matmul(  # [ticks in the block, cells, per]
                gain[:, :, t0:t1].transpose(2, 1, 0), sent[:, t0:t1].transpose(1, 0, 2)
            )
            out[:, t0:t1] = heard[np.arange(t1 - t0)[None, :], serving[:, t0:t1]]
    return out.reshape(users, slots)
