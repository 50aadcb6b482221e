"""Large-scale propagation of 3GPP TR 38.901 (V17): path loss (Table 7.4.1-1), LOS probability
(Table 7.4.2-1), shadow fading spread and decorrelation distances (Tables 7.4.1-1, 7.5-6), and
the mean Rician K factor of LOS users (Table 7.5-6).

Layer: pure (numpy; no I/O). Every function is vectorised over distances and takes the carrier
in Hz and heights in metres. ``Scenario.check`` raises ConfigError for inputs outside the
validity range the standard gives for that scenario; the functions themselves do not clip.

Scenarios: ``umi`` (UMi street canyon), ``uma``, ``rma`` and ``inh`` (InH office, mixed office
for the LOS probability). Heights: ``h_bs_m`` of the base station, ``h_ut_m`` of the user.
UMa and UMi take the effective environment height h_E = 1 m for the breakpoint distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = [
    "INDOOR_DEPTH_M",
    "SCENARIOS",
    "Scenario",
    "indoor_heights",
    "los_probability",
    "o2i_loss_db",
    "path_loss_db",
    "shadowing_std_db",
]

FloatArray = npt.NDArray[np.float64]
Height = FloatArray | float  # a user's height: one for all, or each user's (broadcasting)
C_M_S = 299_792_458.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """One 38.901 scenario: its validity ranges and shadowing parameters."""

    name: str
    freq_ghz: tuple[float, float]
    h_bs_m: tuple[float, float]
    h_ut_m: tuple[float, float]
    d2d_m: tuple[float, float]
    sf_std_db: tuple[float, float]  # LOS, NLOS (RMa LOS: up to the breakpoint; see below)
    sf_corr_m: tuple[float, float]  # shadowing decorrelation distance, LOS, NLOS
    los_corr_m: float  # LOS state decorrelation distance (7.6.3.3)
    default_h_bs_m: float
    k_factor_db: float  # the mean K of a LOS user (Table 7.5-6: mu_K)

    def check(self, *, freq_hz: float, h_bs_m: float, h_ut_m: float, d2d_m: FloatArray) -> None:
        """ConfigError naming the first input outside this scenario's validity range."""
        f = freq_hz / 1e9
        for field, value, (lo, hi), unit in (
            ("radio.carrier_hz", f, self.freq_ghz, "GHz"),
            ("radio.h_bs_m", h_bs_m, self.h_bs_m, "m"),
            ("radio.h_ut_m", h_ut_m, self.h_ut_m, "m"),
        ):
            if not lo <= value <= hi:
                shown = f"{value * 1e9:g}" if unit == "GHz" else f"{value:g}"
                raise ConfigError(
                    f"{field} must be in [{lo:g}, {hi:g}] {unit} for TR 38.901 {self.name}, "
                    f"got {shown}" + (" Hz" if unit == "GHz" else "")
                )
        d = np.asarray(d2d_m, dtype=np.float64)
        lo, hi = self.d2d_m
        if d.size and (d.min() < lo or d.max() > hi):
            bad = d.min() if d.min() < lo else d.max()
            raise ConfigError(
                f"user distance must be in [{lo:g}, {hi:g}] m for TR 38.901 {self.name}, "
                f"got {bad:.1f} m (radio.min_distance_m, radio.cell_radius_m, mobility)"
            )


SCENARIOS = {
    "umi": Scenario(
        name="UMi street canyon",
        freq_ghz=(0.5, 100.0),
        h_bs_m=(10.0, 10.0),
        h_ut_m=(1.5, 22.5),
        d2d_m=(10.0, 5000.0),
        sf_std_db=(4.0, 7.82),
        sf_corr_m=(10.0, 13.0),
        los_corr_m=50.0,
        default_h_bs_m=10.0,
        k_factor_db=9.0,
    ),
    "uma": Scenario(
        name="UMa",
        freq_ghz=(0.5, 100.0),
        h_bs_m=(25.0, 25.0),
        h_ut_m=(1.5, 22.5),
        d2d_m=(10.0, 5000.0),
        sf_std_db=(4.0, 6.0),
        sf_corr_m=(37.0, 50.0),
        los_corr_m=50.0,
        default_h_bs_m=25.0,
        k_factor_db=9.0,
    ),
    "rma": Scenario(
        name="RMa",
        freq_ghz=(0.5, 30.0),
        h_bs_m=(10.0, 150.0),
        h_ut_m=(1.0, 10.0),
        d2d_m=(10.0, 5000.0),  # NLOS bound; LOS reaches 10 km
        sf_std_db=(4.0, 8.0),
        sf_corr_m=(37.0, 120.0),
        los_corr_m=60.0,
        default_h_bs_m=35.0,
        k_factor_db=7.0,
    ),
    "inh": Scenario(
        name="InH office",
        freq_ghz=(0.5, 100.0),
        h_bs_m=(3.0, 3.0),
        h_ut_m=(1.0, 3.0),
        d2d_m=(1.0, 150.0),
        sf_std_db=(3.0, 8.03),
        sf_corr_m=(10.0, 6.0),
        los_corr_m=10.0,
        default_h_bs_m=3.0,
        k_factor_db=7.0,
    ),
}

