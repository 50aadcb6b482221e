"""The radio pipeline: users in cells to per-user, per-direction link-state time series.

Layer: pure (numpy; no I/O; a generator passed in).

positions (mobility) -> 38.901 path loss, spatially consistent LOS state and correlated
shadowing (at the tick) -> small-scale fading (at the slot) -> SINR -> the cell's PRBs shared by
the scheduler -> CQI (reported ``cqi_delay_ms`` earlier) -> MCS -> TBS, BLER, HARQ -> goodput,
residual loss and delay per slot -> ``LinkSeries`` per tick, and goodput per millisecond for
packet-delivery traces.

Modelling choices, each a simplification a user should know:
- Users are backlogged: the series is the rate a user gets when it has data.
- Each user stays with the cell that is strongest (least path loss) at the start (no handover).
- Uplink and downlink see the same fading (TDD reciprocity). The downlink's interference is
  every other cell's base station at full power (full load); the uplink's, with several
  cells, the other cells' users at their own powers, each on its share of its cell's PRBs
  (``channel_models.uplink``; a mean over the schedulers' choices), and with one cell the
  margin ``ul_iot_db`` (interference from outside the layout).
- A user's uplink power follows open-loop fractional power control (TS 38.213 7.1.1:
  ``ul_p0_dbm``, ``ul_alpha``, capped at ``ue_power_dbm``) on its share of the PRBs, so a
  smaller share has a higher SINR while the open loop asks for more than P_CMAX; the min-max
  split's shares are computed from rates at equal shares.
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

import numpy as np
import numpy.typing as npt

from channel_models import fading as fad
from channel_models import nr
from channel_models import uplink as ul
from channel_models.config import RadioConfig
from channel_models.link import LinkState
from channel_models.mobility import place_uniform, trajectories
from channel_models.pathloss import (
    C_M_S,
    SCENARIOS,
    los_probability,
    path_loss_db,
    shadowing_std_db,
)
from channel_models.scheduler import shares
from channel_models.shadowing import correlated_normal, los_state, per_state

__all__ = ["LinkSeries", "RadioTrace", "generate", "site_positions"]

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
    cell: npt.NDArray[np.int64]  # serving cell per user
    distance_m: FloatArray  # 2D distance to the serving site [users, ticks]
    los: npt.NDArray[np.bool_]  # [users, ticks]
    sinr_up_db: FloatArray  # mean per tick [users, ticks]
    sinr_down_db: FloatArray


def site_positions(cells: int, isd_m: float) -> FloatArray:
    """Sites: one at the origin, then a hexagonal ring at the inter-site distance."""
    ring = [
        (isd_m * math.cos(math.pi / 3 * k), isd_m * math.sin(math.pi / 3 * k)) for k in range(6)
    ]
    return np.asarray([(0.0, 0.0), *ring][:cells])


def _db(x: FloatArray) -> FloatArray:
    return 10.0 * np.log10(np.maximum(x, 1e-30))


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
    sites = site_positions(cfg.cells, cfg.isd_m)
    r_lo, r_hi = cfg.min_distance_m, cfg.cell_radius_m
    sc.check(freq_hz=cfg.carrier_hz, h_bs_m=h_bs, h_ut_m=cfg.h_ut_m, d2d_m=np.array([r_lo, r_hi]))

    # Large scale, at the tick.
    home = rng.integers(0, cfg.cells, size=users)
    rel = trajectories(
        cfg.mobility,
        place_uniform(users, r_lo, r_hi, rng),
        ticks,
        tick_s,
        rng,
        speed_mps=cfg.speed_mps,
        r_min=r_lo,
        r_max=r_hi,
        pause_s=cfg.pause_s,
    )
    pos = rel + sites[home][:, None, :]
    d_all = np.hypot(
        pos[:, None, :, 0] - sites[None, :, None, 0], pos[:, None, :, 1] - sites[None, :, None, 1]
    )  # [users, cells, ticks]
    d_all = np.clip(d_all, sc.d2d_m[0], sc.d2d_m[1])
    pl_kw = {"freq_hz": cfg.carrier_hz, "h_bs_m": h_bs, "h_ut_m": cfg.h_ut_m}
    p_los = los_probability(cfg.scenario, d_all, h_ut_m=cfg.h_ut_m)
    z_los = correlated_normal(pos, sc.los_corr_m, rng)
    los_all = los_state(z_los[:, None, :], p_los)
    # Interferers' LOS states are their own draws, held for the run.
    los_all = np.where(
        np.arange(cfg.cells)[None, :, None] == home[:, None, None],
        los_all,
        (rng.random((users, cfg.cells, 1)) < p_los[:, :, :1]),
    )
    pl_all = path_loss_db(cfg.scenario, los_all, d_all, **pl_kw)
    cell = np.argmin(pl_all[:, :, 0], axis=1)
    rows = np.arange(users)
    los = los_all[rows, cell]
    d_serv = d_all[rows, cell]
    z_sf = per_state(pos, los, sc.sf_corr_m, rng)  # each state its decorrelation distance
    sigma = shadowing_std_db(cfg.scenario, los, d_serv, **pl_kw)
    pl = pl_all[rows, cell] + sigma * z_sf  # [users, ticks], shadowing included

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

    # Downlink SINR over the carrier (interference: the other sites at full power, no fading).
    noise_dl = 10.0 ** (nr.thermal_noise_dbm(cfg.bandwidth_hz, cfg.ue_noise_figure_db) / 10.0)
    other = np.ones((users, cfg.cells), dtype=bool)
    other[rows, cell] = False
    intf_mw = (
        10.0 ** ((cfg.bs_power_dbm + cfg.bs_gain_dbi + cfg.ue_gain_dbi - pl_all) / 10.0)
        * other[:, :, None]
    ).sum(axis=1)
    dl_large = cfg.bs_power_dbm + cfg.bs_gain_dbi + cfg.ue_gain_dbi - pl - _db(noise_dl + intf_mw)
    sinr_dl = _impaired(cfg, (dl_large[:, :, None] + fade_db).reshape(users, slots))
    # Uplink SINR with the whole carrier at full power; on a share s of it the open loop's
    # power (TS 38.213 7.1.1) gains min(1/s, what it asks for over P_CMAX) (``uplink``).
    pc = ul.PowerControl(cfg.ul_p0_dbm, cfg.ul_alpha, cfg.numerology, cfg.ue_power_dbm)
    headroom = ul.headroom_db(pl, n_prb, pc)  # [users, ticks]
    noise_ul = nr.thermal_noise_dbm(cfg.bandwidth_hz, cfg.bs_noise_figure_db)
    # The users a cell schedules in one slot: PF one resource-block group each; the others share
    # the carrier among all the cell's users.
    members = np.bincount(cell, minlength=cfg.cells)[cell].astype(np.float64)
    per_slot = np.minimum(_rbg_count(n_prb), members) if cfg.scheduler == "pf" else members
    iot: FloatArray | float = cfg.ul_iot_db
    if cfg.cells > 1:  # the other cells' scheduled users, at their own powers
        prb_hz = 12 * 15e3 * 2**cfg.numerology
        iot = ul.interference_over_thermal_db(
            pl_all, cell, n_prb / per_slot, pc, own_pl_db=pl,
            gains_db=cfg.ue_gain_dbi + cfg.bs_gain_dbi,
            noise_prb_dbm=nr.thermal_noise_dbm(prb_hz, cfg.bs_noise_figure_db),
        )[cell]  # fmt: skip
    ul_large = cfg.ue_power_dbm + cfg.ue_gain_dbi + cfg.bs_gain_dbi - pl - noise_ul - iot
    sinr_ul_full = (ul_large[:, :, None] + fade_db).reshape(users, slots)
    del gain, fade_db

    lag = max(0, round(cfg.cqi_delay_ms * 1e-3 / slot_s))
    pf: tuple[_Scheduled, _Scheduled] | None = None
    turn = 1.0
    if cfg.scheduler == "pf":
        # Both directions in one pass of the scheduler (its loop over slots is the cost).
        groups = _rbg_count(n_prb)
        turn = 1.0 / min(groups, int(np.bincount(cell).min()))
        sinr_ul_full = _impaired(cfg, _concentrated(sinr_ul_full, _db(per_slot)[:, None], headroom))
        sent = (
            _bits(cfg, sinr_ul_full, n_prb, slot_s, lag),
            _bits(cfg, sinr_dl, n_prb, slot_s, lag),
        )
        both = np.vstack([sent[0][0], sent[1][0]])
        tc = cfg.pf_tc_ms * 1e-3 / slot_s
        share = shares(
            "pf", both, np.concatenate([cell, cell + cfg.cells]), tc_slots=tc, groups=groups
        )
        # A user's share over PF's own window: the rate it gets when it has data, not all or
        # nothing within a tick (a window shorter than a slot: the slot's own share).
        share = _ewma(share, min(1.0, 1.0 / tc))
        pf = ((share[:users], sent[0]), (share[users:], sent[1]))
    up = _direction(
        cfg, sinr_ul_full, cell, n_prb, slot_s=slot_s, lag=lag, uplink=True, members=members,
        scheduled=pf and pf[0], headroom=headroom,
    )  # fmt: skip
    down = _direction(
        cfg, sinr_dl, cell, n_prb, slot_s=slot_s, lag=lag, uplink=False, members=members,
        scheduled=pf and pf[1],
    )  # fmt: skip
    shape = (users, ticks, slots_per_tick)
    return RadioTrace(
        t_s=np.arange(ticks) * tick_s,
        up=_per_tick(cfg, up, shape, slot_s, uplink=True, turn=turn),
        down=_per_tick(cfg, down, shape, slot_s, uplink=False, turn=turn),
        cell=cell,
        distance_m=d_serv,
        los=los,
        sinr_up_db=up.sinr_db.reshape(shape).mean(axis=2),
        sinr_down_db=sinr_dl.reshape(shape).mean(axis=2),
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
    -10 log10 of the share, per user or per user and slot)."""
    users, slots = sinr_full_db.shape
    per = slots // headroom.shape[1]
    gain = np.broadcast_to(np.asarray(gain_db, dtype=np.float64), (users, slots))
    capped = np.minimum(gain.reshape(users, -1, per), headroom[:, :, None])
    return np.asarray((sinr_full_db.reshape(users, -1, per) + capped).reshape(users, slots))


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
    scheduled: _Scheduled | None = None,
    headroom: FloatArray | None = None,
) -> _Slots:
    """One direction's goodput and HARQ figures per slot; ``members``: how many users each
    user's cell serves; ``scheduled``: the PF scheduler's shares, and the bits and MCS it
    decided on; ``headroom``: the uplink's power control [users, ticks]
    (``uplink.headroom_db``)."""
    payload = 8.0 * (cfg.payload_up_bytes if uplink else cfg.payload_down_bytes)
    if scheduled is not None:
        share, sent = scheduled
        sinr = sinr_full_db
    elif not uplink:
        sent = _bits(cfg, sinr_full_db, n_prb, slot_s, lag)
        share = shares(cfg.scheduler, sent[0], cell, payload_bits=np.full(cell.size, payload))
        sinr = sinr_full_db
    else:
        # Power concentrates on a share of the carrier (as far as power control asks): first
        # rates at equal shares, then the scheduler's shares, then the SINR those shares give.
        assert headroom is not None
        equal = _concentrated(sinr_full_db, _db(members)[:, None], headroom)
        bits_eq, _ = _bits(cfg, equal, n_prb, slot_s, lag)
        share = shares(
            cfg.scheduler,
            bits_eq / members[:, None],
            cell,
            payload_bits=np.full(cell.size, payload),
        )
        concentrated = _concentrated(sinr_full_db, -_db(np.maximum(share, 1e-6)), headroom)
        sinr = _impaired(cfg, equal if cfg.scheduler == "rr" else concentrated)
        sent = _bits(cfg, sinr, n_prb, slot_s, lag)
    bits, residual, mean_tx, var_tx = _link(cfg, sinr, sent)
    good = share * bits * (1.0 - residual) / mean_tx
    return _Slots(good, residual, mean_tx, var_tx, share, sinr)


def _per_tick(
    cfg: RadioConfig,
    s: _Slots,
    shape: tuple[int, int, int],
    slot_s: float,
    *,
    uplink: bool,
    turn: float = 1.0,
) -> LinkSeries:
    """Per tick; ``turn``: the share of the cell a PF user holds in a slot it is given."""
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
