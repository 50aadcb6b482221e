"""The radio pipeline: users in cells to per-user, per-direction link-state time series.

Layer: pure (numpy; no I/O; a generator passed in).

layout and drops (``layout``) -> positions (mobility) -> per site: 38.901 path loss,
spatially consistent LOS state and correlated shadowing, indoor users' building penetration ->
per cell: antenna gain (sectors) -> coupling gain of every user to every cell (at the tick) ->
the serving cell from filtered RSRP (A3 handover, ``handover``) -> small-scale fading (at the
slot) -> SINR -> the cell's PRBs shared by the scheduler -> CQI (reported ``cqi_delay_ms``
earlier) -> MCS -> TBS, BLER, HARQ -> goodput, residual loss and delay per slot ->
``LinkSeries`` per tick, and goodput per millisecond for packet-delivery traces.

Modelling choices, each a simplification a user should know:
- Users are backlogged: the series is the rate a user gets when it has data.
- A user attaches to the cell with the strongest RSRP and hands over on the A3 event; while a
  handover interrupts its link it carries nothing (an outage in the series). Still users are
  computed at one instant (their large scale does not change).
- Each site's shadowing and LOS state are their own processes (sectors of a site share them).
- Uplink and downlink see the same fading (TDD reciprocity). The downlink's interference is
  every other cell's base station at full power (full load); the uplink's, with several
  cells, the users the other cells schedule in the same slot, at their own powers, each on
  its share of its cell's PRBs (``channel_models.uplink``; a PRB's chance of carrying a user
  is that user's share), and with one cell the margin ``ul_iot_db`` (interference from
  outside the layout). The scheduler plans the uplink with the interference it expects (the
  mean over the other cells' choices in the tick); the transport blocks meet the slot's own,
  and link adaptation picks the MCS from it as reported ``cqi_delay_ms`` earlier. A user in a
  handover's interruption has no rate for the scheduler and sends nothing.
- A user's uplink power follows open-loop fractional power control (TS 38.213 7.1.1:
  ``ul_p0_dbm``, ``ul_alpha``, capped at ``ue_power_dbm``; the loss it estimates is its
  coupling loss) on its share of the PRBs, so a smaller share has a higher SINR while the open
  loop asks for more than P_CMAX; the min-max split's shares are computed from rates at equal
  shares.
- Throughput is the share of a full-carrier transport block (TBS is near-linear in PRBs), so
  many users can share few PRBs over time, as a real scheduler does.
- Delay: ``core_delay_ms`` (processing and the path to the edge) + one slot + HARQ
  retransmissions (``harq_rtt_ms`` each) + for the uplink the scheduling-request wait
  (uniform over ``sr_period_ms``) and the grant (``grant_delay_ms``) + the wait for a PF turn.
  Jitter is the standard deviation of those terms. A tick with no goodput at all (outage) has
  a rate of 1 bit/s and a loss of 0.99.
- No link is better than the radios themselves: the SINR saturates at ``max_sinr_db`` (EVM and
  phase noise of real transceivers, about 30 dB), 1 / (1 / g + 1 / g_max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from channel_models import fading as fad
from channel_models import nr
from channel_models import uplink as ul
from channel_models.config import RadioConfig
from channel_models.handover import A3, serve
from channel_models.layout import Antenna, Layout, build, drop
from channel_models.link import LinkState
from channel_models.mobility import trajectories
from channel_models.pathloss import (
    C_M_S,
    INDOOR_DEPTH_M,
    SCENARIOS,
    indoor_heights,
    los_probability,
    o2i_loss_db,
    path_loss_db,
    shadowing_std_db,
)
from channel_models.scheduler import shares
from channel_models.shadowing import correlated_normal, los_state, per_state

__all__ = ["LinkSeries", "RadioTrace", "generate"]

FloatArray = npt.NDArray[np.float64]
STATIC_DOPPLER_SPEED_MPS = 0.3  # scatterers move around a still user (about 1 km/h)


@dataclass(frozen=True, slots=True)
class LinkSeries:
    """One direction of every user's link, per tick: arrays [users, ticks]."""

    tick_s: float
    rate_bps: FloatArray
    delay_ms: FloatArray
    jitter_ms: FloatArray
    loss: FloatArray
    # [users, milliseconds], for delivery traces (empty for a series read back from a file)
    goodput_bits_per_ms: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))

    def state(self, user: int, tick: int) -> LinkState:
        return LinkState(
            rate_bps=float(self.rate_bps[user, tick]),
            delay_ms=float(self.delay_ms[user, tick]),
            jitter_ms=float(self.jitter_ms[user, tick]),
            loss=float(self.loss[user, tick]),
        )

    def timeline(self, user: int) -> _Timeline:
        """``t -> LinkState`` for one user (the last tick holds after the end)."""
        return _Timeline(self, user)