# RMa's fixed environment (the standard's defaults): street width, average building height.
RMA_W_M = 20.0
RMA_H_M = 5.0


def _log(x: npt.ArrayLike) -> FloatArray:
    return np.log10(np.asarray(x, dtype=np.float64))


def _breakpoint_urban(freq_hz: float, h_bs_m: float, h_ut_m: Height) -> Height:
    return 4.0 * (h_bs_m - 1.0) * (h_ut_m - 1.0) * freq_hz / C_M_S


def _uma_los(d2: FloatArray, d3: FloatArray, f: float, hb: float, hu: Height) -> FloatArray:
    fg = f / 1e9
    bp = _breakpoint_urban(f, hb, hu)
    pl1 = 28.0 + 22.0 * _log(d3) + 20.0 * math.log10(fg)
    pl2 = 28.0 + 40.0 * _log(d3) + 20.0 * math.log10(fg) - 9.0 * _log(bp**2 + (hb - hu) ** 2)
    return np.where(d2 <= bp, pl1, pl2)


def _umi_los(d2: FloatArray, d3: FloatArray, f: float, hb: float, hu: Height) -> FloatArray:
    fg = f / 1e9
    bp = _breakpoint_urban(f, hb, hu)
    pl1 = 32.4 + 21.0 * _log(d3) + 20.0 * math.log10(fg)
    pl2 = 32.4 + 40.0 * _log(d3) + 20.0 * math.log10(fg) - 9.5 * _log(bp**2 + (hb - hu) ** 2)
    return np.where(d2 <= bp, pl1, pl2)


def _breakpoint_rma(freq_hz: float, h_bs_m: float, h_ut_m: Height) -> Height:
    """d_BP = 2 pi h_BS h_UT f_c / c (Table 7.4.1-1, note 5)."""
    return 2.0 * math.pi * h_bs_m * h_ut_m * freq_hz / C_M_S


def _rma_los(d2: FloatArray, d3: FloatArray, f: float, hb: float, hu: Height) -> FloatArray:
    fg, h = f / 1e9, RMA_H_M
    bp = _breakpoint_rma(f, hb, hu)

    def pl1(d: FloatArray | float) -> FloatArray:
        return np.asarray(
            20.0 * _log(40.0 * math.pi * np.asarray(d) * fg / 3.0)
            + min(0.03 * h**1.72, 10.0) * _log(d)
            - min(0.044 * h**1.72, 14.77)
            + 0.002 * math.log10(h) * np.asarray(d)
        )

    d3_bp = np.hypot(bp, hb - hu)
    return np.where(d2 <= bp, pl1(d3), pl1(d3_bp) + 40.0 * _log(d3 / bp))


