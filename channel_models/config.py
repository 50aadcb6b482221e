"""The radio section of a scenario: cell layout, carrier, powers, link, scheduler, mobility.

Layer: pure (data only). Every field has a default: a single UMi street-canyon cell at 3.5 GHz,
20 MHz at 30 kHz subcarriers, users placed at random 10-150 m from the site. Validated on
construction: ConfigError naming the field, the value and the rule. The 38.901 validity ranges
(frequency, heights, distances per scenario) are checked by ``pathloss.Scenario.check`` when a
trace is generated, because they depend on several fields at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from channel_models.fading import FADING_KINDS
from channel_models.handover import (
    A3_OFFSET_RANGE_DB,
    FILTER_COEFFICIENTS,
    HYSTERESIS_RANGE_DB,
    TIME_TO_TRIGGER_MS,
)
from channel_models.layout import SITE_COUNTS
from channel_models.mobility import MOBILITY
from channel_models.pathloss import INDOOR_DEPTH_M, SCENARIOS
from channel_models.scheduler import SCHEDULERS
from channel_models.uplink import ALPHAS, P0_RANGE_DBM
from emu.errors import ConfigError

__all__ = ["RadioConfig"]

LINKS = ("nr", "shannon")


def _range(name: str, value: float, lo: float, hi: float, rule: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"radio.{name} must be {rule}, got {value!r}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"radio.{name} must be one of {', '.join(options)}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RadioConfig:
    scenario: str = "umi"  # umi | uma | rma | inh (TR 38.901)
    carrier_hz: float = 3.5e9
    bandwidth_hz: float = 20e6  # the cell's carrier, shared by its users
    numerology: int = 1  # subcarrier spacing 15 * 2^mu kHz, slot 1 / 2^mu ms
    sites: int = 1  # 1 to 7 (a site and its ring of six) or 19 (two rings) (``layout``)
    sectors: int = 1  # cells a site: 1 (omnidirectional) or 3 (TR 38.901 sector antennas)
    wrap_around: bool = True  # 7 and 19 sites: edge cells see interference as inner ones do
    isd_m: float = 200.0  # inter-site distance
    cell_radius_m: float = 150.0  # one sector a site: users are placed (and move) within this
    # of their site (three sectors: within their sector of the site's hexagon, and move over
    # the whole layout)
    min_distance_m: float = 10.0
    h_bs_m: float = 0.0  # 0: the scenario's standard height
    h_ut_m: float = 1.5
    indoor_ratio: float = 0.0  # users inside buildings (TR 38.901 7.4.3: O2I penetration)
    o2i_high_loss_ratio: float | None = None  # ... of them behind the high-loss model's
    # walls; None: the standard's (half in UMa and UMi; none in RMa)
    bs_power_dbm: float = 44.0
    ue_power_dbm: float = 23.0
    bs_gain_dbi: float = 8.0  # an omnidirectional cell's gain; a sector's element's peak
    # (G_E,max; the column adds 10 log10(antenna_rows) on its beam)
    antenna_rows: int = 10  # sectors: elements in the panel's column, fed as one port
    antenna_spacing_wl: float = 0.5  # ... their spacing in wavelengths
    downtilt_deg: float = 12.0  # sectors: the beam's tilt below the horizon (zenith 102 deg)
    ue_gain_dbi: float = 0.0
    bs_noise_figure_db: float = 5.0
    ue_noise_figure_db: float = 9.0
    ul_iot_db: float = 0.0  # one cell: uplink interference over thermal from outside the layout
    ul_p0_dbm: float = -80.0  # uplink power control (TS 38.213 7.1.1): P_O_PUSCH ...
    ul_alpha: float = 0.8  # ... and the path loss's weight (TS 38.331: 0, 0.4, 0.5, ..., 1)
    max_sinr_db: float = 30.0  # what transceiver impairments (EVM) let any link reach
    link: str = "nr"  # nr (CQI, MCS, TBS, BLER, HARQ) | shannon
    shannon_efficiency: float = 0.6  # shannon: the share of capacity achieved
    scheduler: str = "pf"  # rr | pf | minmax
    pf_tc_ms: float = 100.0  # proportional fair's averaging time constant
    payload_up_bytes: int = 256  # minmax: what each user uploads per round (a draft)
    payload_down_bytes: int = 64  # minmax: what each user receives per round (a verdict)
    cqi_delay_ms: float = 5.0  # link adaptation acts on a report this old
    harq_max_tx: int = 4  # transmissions of a block before it is lost
    harq_rtt_ms: float = 4.0  # added delay per retransmission
    sr_period_ms: float = 5.0  # uplink: scheduling-request period
    grant_delay_ms: float = 2.0  # uplink: request to grant
    core_delay_ms: float = 2.0  # one way: processing and the path from the cell to the edge
    mobility: str = "static"  # static | linear | waypoint
    speed_mps: float = 1.0  # linear and waypoint
    pause_s: float = 2.0  # waypoint
    fading: str = (
        "auto"  # auto (Rician in LOS, Rayleigh in NLOS) | rayleigh | rician | block | none
    )
    k_factor_db: float | None = None  # Rician K of LOS users; None: the scenario's mean
    # (TR 38.901 Table 7.5-6: 9 dB in UMi and UMa, 7 dB in RMa and InH)
    block_ms: float = 10.0  # block fading: coherence block
    tick_ms: float = 10.0  # link-state resolution
    handover: bool = True  # A3 handover (``handover``); false: each user keeps its first cell
    ho_offset_db: float = 3.0  # a3-Offset (TS 38.331: -15 ... 15 dB in 0.5 dB steps)
    ho_hysteresis_db: float = 1.0  # Hysteresis (0 ... 15 dB in 0.5 dB steps)
    ho_ttt_ms: float = 160.0  # TimeToTrigger (one of TS 38.331's values)
    ho_filter_k: int = 4  # the layer-3 filter's coefficient (FilterCoefficient)
    ho_interruption_ms: float = 30.0  # no link while the user moves to its new cell

    @property
    def cells(self) -> int:
        return self.sites * self.sectors

    @property
    def high_loss_share(self) -> float:
        """Indoor users behind high-loss walls: ``o2i_high_loss_ratio``, or the standard's."""
        if self.o2i_high_loss_ratio is not None:
            return float(self.o2i_high_loss_ratio)
        return 0.0 if self.scenario == "rma" else 0.5

    def __post_init__(self) -> None:
        _choice("scenario", self.scenario, tuple(SCENARIOS))
        _choice("link", self.link, LINKS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("mobility", self.mobility, MOBILITY)
        _choice("fading", self.fading, FADING_KINDS)
        _range("carrier_hz", self.carrier_hz, 1e6, 1e12, "> 0 Hz")
        _range("bandwidth_hz", self.bandwidth_hz, 1e3, 1e10, "> 0 Hz")
        _range("numerology", self.numerology, 0, 2, "0, 1 or 2")
        if type(self.sites) is not int or self.sites not in SITE_COUNTS:
            raise ConfigError(
                f"radio.sites must be one of {', '.join(map(str, SITE_COUNTS))}, got {self.sites!r}"
            )
        if type(self.sectors) is not int or self.sectors not in (1, 3):
            raise ConfigError(f"radio.sectors must be 1 or 3, got {self.sectors!r}")
        if not isinstance(self.wrap_around, bool):
            raise ConfigError(f"radio.wrap_around must be true or false, got {self.wrap_around!r}")
        _range("indoor_ratio", self.indoor_ratio, 0, 1, "in [0, 1]")
        if self.o2i_high_loss_ratio is not None:
            _range("o2i_high_loss_ratio", self.o2i_high_loss_ratio, 0, 1, "in [0, 1]")
            if self.scenario == "rma" and self.o2i_high_loss_ratio > 0:
                raise ConfigError(
                    f"radio.o2i_high_loss_ratio must be 0 (or unset) for radio.scenario = 'rma' "
                    f"(TR 38.901 7.4.3.1: rural buildings have the low-loss model only), "
                    f"got {self.o2i_high_loss_ratio!r}"
                )
        top = SCENARIOS[self.scenario].h_ut_m[1]
        indoors_high = self.indoor_ratio and self.scenario in ("uma", "umi")
        if indoors_high and isinstance(self.h_ut_m, int | float) and self.h_ut_m + 21 > top:
            raise ConfigError(
                f"radio.h_ut_m must be at most {top - 21:g} m with indoor users in "
                f"{self.scenario} (they stand on floors up to 21 m above it, and TR 38.901 "
                f"ends at {top:g} m), got {self.h_ut_m!r}"
            )
        if self.indoor_ratio and self.scenario not in INDOOR_DEPTH_M:
            raise ConfigError(
                f"radio.indoor_ratio must be 0 for radio.scenario = {self.scenario!r} (every "
                f"user is indoors already; TR 38.901 O2I is for "
                f"{', '.join(INDOOR_DEPTH_M)}), got {self.indoor_ratio!r}"
            )
        _range("antenna_rows", self.antenna_rows, 1, 64, "an integer in [1, 64]")
        if not float(self.antenna_rows).is_integer():
            raise ConfigError(f"radio.antenna_rows must be an integer, got {self.antenna_rows!r}")
        _range("antenna_spacing_wl", self.antenna_spacing_wl, 0.1, 4, "in [0.1, 4] wavelengths")
        _range(
            "downtilt_deg", self.downtilt_deg, -90, 90,
            "in [-90, 90] degrees (TR 38.901 7.1.3: the tilt beta)",
        )  # fmt: skip
        if not isinstance(self.handover, bool):
            raise ConfigError(f"radio.handover must be true or false, got {self.handover!r}")
        for name, (lo, hi) in (
            ("ho_offset_db", A3_OFFSET_RANGE_DB),
            ("ho_hysteresis_db", HYSTERESIS_RANGE_DB),
        ):
            v = getattr(self, name)
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if not (number and lo <= v <= hi and float(2 * v).is_integer()):
                raise ConfigError(
                    f"radio.{name} must be in [{lo:g}, {hi:g}] dB in 0.5 dB steps (TS 38.331), "
                    f"got {v!r}"
                )
        if isinstance(self.ho_ttt_ms, bool) or self.ho_ttt_ms not in TIME_TO_TRIGGER_MS:
            raise ConfigError(
                f"radio.ho_ttt_ms must be one of TS 38.331's TimeToTrigger values "
                f"({', '.join(map(str, TIME_TO_TRIGGER_MS))} ms), got {self.ho_ttt_ms!r}"
            )
        if type(self.ho_filter_k) is not int or self.ho_filter_k not in FILTER_COEFFICIENTS:
            raise ConfigError(
                f"radio.ho_filter_k must be one of TS 38.331's FilterCoefficient values "
                f"({', '.join(map(str, FILTER_COEFFICIENTS))}), got {self.ho_filter_k!r}"
            )
        _range("ho_interruption_ms", self.ho_interruption_ms, 0, 1000, "in [0, 1000] ms")
        _range("isd_m", self.isd_m, 1, 1e5, "in [1, 1e5] m")
        _range("cell_radius_m", self.cell_radius_m, 1, 1e5, "in [1, 1e5] m")
        if self.sectors == 1:  # users within cell_radius_m of their site
            _range(
                "min_distance_m", self.min_distance_m, 0, self.cell_radius_m,
                "in [0, cell_radius_m]",
            )  # fmt: skip
        else:  # users within their sector of the site's hexagon
            _range("min_distance_m", self.min_distance_m, 0, 1e5, "in [0, 1e5] m")
        if self.sectors == 3 and self.min_distance_m >= self.isd_m / 2:
            raise ConfigError(
                f"radio.min_distance_m must be below half of radio.isd_m ({self.isd_m / 2:g} m, "
                f"the edge of a site's hexagon) for users to fit in a sector, "
                f"got {self.min_distance_m!r}"
            )
        _range("h_bs_m", self.h_bs_m, 0, 1000, "in [0, 1000] m (0: the standard's)")
        _range("h_ut_m", self.h_ut_m, 0.1, 1000, "in (0, 1000] m")
        for name in ("bs_power_dbm", "ue_power_dbm"):
            # Maximum transmit powers: below 0 dBm (1 mW) is no cellular transmitter.
            _range(name, getattr(self, name), 0, 80, "in [0, 80] dBm")
        for name in ("bs_gain_dbi", "ue_gain_dbi"):
            _range(name, getattr(self, name), -30, 50, "in [-30, 50] dBi")
        for name in ("bs_noise_figure_db", "ue_noise_figure_db", "ul_iot_db"):
            _range(name, getattr(self, name), 0, 40, "in [0, 40] dB")
        _range("max_sinr_db", self.max_sinr_db, 0, 100, "in [0, 100] dB")
        lo, hi = P0_RANGE_DBM
        _range("ul_p0_dbm", self.ul_p0_dbm, lo, hi, f"in [{lo:g}, {hi:g}] dBm (TS 38.331)")
        if self.ul_alpha not in ALPHAS:
            raise ConfigError(
                f"radio.ul_alpha must be one of {', '.join(f'{a:g}' for a in ALPHAS)} "
                f"(TS 38.331 Alpha), got {self.ul_alpha!r}"
            )
        if self.cells > 1 and self.ul_iot_db:
            raise ConfigError(
                f"radio.ul_iot_db is computed with several cells (the other cells' users), so "
                f"it must be 0 with {self.cells} cells (radio.sites x radio.sectors), "
                f"got {self.ul_iot_db!r}"
            )
        _range("shannon_efficiency", self.shannon_efficiency, 0.01, 1, "in (0, 1]")
        _range("pf_tc_ms", self.pf_tc_ms, 0.1, 1e6, "> 0 ms")
        _range("payload_up_bytes", self.payload_up_bytes, 1, 1e9, ">= 1")
        _range("payload_down_bytes", self.payload_down_bytes, 1, 1e9, ">= 1")
        _range("harq_max_tx", self.harq_max_tx, 1, 32, "in [1, 32]")
        for name in (
            "cqi_delay_ms",
            "harq_rtt_ms",
            "sr_period_ms",
            "grant_delay_ms",
            "core_delay_ms",
        ):
            _range(name, getattr(self, name), 0, 1e4, "in [0, 1e4] ms")
        _range("speed_mps", self.speed_mps, 0, 200, "in [0, 200] m/s")
        _range("pause_s", self.pause_s, 0, 1e4, "in [0, 1e4] s")
        if self.k_factor_db is not None:
            _range("k_factor_db", self.k_factor_db, -50, 50, "in [-50, 50] dB")
        _range("block_ms", self.block_ms, 0.001, 1e5, "> 0 ms")
        _range("tick_ms", self.tick_ms, 1, 1e5, "an integer number of ms >= 1")
        if not float(self.tick_ms).is_integer():
            raise ConfigError(f"radio.tick_ms must be a whole number of ms, got {self.tick_ms!r}")
        if self.mobility != "static" and self.speed_mps <= 0:
            raise ConfigError(f"radio.speed_mps must be > 0 for {self.mobility} mobility, got 0")