@dataclass(frozen=True, slots=True)
class _Timeline:
    series: LinkSeries
    user: int

    def __call__(self, t_s: float) -> LinkState:
        k = min(max(int(t_s / self.series.tick_s), 0), self.series.rate_bps.shape[1] - 1)
        return self.series.state(self.user, k)


@dataclass(frozen=True, slots=True)
class RadioTrace:
    t_s: FloatArray  # tick start times [ticks]
    up: LinkSeries
    down: LinkSeries
    cell: npt.NDArray[np.int64]  # serving cell [users, ticks]
    distance_m: FloatArray  # 2D distance to the serving site [users, ticks]
    los: npt.NDArray[np.bool_]  # [users, ticks]
    sinr_up_db: FloatArray  # mean per tick [users, ticks]
    sinr_down_db: FloatArray
    handovers: npt.NDArray[np.int64]  # per user
    coupling_loss_db: FloatArray  # to the serving cell, shadowing and antennas [users, ticks]
    geometry_db: FloatArray  # downlink SINR before fading and impairments [users, ticks]


@dataclass(frozen=True, slots=True)
class _LargeScale:
    """Per user and cell (or site), per tick: the last axis is one tick for still users."""

    distance_m: FloatArray  # [users, sites, ticks'], 2D, to each site's nearest copy
    los: npt.NDArray[np.bool_]  # [users, sites, ticks']
    coupling_db: FloatArray  # gain (negative) [users, cells, ticks']


def _db(x: FloatArray) -> FloatArray:
    return 10.0 * np.log10(np.maximum(x, 1e-30))