def path_loss_db(
    scenario: str,
    los: npt.ArrayLike,
    d2d_m: npt.ArrayLike,
    *,
    freq_hz: float,
    h_bs_m: float,
    h_ut_m: Height,
) -> FloatArray:
    """Path loss [dB] at 2D distances ``d2d_m`` [m], LOS where ``los`` is true (no shadowing)."""
    d2 = np.asarray(d2d_m, dtype=np.float64)
    is_los = np.asarray(los, dtype=bool)
    d3 = np.sqrt(d2**2 + (h_bs_m - h_ut_m) ** 2)
    f, fg, hb, hu = freq_hz, freq_hz / 1e9, h_bs_m, h_ut_m
    if scenario == "umi":
        pl_los = _umi_los(d2, d3, f, hb, hu)
        nlos = 35.3 * _log(d3) + 22.4 + 21.3 * math.log10(fg) - 0.3 * (hu - 1.5)
    elif scenario == "uma":
        pl_los = _uma_los(d2, d3, f, hb, hu)
        nlos = 13.54 + 39.08 * _log(d3) + 20.0 * math.log10(fg) - 0.6 * (hu - 1.5)
    elif scenario == "rma":
        pl_los = _rma_los(d2, d3, f, hb, hu)
        W, h = RMA_W_M, RMA_H_M
        nlos = (
            161.04
            - 7.1 * math.log10(W)
            + 7.5 * math.log10(h)
            - (24.37 - 3.7 * (h / hb) ** 2) * math.log10(hb)
            + (43.42 - 3.1 * math.log10(hb)) * (_log(d3) - 3.0)
            + 20.0 * math.log10(fg)
            - (3.2 * _log(11.75 * hu) ** 2 - 4.97)
        )
    elif scenario == "inh":
        pl_los = 32.4 + 17.3 * _log(d3) + 20.0 * math.log10(fg)
        nlos = 38.3 * _log(d3) + 17.30 + 24.9 * math.log10(fg)
    else:
        raise ConfigError(f"radio.scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    return np.where(is_los, pl_los, np.maximum(pl_los, nlos))


def shadowing_std_db(
    scenario: str,
    los: npt.ArrayLike,
    d2d_m: npt.ArrayLike,
    *,
    freq_hz: float,
    h_bs_m: float,
    h_ut_m: Height,
) -> FloatArray:
    """The shadow fading's standard deviation [dB] (Table 7.4.1-1): the scenario's LOS or NLOS
    value; RMa LOS is 4 dB up to the breakpoint distance and 6 dB beyond it."""
    sc = SCENARIOS[scenario]
    d2 = np.asarray(d2d_m, dtype=np.float64)
    los_db: FloatArray | float = sc.sf_std_db[0]
    if scenario == "rma":
        los_db = np.where(d2 <= _breakpoint_rma(freq_hz, h_bs_m, h_ut_m), 4.0, 6.0)
    return np.asarray(np.where(np.asarray(los, dtype=bool), los_db, sc.sf_std_db[1]), np.float64)


def los_probability(scenario: str, d2d_m: npt.ArrayLike, *, h_ut_m: Height = 1.5) -> FloatArray:
    """Probability of line of sight at 2D distance ``d2d_m`` [m] (Table 7.4.2-1)."""
    d = np.maximum(np.asarray(d2d_m, dtype=np.float64), 1e-9)
    if scenario == "umi":
        return np.where(d <= 18.0, 1.0, 18.0 / d + np.exp(-d / 36.0) * (1.0 - 18.0 / d))
    if scenario == "uma":
        c = (np.maximum(np.asarray(h_ut_m) - 13.0, 0.0) / 10.0) ** 1.5  # 0 up to 13 m
        base = 18.0 / d + np.exp(-d / 63.0) * (1.0 - 18.0 / d)
        p = base * (1.0 + c * 1.25 * (d / 100.0) ** 3 * np.exp(-d / 150.0))
        return np.where(d <= 18.0, 1.0, p)
    if scenario == "rma":
        return np.where(d <= 10.0, 1.0, np.exp(-(d - 10.0) / 1000.0))
    if scenario == "inh":  # mixed office
        return np.where(
            d <= 1.2,
            1.0,
            np.where(d < 6.5, np.exp(-(d - 1.2) / 4.7), 0.32 * np.exp(-(d - 6.5) / 32.6)),
        )
    raise ConfigError(f"radio.scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")


def indoor_heights(users: int, h_ut_m: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Indoor users' heights in UMa and UMi (TR 38.901 Table 7.2-1, h_UT):
    3 (n_fl - 1) + ``h_ut_m`` with the floor n_fl uniform in 1..N_fl, N_fl uniform in 4..8."""
    floors = rng.integers(4, 9, size=users)
    n_fl = np.floor(rng.random(users) * floors) + 1.0
    return np.asarray(3.0 * (n_fl - 1.0) + h_ut_m, dtype=np.float64)


# TR 38.901 7.4.3.1: an indoor user's distance from the wall is the smaller of two draws uniform
# over [0, this]: 25 m in UMa and UMi, 10 m in RMa.
INDOOR_DEPTH_M = {"uma": 25.0, "umi": 25.0, "rma": 10.0}


def o2i_loss_db(
    freq_hz: float, high_loss: npt.ArrayLike, d_in_m: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Building penetration of an indoor user (TR 38.901 7.4.3.1, Tables 7.4.3-1 and 7.4.3-2):
    the mean loss PL_tw + PL_in [dB] and the standard deviation sigma_P [dB] of its spread, for
    the low-loss (standard glass, 30%, and concrete) or high-loss (IRR glass, 70%, and
    concrete) model, ``d_in_m`` from the wall (PL_in = 0.5 d_2D-in)."""
    f = freq_hz / 1e9
    glass, irr_glass, concrete = 2.0 + 0.2 * f, 23.0 + 0.3 * f, 5.0 + 4.0 * f

    def wall(parts: tuple[tuple[float, float], ...]) -> float:
        return 5.0 - 10.0 * math.log10(sum(w * 10.0 ** (-db / 10.0) for w, db in parts))

    low = wall(((0.3, glass), (0.7, concrete)))
    high = wall(((0.7, irr_glass), (0.3, concrete)))
    is_high = np.asarray(high_loss, dtype=bool)
    mean = np.where(is_high, high, low) + 0.5 * np.asarray(d_in_m, dtype=np.float64)
    return np.asarray(mean, np.float64), np.asarray(np.where(is_high, 6.5, 4.4), np.float64)
