"""5G NR link abstraction: SINR to CQI to MCS (TS 38.214), transport block size, BLER, HARQ.

Layer: pure (numpy; no I/O). Vectorised over users and slots.

- CQI: TS 38.214 Table 5.2.2.1-2 (4-bit CQI table 1, up to 64QAM). A CQI is reported when the
  SINR reaches its 10%-BLER threshold on an AWGN channel (``CQI_SINR_DB``: the thresholds of
  the widely used link-level curves of the Vienna simulators, for this table).
- MCS: TS 38.214 Table 5.1.3.1-1 (MCS index table 1); the MCS used for a CQI is the highest
  whose spectral efficiency does not exceed the CQI's.
- TBS: TS 38.214 5.1.3.2 (N_RE capped at 156 per PRB, Table 5.1.3.2-1 below 3824 bits).
- BLER of an MCS at SINR g [dB]: a logistic AWGN curve through 10% at the MCS's threshold (its
  spectral efficiency interpolated on the CQI thresholds), 1 / (1 + 9 exp(k (g - g10))) with a
  slope k of 3 per dB (about 2 dB from 90% to 1%, as LDPC curves of this size fall).
- HARQ with Chase combining: retransmission j sees the SINR of j transmissions added (linear).
- PRBs per carrier: TS 38.101-1 Table 5.3.2-1.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = [
    "CQI_EFFICIENCY",
    "CQI_SINR_DB",
    "MCS_TABLE",
    "bler",
    "cqi_from_sinr",
    "harq",
    "harq_exact",
    "mcs_from_cqi",
    "prb_count",
    "tbs_bits",
    "tbs_for",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# CQI 1..15 (index 0: out of range, nothing sent): spectral efficiency [bit/s/Hz].
CQI_EFFICIENCY = np.array(
    [0.0, 0.1523, 0.2344, 0.3770, 0.6016, 0.8770, 1.1758, 1.4766, 1.9141, 2.4063, 2.7305,
     3.3223, 3.9023, 4.5234, 5.1152, 5.5547]
)  # fmt: skip
# SINR [dB] at which CQI 1..15 reaches 10% BLER (AWGN).
CQI_SINR_DB = np.array(
    [-6.7, -4.7, -2.3, 0.2, 2.4, 4.3, 5.9, 8.1, 10.3, 11.7, 14.1, 16.3, 18.7, 21.0, 22.7]
)

# MCS 0..28: modulation order Qm, target code rate x 1024, spectral efficiency.
MCS_TABLE = np.array(
    [
        (2, 120, 0.2344), (2, 157, 0.3066), (2, 193, 0.3770), (2, 251, 0.4902),
        (2, 308, 0.6016), (2, 379, 0.7402), (2, 449, 0.8770), (2, 526, 1.0273),
        (2, 602, 1.1758), (2, 679, 1.3262), (4, 340, 1.3281), (4, 378, 1.4766),
        (4, 434, 1.6953), (4, 490, 1.9141), (4, 553, 2.1602), (4, 616, 2.4063),
        (4, 658, 2.5703), (6, 438, 2.5664), (6, 466, 2.7305), (6, 517, 3.0293),
        (6, 567, 3.3223), (6, 616, 3.6094), (6, 666, 3.9023), (6, 719, 4.2129),
        (6, 772, 4.5234), (6, 822, 4.8164), (6, 873, 5.1152), (6, 910, 5.3320),
        (6, 948, 5.5547),
    ]
)  # fmt: skip

# TS 38.214 Table 5.1.3.2-1: TBS for N_info <= 3824.
_TBS_SMALL = np.array(
    [24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176,
     184, 192, 208, 224, 240, 256, 272, 288, 304, 320, 336, 352, 368, 384, 408, 432, 456, 480,
     504, 528, 552, 576, 608, 640, 672, 704, 736, 768, 808, 848, 888, 928, 984, 1032, 1064, 1128,
     1160, 1192, 1224, 1256, 1288, 1320, 1352, 1416, 1480, 1544, 1608, 1672, 1736, 1800, 1864,
     1928, 2024, 2088, 2152, 2216, 2280, 2408, 2472, 2536, 2600, 2664, 2728, 2792, 2856, 2976,
     3104, 3240, 3368, 3496, 3624, 3752, 3824]
)  # fmt: skip

# TS 38.101-1 Table 5.3.2-1: maximum PRBs by subcarrier spacing [kHz] and bandwidth [MHz].
_PRBS = {
    15: {5: 25, 10: 52, 15: 79, 20: 106, 25: 133, 30: 160, 40: 216, 50: 270},
    30: {5: 11, 10: 24, 15: 38, 20: 51, 25: 65, 30: 78, 40: 106, 50: 133, 60: 162, 70: 189,
         80: 217, 90: 245, 100: 273},
    60: {10: 11, 15: 18, 20: 24, 25: 31, 30: 38, 40: 51, 50: 65, 60: 79, 70: 93, 80: 107,
         90: 121, 100: 135},
}  # fmt: skip

# CQI 1 is below MCS 0's efficiency: it is sent at MCS 0 (and its BLER says what that costs).
_CQI_TO_MCS = np.where(
    np.arange(16) > 0,
    np.maximum(np.searchsorted(MCS_TABLE[:, 2], CQI_EFFICIENCY + 1e-9, side="right") - 1, 0),
    -1,
)

# SINR [dB] at 10% BLER for each MCS: its efficiency placed on the CQI curve.
MCS_SINR_DB = np.interp(MCS_TABLE[:, 2], CQI_EFFICIENCY[1:], CQI_SINR_DB)
BLER_SLOPE_PER_DB = 3.0


def prb_count(bandwidth_hz: float, numerology: int) -> int:
    """PRBs of a carrier (TS 38.101-1); ConfigError for a combination the table lacks."""
    scs = 15 * 2**numerology
    mhz = bandwidth_hz / 1e6
    table = _PRBS.get(scs, {})
    key = round(mhz)
    if scs not in _PRBS or abs(mhz - key) > 1e-6 or key not in table:
        valid = ", ".join(str(b) for b in table) or "none"
        raise ConfigError(
            f"radio.bandwidth_hz must be a TS 38.101-1 channel bandwidth for {scs} kHz "
            f"subcarriers (numerology {numerology}): {valid} MHz, got {bandwidth_hz:g}"
        )
    return table[key]


def cqi_from_sinr(sinr_db: npt.ArrayLike) -> IntArray:
    """The highest CQI whose 10%-BLER threshold the SINR reaches (0: none)."""
    return np.searchsorted(CQI_SINR_DB, np.asarray(sinr_db, dtype=np.float64), side="right")


def mcs_from_cqi(cqi: npt.ArrayLike) -> IntArray:
    """The highest MCS whose efficiency does not exceed the CQI's (MCS 0 for CQI 1, the lowest;
    -1 for CQI 0: nothing is sent)."""
    return _CQI_TO_MCS.take(np.asarray(cqi, dtype=np.int64))


def bler(mcs: npt.ArrayLike, sinr_db: npt.ArrayLike) -> FloatArray:
    """Block error rate of one transmission at ``mcs`` and SINR [dB] (1 where mcs is -1)."""
    m = np.asarray(mcs, dtype=np.int64)
    g10 = MCS_SINR_DB[np.maximum(m, 0)]
    x = np.clip(BLER_SLOPE_PER_DB * (np.asarray(sinr_db, dtype=np.float64) - g10), -50, 50)
    return np.where(m >= 0, 1.0 / (1.0 + 9.0 * np.exp(x)), 1.0)


# HARQ outcomes are tabulated over SINR at this step [dB] (an error far below the curves').
_GRID_DB = (-40.0, 80.0, 0.02)


def harq(
    mcs: npt.ArrayLike, sinr_db: npt.ArrayLike, max_tx: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Chase-combining HARQ with up to ``max_tx`` transmissions: (residual loss, mean number of
    transmissions, variance of the number of transmissions), looked up in ``harq_table``."""
    lo, hi, step = _GRID_DB
    table, cols = _harq_table(max_tx)
    g = np.clip(np.asarray(sinr_db, dtype=np.float64), lo, hi)
    flat = np.rint((g - lo) / step).astype(np.int64)
    flat += (np.asarray(mcs, dtype=np.int64) + 1) * cols  # row 0: no MCS (nothing sent)
    out = table.take(flat, axis=0)  # one gather of the three figures, side by side
    return tuple(np.asarray(out[..., i], dtype=np.float64) for i in range(3))  # type: ignore[return-value]