def _large_scale(
    cfg: RadioConfig,
    lay: Layout,
    users: int,
    *,
    ticks: int,
    tick_s: float,
    rng: np.random.Generator,
) -> _LargeScale:
    """Drops, mobility, 38.901 path loss with spatially consistent LOS and shadowing per site,
    and each cell's antenna gain: the coupling gain of every user to every cell."""
    sc = SCENARIOS[cfg.scenario]
    h_bs = cfg.h_bs_m or sc.default_h_bs_m
    start, home = drop(lay, users, rng, min_m=cfg.min_distance_m, radius_m=cfg.cell_radius_m)
    if lay.sectorised:  # anywhere in the layout
        pos = trajectories(
            cfg.mobility, start, ticks, tick_s, rng,
            speed_mps=cfg.speed_mps, pause_s=cfg.pause_s, r_min=0.0, r_max=lay.extent_m,
        )  # fmt: skip
    else:  # within the disc around one's own site
        at = lay.sites[lay.cell_site[home]]
        pos = trajectories(
            cfg.mobility, start - at, ticks, tick_s, rng, speed_mps=cfg.speed_mps,
            pause_s=cfg.pause_s, r_min=cfg.min_distance_m, r_max=cfg.cell_radius_m,
        ) + at[:, None, :]  # fmt: skip
    still = cfg.mobility == "static" or cfg.speed_mps == 0
    where = pos[:, :1] if still else pos
    off = np.moveaxis(lay.offsets(where), 2, 1)  # [users, sites, ticks', 2]
    d = np.clip(np.hypot(off[..., 0], off[..., 1]), sc.d2d_m[0], sc.d2d_m[1])
    sites = lay.sites.shape[0]
    # Indoor users (TR 38.901 7.4.3): LOS and path loss outside the building, then the wall
    # and the way in (one building each: the same toward every site); in UMa and UMi on a
    # floor of it.
    indoor = rng.random(users) < cfg.indoor_ratio
    h_ut: FloatArray | float = cfg.h_ut_m
    if indoor.any() and cfg.scenario in ("uma", "umi"):
        floor = indoor_heights(users, cfg.h_ut_m, rng)
        h_ut = np.where(indoor, floor, cfg.h_ut_m)[:, None, None]
    pl_kw: dict[str, Any] = {"freq_hz": cfg.carrier_hz, "h_bs_m": h_bs, "h_ut_m": h_ut}
    depth = INDOOR_DEPTH_M.get(cfg.scenario, 0.0)
    d_in = np.where(indoor, rng.uniform(0.0, depth, (2, users)).min(axis=0), 0.0)
    o2i_mean, o2i_std = o2i_loss_db(cfg.carrier_hz, rng.random(users) < cfg.high_loss_share, d_in)
    o2i = np.where(indoor, o2i_mean + o2i_std * rng.standard_normal(users), 0.0)[:, None, None]
    d_out = np.maximum(d - d_in[:, None, None], 0.0)
    p_los = los_probability(cfg.scenario, d_out, h_ut_m=h_ut)
    los = los_state(correlated_normal(where, sc.los_corr_m, rng, copies=sites), p_los)
    sigma = shadowing_std_db(cfg.scenario, los, d, **pl_kw)
    z_sf = per_state(where, los, sc.sf_corr_m, rng)  # each state its decorrelation distance
    pl = path_loss_db(cfg.scenario, los, d, **pl_kw) + sigma * z_sf + o2i
    of = lay.cell_site
    gain: FloatArray | float = cfg.bs_gain_dbi
    if lay.sectorised:
        zenith = 90.0 + np.degrees(np.arctan2(h_bs - h_ut, d[:, of]))
        azimuth = np.degrees(np.arctan2(off[..., 1], off[..., 0]))[:, of]
        antenna = Antenna(
            cfg.antenna_rows, cfg.antenna_spacing_wl, cfg.downtilt_deg, cfg.bs_gain_dbi
        )
        gain = antenna.gain_dbi(zenith, azimuth - lay.boresight_deg[None, :, None])
    return _LargeScale(d, los, gain + cfg.ue_gain_dbi - pl[:, of])


def _at_serving(x: FloatArray, serving: npt.NDArray[np.int64]) -> FloatArray:
    """``x`` [users, cells, ticks'] at each user's serving cell [users, ticks']."""
    rows = np.arange(x.shape[0])[:, None]
    return np.asarray(x[rows, serving, np.arange(x.shape[2])[None, :]])


@dataclass(frozen=True, slots=True, kw_only=True)
class _Interference:
    """The uplink's interference over thermal [dB] at each user's cell: ``expected`` per tick
    (what the scheduler and link adaptation plan with) and ``realised`` per slot, from the
    users the other cells schedule in that slot (with one cell: the fixed margin)."""

    expected: FloatArray | float
    loss_db: FloatArray | None = None  # [users, cells, ticks']
    serving: npt.NDArray[np.int64] | None = None  # [users, ticks']
    per_prb_dbm: FloatArray | None = None  # [users, ticks']
    noise_prb_dbm: float = 0.0

    def realised(self, occupancy: FloatArray) -> FloatArray:
        """Per slot [users, slots] given each user's share of its cell's PRBs [users, slots]."""
        if self.loss_db is None or self.serving is None or self.per_prb_dbm is None:
            return np.asarray(self.expected, dtype=np.float64)
        heard = ul.interference_per_slot(self.loss_db, self.serving, occupancy, self.per_prb_dbm)
        return _db(1.0 + heard / 10.0 ** (self.noise_prb_dbm / 10.0))


