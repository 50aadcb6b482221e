"""TR 38.901's large-scale calibration: the layout and parameters of Table 7.8-1 at 6 GHz,
and the coupling-loss and geometry CDFs 3GPP's companies published for it.

Layer: pure (data only). ``scripts/bench_channel.py`` compares draftnet's CDFs with these, and
a test holds them within the companies' spread.

Table 7.8-1 (UMa and UMi at 6 GHz): 19 sites x 3 sectors with wrap-around, 20 MHz, a column
of 10 elements 0.5 wavelengths apart tilted to zenith 102 degrees (one port), UE noise figure
9 dB, 80% of users indoors (half behind high-loss walls, on floors of 4- to 8-storey
buildings), no fast fading; UMa: ISD 500 m, BS 25 m and 49 dBm, users at least 35 m away;
UMi: ISD 200 m, BS 10 m and 44 dBm, at least 10 m.
"""

from __future__ import annotations

from channel_models.config import RadioConfig

__all__ = ["PERCENTILES", "REFERENCE", "calibration_config"]

_COMMON = {
    "sites": 19, "sectors": 3, "carrier_hz": 6e9, "bandwidth_hz": 20e6, "antenna_rows": 10,
    "antenna_spacing_wl": 0.5, "downtilt_deg": 12.0, "ue_noise_figure_db": 9.0,
    "indoor_ratio": 0.8, "o2i_high_loss_ratio": 0.5, "fading": "none", "ue_gain_dbi": 0.0,
    "bs_gain_dbi": 8.0,
}  # fmt: skip
_OWN = {
    "uma": {"isd_m": 500.0, "h_bs_m": 25.0, "bs_power_dbm": 49.0, "min_distance_m": 35.0},
    "umi": {"isd_m": 200.0, "h_bs_m": 10.0, "bs_power_dbm": 44.0, "min_distance_m": 10.0},
}
PERCENTILES = (5, 10, 50, 90, 95)
# The mean over the companies' curves in 3GPP R1-165974 (the TR 38.900 v14.0.0 calibration),
# at the percentiles above, as compiled in QuaDRiGa (tutorials/calib_3GPP_ref_data.m) and in
# NVIDIA Aerial (testBenches/chanModels/util/3gpp_calibration_phase1.json): coupling gain (the
# negative of the coupling loss) and geometry SINR with noise, in dB. The companies spread
# about +-2 to 3 dB around the coupling-loss mean and +-1 dB around the geometry's.
REFERENCE = {
    "uma": {
        "coupling": (-150.3, -144.7, -120.3, -93.7, -86.1),
        "geometry": (-9.4, -4.6, 5.8, 21.7, 24.7),
    },
    "umi": {
        "coupling": (-142.3, -136.4, -112.3, -82.1, -74.8),
        "geometry": (-7.0, -3.2, 5.5, 20.7, 23.9),
    },
}


def calibration_config(scenario: str) -> RadioConfig:
    """Table 7.8-1's radio for ``scenario`` (uma or umi)."""
    return RadioConfig(scenario=scenario, **_COMMON, **_OWN[scenario])  # type: ignore[arg-type]