@functools.cache
def _harq_table(max_tx: int) -> tuple[npt.NDArray[np.float32], int]:
    """The three figures of every (MCS, SINR) point: [rows x cols, 3] in float32 (small enough
    to stay in cache while millions of slots look it up), and the number of SINR columns."""
    lo, hi, step = _GRID_DB
    grid = np.arange(lo, hi + step / 2, step)
    mcs = np.arange(-1, MCS_TABLE.shape[0])[:, None]
    figures = harq_exact(mcs, grid[None, :], max_tx)
    return np.stack([f.ravel() for f in figures], axis=1).astype(np.float32), grid.size


def harq_exact(
    mcs: npt.ArrayLike, sinr_db: npt.ArrayLike, max_tx: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``harq`` computed directly (for the tables and the tests)."""
    m, sinr = np.broadcast_arrays(
        np.asarray(mcs, dtype=np.int64), np.asarray(sinr_db, dtype=np.float64)
    )
    g = 10.0 ** (sinr / 10.0)
    survive = np.ones_like(g)  # P(the first j transmissions all failed)
    mean_tx = np.zeros_like(g)
    second = np.zeros_like(g)
    for j in range(1, max_tx + 1):
        # Transmission j is made if the first j-1 failed; it fails at the combined SINR.
        mean_tx += survive
        second += survive * (2 * j - 1)  # E[N^2] = sum_j P(N >= j) (2j - 1)
        survive = survive * bler(m, 10.0 * np.log10(j * g + 1e-30))
    var = np.maximum(second - mean_tx**2, 0.0)
    return survive, mean_tx, var


def tbs_for(n_prb: int, mcs: npt.ArrayLike, *, symbols: int = 12) -> FloatArray:
    """``tbs_bits`` for one allocation size, by table look-up over the MCS."""
    table = tbs_bits(
        np.full(MCS_TABLE.shape[0] + 1, n_prb), np.arange(-1, MCS_TABLE.shape[0]), symbols=symbols
    )
    return table[np.asarray(mcs, dtype=np.int64) + 1]


def tbs_bits(n_prb: npt.ArrayLike, mcs: npt.ArrayLike, *, symbols: int = 12) -> FloatArray:
    """Transport block size [bits] for ``n_prb`` PRBs at ``mcs`` (TS 38.214 5.1.3.2), one layer,
    ``symbols`` data symbols per slot (14 less DMRS and control); 0 where nothing fits."""
    prb = np.asarray(n_prb, dtype=np.float64)
    m = np.asarray(mcs, dtype=np.int64)
    qm = MCS_TABLE[np.maximum(m, 0), 0]
    r = MCS_TABLE[np.maximum(m, 0), 1] / 1024.0
    n_re = min(156, 12 * symbols) * np.floor(prb)
    n_info = n_re * r * qm
    small = n_info <= 3824
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.maximum(3, np.floor(np.log2(np.maximum(n_info, 1.0))) - 6)
        small_info = np.maximum(24, 2**n * np.floor(n_info / 2**n))
        idx = np.minimum(np.searchsorted(_TBS_SMALL, small_info, side="left"), _TBS_SMALL.size - 1)
        tbs_small = _TBS_SMALL[idx].astype(np.float64)
        n2 = np.floor(np.log2(np.maximum(n_info - 24, 1.0))) - 5
        # round() of step 4 takes a tie to the next larger integer (np.round: to the even).
        big_info = np.maximum(3840, 2**n2 * np.floor((n_info - 24) / 2**n2 + 0.5))
        c_low = np.ceil((big_info + 24) / 3816)
        c_high = np.ceil((big_info + 24) / 8424)
        tbs_low = 8 * c_low * np.ceil((big_info + 24) / (8 * c_low)) - 24
        tbs_mid = 8 * c_high * np.ceil((big_info + 24) / (8 * c_high)) - 24
        tbs_high = 8 * np.ceil((big_info + 24) / 8) - 24
    big = np.where(r <= 0.25, tbs_low, np.where(big_info > 8424, tbs_mid, tbs_high))
    out = np.where(small, tbs_small, big)
    return np.where((m >= 0) & (n_info > 0), out, 0.0)


def shannon_bits(bandwidth_hz: npt.ArrayLike, sinr_db: npt.ArrayLike, slot_s: float) -> FloatArray:
    """Bits per slot at the Shannon capacity of the allocated bandwidth (the simple mode)."""
    g = 10.0 ** (np.asarray(sinr_db, dtype=np.float64) / 10.0)
    return np.asarray(bandwidth_hz, dtype=np.float64) * np.log2(1.0 + g) * slot_s


def thermal_noise_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """kTB at 290 K plus the receiver's noise figure [dBm]."""
    return -174.0 + 10.0 * math.log10(bandwidth_hz) + noise_figure_db