def _members(serving: npt.NDArray[np.int64], cells: int) -> FloatArray:
    """How many users each user's cell serves, per tick [users, ticks']."""
    ticks = serving.shape[1]
    key = (serving * ticks + np.arange(ticks)).ravel()
    counts = np.bincount(key, minlength=cells * ticks)[key].reshape(serving.shape)
    return np.asarray(counts, dtype=np.float64)


def generate(
    cfg: RadioConfig, users: int, duration_s: float, rng: np.random.Generator
) -> RadioTrace:
    """Link states of ``users`` for ``duration_s`` seconds (see the module docstring)."""
    sc = SCENARIOS[cfg.scenario]
    h_bs = cfg.h_bs_m or sc.default_h_bs_m
    slot_s = 1e-3 / 2**cfg.numerology
    slots_per_tick = max(1, round(cfg.tick_ms * 1e-3 / slot_s))
    tick_s = slots_per_tick * slot_s
    ticks = max(1, math.ceil(duration_s / tick_s))
    slots = ticks * slots_per_tick
    n_prb = nr.prb_count(cfg.bandwidth_hz, cfg.numerology)
    lay = build(cfg.sites, cfg.sectors, cfg.isd_m, wrap_around=cfg.wrap_around)
    r_hi = lay.isd_m / math.sqrt(3) if lay.sectorised else cfg.cell_radius_m
    d_range = np.array([cfg.min_distance_m, r_hi])
    sc.check(freq_hz=cfg.carrier_hz, h_bs_m=h_bs, h_ut_m=cfg.h_ut_m, d2d_m=d_range)

    # Large scale, at the tick; the serving cell from each cell's RSRP (handover).
    big = _large_scale(cfg, lay, users, ticks=ticks, tick_s=tick_s, rng=rng)
    rsrp = cfg.bs_power_dbm - 10.0 * math.log10(12 * n_prb) + big.coupling_db  # a RE's
    rule = None
    if cfg.handover:
        rule = A3(cfg.ho_offset_db, cfg.ho_hysteresis_db, cfg.ho_ttt_ms, cfg.ho_filter_k,
                  cfg.ho_interruption_ms)  # fmt: skip
    served = serve(rsrp, cfg.tick_ms, rule)
    cell = served.cell  # [users, ticks']
    gain_db = _at_serving(big.coupling_db, cell)  # [users, ticks']
    site = lay.cell_site[cell]
    rows, cols = np.arange(users)[:, None], np.arange(cell.shape[1])[None, :]
    d_serv, los = big.distance_m[rows, site, cols], big.los[rows, site, cols]

    # Small scale, at the slot.
    speed = cfg.speed_mps if cfg.mobility != "static" else STATIC_DOPPLER_SPEED_MPS
    doppler = np.full(users, max(speed, STATIC_DOPPLER_SPEED_MPS) * cfg.carrier_hz / C_M_S)
    k_db = sc.k_factor_db if cfg.k_factor_db is None else cfg.k_factor_db
    k_lin = np.where(los.mean(axis=1) >= 0.5, 10.0 ** (k_db / 10.0), 0.0)
    gain = fad.fading_gain(
        cfg.fading, doppler, slots, slot_s, rng, k_factor=k_lin, block_s=cfg.block_ms * 1e-3
    )
    # Fading in dB, in place (these slot-level arrays are the memory the run needs).
    np.log10(np.maximum(gain, 1e-30, out=gain), out=gain)
    gain *= 10.0
    fade_db = gain.reshape(users, ticks, slots_per_tick)

    # Downlink SINR over the carrier (interference: every other cell at full power, no fading).
    noise_dl = 10.0 ** (nr.thermal_noise_dbm(cfg.bandwidth_hz, cfg.ue_noise_figure_db) / 10.0)
    heard = 10.0 ** ((cfg.bs_power_dbm + big.coupling_db) / 10.0)  # [users, cells, ticks']
    own = 10.0 ** ((cfg.bs_power_dbm + gain_db) / 10.0)
    intf_mw = np.maximum(heard.sum(axis=1) - own, 0.0)
    dl_large = cfg.bs_power_dbm + gain_db - _db(noise_dl + intf_mw)  # the geometry SINR
    sinr_dl = _impaired(cfg, (dl_large[:, :, None] + fade_db).reshape(users, slots))
    # Uplink SINR with the whole carrier at full power; on a share s of it the open loop's
    # power (TS 38.213 7.1.1) gains min(1/s, what it asks for over P_CMAX) (``uplink``).
    pc = ul.PowerControl(cfg.ul_p0_dbm, cfg.ul_alpha, cfg.numerology, cfg.ue_power_dbm)
    headroom = ul.headroom_db(-gain_db, n_prb, pc)  # [users, ticks']
    noise_ul = nr.thermal_noise_dbm(cfg.bandwidth_hz, cfg.bs_noise_figure_db)
    # The users a cell schedules in one slot: PF one resource-block group each; the others share
    # the carrier among all the cell's users.
    members = _members(cell, lay.cells)
    groups = _rbg_count(n_prb)
    per_slot = np.minimum(groups, members) if cfg.scheduler == "pf" else members
    intf = _Interference(expected=cfg.ul_iot_db)
    if lay.cells > 1:  # the other cells' scheduled users, at their own powers
        prb_hz = 12 * 15e3 * 2**cfg.numerology
        noise_prb = nr.thermal_noise_dbm(prb_hz, cfg.bs_noise_figure_db)
        prbs = n_prb / per_slot
        per_cell = ul.interference_over_thermal_db(
            -big.coupling_db, cell, prbs, pc, own_loss_db=-gain_db, noise_prb_dbm=noise_prb
        )  # [cells, ticks']
        intf = _Interference(
            expected=per_cell[cell, np.arange(cell.shape[1])[None, :]],
            loss_db=-big.coupling_db,
            serving=cell,
            per_prb_dbm=ul.pusch_dbm(-gain_db, prbs, pc) - _db(prbs),
            noise_prb_dbm=noise_prb,
        )
    thermal = cfg.ue_power_dbm + gain_db - noise_ul  # [users, ticks']
    ul_thermal_full = (thermal[:, :, None] + fade_db).reshape(users, slots)
    sinr_ul_full = ((thermal - intf.expected)[:, :, None] + fade_db).reshape(users, slots)
    del gain, fade_db, heard

    lag = max(0, round(cfg.cqi_delay_ms * 1e-3 / slot_s))
    pf: tuple[_Scheduled, _Scheduled] | None = None
    if cfg.scheduler == "pf":
        # Both directions in one pass of the scheduler (its loop over slots is the cost), the
        # uplink's on the interference it expects; then the uplink as the other cells'
        # choices of the same slots make it (link adaptation then picks the MCS from that
        # SINR, reported ``cqi_delay_ms`` late).
        expected = _impaired(cfg, _concentrated(sinr_ul_full, _db(per_slot), headroom))
        sent_dl = _bits(cfg, sinr_dl, n_prb, slot_s, lag)
        both = np.vstack([_bits(cfg, expected, n_prb, slot_s, lag)[0], sent_dl[0]])
        del expected
        _silenced(both[:users], served.interrupted)  # no rate while a handover interrupts
        _silenced(both[users:], served.interrupted)
        tc = cfg.pf_tc_ms * 1e-3 / slot_s
        held = shares("pf", both, np.vstack([cell, cell + lay.cells]), tc_slots=tc, groups=groups)
        sinr_ul_full = _concentrated(ul_thermal_full, _db(per_slot), headroom)
        sinr_ul_full -= intf.realised(_silenced(held[:users].copy(), served.interrupted))
        sinr_ul_full = _impaired(cfg, sinr_ul_full)
        # A user's share over PF's own window: the rate it gets when it has data, not all or
        # nothing within a tick (a window shorter than a slot: the slot's own share).
        share = _ewma(held, min(1.0, 1.0 / tc))
        sent_ul = _bits(cfg, sinr_ul_full, n_prb, slot_s, lag)
        pf = ((share[:users], sent_ul), (share[users:], sent_dl))
    up = _direction(
        cfg, sinr_ul_full, cell, n_prb, slot_s=slot_s, lag=lag, uplink=True, members=members,
        scheduled=pf and pf[0], cut=served.interrupted,
        uplink_power=(headroom, ul_thermal_full, intf),
    )  # fmt: skip
    down = _direction(
        cfg, sinr_dl, cell, n_prb, slot_s=slot_s, lag=lag, uplink=False, members=members,
        scheduled=pf and pf[1], cut=served.interrupted,
    )  # fmt: skip
    shape = (users, ticks, slots_per_tick)
    turn = 1.0 / per_slot  # the share of the cell a PF user holds in a slot it is given

    def every_tick(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.ascontiguousarray(np.broadcast_to(x, (users, ticks)))

    return RadioTrace(
        t_s=np.arange(ticks) * tick_s,
        up=_per_tick(cfg, up, shape, slot_s, uplink=True, turn=turn),
        down=_per_tick(cfg, down, shape, slot_s, uplink=False, turn=turn),
        cell=every_tick(cell),
        distance_m=every_tick(d_serv),
        los=every_tick(los),
        sinr_up_db=up.sinr_db.reshape(shape).mean(axis=2),
        sinr_down_db=sinr_dl.reshape(shape).mean(axis=2),
        handovers=served.handovers,
        coupling_loss_db=every_tick(-gain_db),
        geometry_db=every_tick(dl_large),
    )


@dataclass(frozen=True, slots=True)
class _Slots:
    """One direction per slot: [users, slots]."""

    bits: FloatArray  # goodput
    residual: FloatArray  # loss after HARQ
    mean_tx: FloatArray
    var_tx: FloatArray
    share: FloatArray
    sinr_db: FloatArray  # at the allocation


def _impaired(cfg: RadioConfig, sinr_db: FloatArray) -> FloatArray:
    """The radios' own impairments (EVM, phase noise) cap the SINR any link reaches:
    1 / (1 / g + 1 / g_max), in place."""
    g = np.power(10.0, sinr_db / 10.0, out=sinr_db)
    g = np.reciprocal(np.reciprocal(g, out=g) + 10.0 ** (-cfg.max_sinr_db / 10.0), out=g)
    out: FloatArray = np.multiply(np.log10(g, out=g), 10.0, out=g)
    return out


def _concentrated(
    sinr_full_db: FloatArray, gain_db: FloatArray | float, headroom: FloatArray
) -> FloatArray:
    """The uplink SINR on a share of the carrier [users, slots]: the full-carrier, full-power
    SINR plus min(``gain_db``, the open loop's headroom of the slot's tick) (``gain_db``:
    -10 log10 of the share, per user and tick as ``headroom`` is, or per user and slot)."""
    users, slots = sinr_full_db.shape
    per = slots // headroom.shape[1]
    gain = np.asarray(gain_db, dtype=np.float64)
    # per slot, or per tick as ``headroom``
    gain = gain.reshape(users, -1, per) if gain.shape != headroom.shape else gain[:, :, None]
    capped = np.minimum(gain, headroom[:, :, None])
    return np.asarray((sinr_full_db.reshape(users, -1, per) + capped).reshape(users, slots))


def _silenced(x: FloatArray, cut: npt.NDArray[np.bool_]) -> FloatArray:
    """``x`` [users, slots] with the slots of the ticks in ``cut`` [users, ticks'] set to 0,
    in place (a user without a link: a handover's interruption)."""
    if cut.any():
        x.reshape(x.shape[0], cut.shape[1], -1)[cut] = 0.0
    return x


def _rbg_count(n_prb: int) -> int:
    """Resource-block groups of a carrier (TS 38.214 Table 5.1.2.2.1-1, configuration 1)."""
    size = 2 if n_prb <= 36 else 4 if n_prb <= 72 else 8 if n_prb <= 144 else 16
    return -(-n_prb // size)


def _ewma(x: FloatArray, beta: float) -> FloatArray:
    """Exponential average along time, y_t = beta x_t + (1 - beta) y_(t-1), started from each
    row's mean: in closed form over blocks short enough that (1 - beta)^block stays above 1e-8
    (numpy alone: scipy.signal's lfilter cost 3 s to import)."""
    a = 1.0 - beta
    y = np.empty_like(x, dtype=np.float64)
    prev = x.mean(axis=1)
    if a <= 0.0:
        y[:] = x
        return y
    ticks = x.shape[1]
    block = ticks if a >= 1.0 else max(1, min(ticks, int(8.0 / -math.log10(a))))
    k = np.arange(block, dtype=np.float64)
    power, inverse = a**k, a**-k
    for s in range(0, ticks, block):
        xb = x[:, s : s + block]
        n = xb.shape[1]
        # y_(s+k) = a^k (a y_(s-1) + beta sum_(j<=k) a^-j x_(s+j))
        yb = power[:n] * (a * prev[:, None] + beta * np.cumsum(xb * inverse[:n], axis=1))
        y[:, s : s + n] = yb
        prev = yb[:, -1]
    return y


def _delayed(x: FloatArray, lag: int) -> FloatArray:
    if lag == 0:
        return x
    return np.concatenate([x[:, :1].repeat(min(lag, x.shape[1]), axis=1), x[:, :-lag]], axis=1)


_Sent = tuple[FloatArray, npt.NDArray[np.int64] | None]  # bits of the whole carrier, MCS
_Scheduled = tuple[FloatArray, _Sent]  # the PF scheduler's shares, and what it decided on


def _bits(cfg: RadioConfig, sinr_db: FloatArray, n_prb: int, slot_s: float, lag: int) -> _Sent:
    """Bits a slot of the whole carrier carries (before HARQ), and the MCS chosen."""
    if cfg.link == "shannon":
        return cfg.shannon_efficiency * nr.shannon_bits(cfg.bandwidth_hz, sinr_db, slot_s), None
    mcs = _mcs(sinr_db, lag)
    return nr.tbs_for(n_prb, mcs), mcs


def _mcs(sinr_db: FloatArray, lag: int) -> npt.NDArray[np.int64]:
    return nr.mcs_from_cqi(nr.cqi_from_sinr(_delayed(sinr_db, lag)))


def _link(
    cfg: RadioConfig, sinr_db: FloatArray, sent: _Sent
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per slot with the whole carrier: bits sent, residual loss, mean and variance of the
    number of transmissions."""
    bits, mcs = sent
    if mcs is None:  # Shannon: no block errors
        zero = np.zeros_like(bits)
        return bits, zero, np.ones_like(bits), zero
    residual, mean_tx, var_tx = nr.harq(mcs, sinr_db, cfg.harq_max_tx)
    return bits, residual, mean_tx, var_tx


def _direction(
    cfg: RadioConfig,
    sinr_full_db: FloatArray,
    cell: npt.NDArray[np.int64],
    n_prb: int,
    *,
    slot_s: float,
    lag: int,
    uplink: bool,
    members: FloatArray,
    cut: npt.NDArray[np.bool_],
    scheduled: _Scheduled | None = None,
    uplink_power: tuple[FloatArray, FloatArray, _Interference] | None = None,
) -> _Slots:
    """One direction's goodput and HARQ figures per slot; ``cell`` and ``members`` [users,
    ticks']: each user's cell and how many users it serves; ``cut`` [users, ticks']: no link
    (a handover's interruption); ``scheduled``: the PF scheduler's shares, and the bits and MCS
    it decided on; ``uplink_power``: the uplink's power control headroom [users, ticks']
    (``uplink.headroom_db``), its SINR over the whole carrier with thermal noise alone [users,
    slots], and the other cells' interference."""
    users, slots = sinr_full_db.shape
    payload = 8.0 * (cfg.payload_up_bytes if uplink else cfg.payload_down_bytes)
    if scheduled is not None:
        share, sent = scheduled
        sinr = sinr_full_db
    elif not uplink:
        sent = _bits(cfg, sinr_full_db, n_prb, slot_s, lag)
        rate = _silenced(sent[0].copy(), cut)
        share = shares(cfg.scheduler, rate, cell, payload_bits=np.full(users, payload))
        sinr = sinr_full_db
    else:
        # Power concentrates on a share of the carrier (as far as power control asks): first
        # rates at equal shares, then the scheduler's shares, then the SINR those shares give
        # with the interference of the other cells' shares in the same slots.
        assert uplink_power is not None
        headroom, thermal, intf = uplink_power
        equal = _concentrated(sinr_full_db, _db(members), headroom)
        bits_eq, _ = _bits(cfg, equal, n_prb, slot_s, lag)
        per = slots // members.shape[1]
        each = (bits_eq.reshape(users, -1, per) / members[:, :, None]).reshape(users, slots)
        _silenced(each, cut)
        share = shares(cfg.scheduler, each, cell, payload_bits=np.full(users, payload))
        del equal, bits_eq, each
        gain = _db(members) if cfg.scheduler == "rr" else -_db(np.maximum(share, 1e-6))
        sinr = _concentrated(thermal, gain, headroom)
        sinr -= intf.realised(_silenced(share.copy(), cut))
        sinr = _impaired(cfg, sinr)
        sent = _bits(cfg, sinr, n_prb, slot_s, lag)
    bits, residual, mean_tx, var_tx = _link(cfg, sinr, sent)
    good = share * bits * (1.0 - residual) / mean_tx
    _silenced(good, cut)  # no link while a handover interrupts it
    return _Slots(good, residual, mean_tx, var_tx, share, sinr)


def _per_tick(
    cfg: RadioConfig,
    s: _Slots,
    shape: tuple[int, int, int],
    slot_s: float,
    *,
    uplink: bool,
    turn: FloatArray,
) -> LinkSeries:
    """Per tick; ``turn`` [users, ticks']: the share of the cell a PF user holds in a slot it
    is given."""
    users, _, per = shape
    slot_ms = slot_s * 1e3

    def tick(x: FloatArray) -> FloatArray:
        return np.asarray(x.reshape(shape).mean(axis=2), dtype=np.float64)

    bits = tick(s.bits) * per  # per tick
    rate = bits / (per * slot_s)
    # Weight the radio's per-block figures by where the user was scheduled.
    w = s.share.reshape(shape)
    wsum = np.maximum(w.sum(axis=2), 1e-12)

    def weighted(x: FloatArray) -> FloatArray:
        return np.asarray((x.reshape(shape) * w).sum(axis=2) / wsum, dtype=np.float64)

    loss = weighted(s.residual)
    retx_ms = (weighted(s.mean_tx) - 1.0) * cfg.harq_rtt_ms
    var_ms2 = weighted(s.var_tx) * cfg.harq_rtt_ms**2
    delay = cfg.core_delay_ms + slot_ms + retx_ms
    if cfg.scheduler == "pf":
        # Waiting for one's turn: a user given a fraction f of the slots waits about
        # (1/f - 1)/2 slots on average.
        f = np.clip(tick(s.share) / turn, 1e-3, 1.0)
        wait = (1.0 / f - 1.0) / 2.0 * slot_ms
        delay = delay + wait
        var_ms2 = var_ms2 + wait**2
    if uplink:
        delay = delay + cfg.sr_period_ms / 2.0 + cfg.grant_delay_ms
        var_ms2 = var_ms2 + cfg.sr_period_ms**2 / 12.0
    outage = bits <= 0
    per_ms = s.bits.reshape(users, -1, max(1, round(1e-3 / slot_s))).sum(axis=2)
    return LinkSeries(
        tick_s=per * slot_s,
        rate_bps=np.where(outage, 1.0, rate),
        delay_ms=delay,
        jitter_ms=np.sqrt(var_ms2),
        loss=np.where(outage, 0.99, np.minimum(loss, 0.99)),
        goodput_bits_per_ms=per_ms,
    )
