"""The scenario's ``[dsd]``: DSD's drafters, verifier tiers, network, workload and rules
(``../shared/systems/dsd.md`` sections 3, 4 and 6), turned into the simulation's
``DsdProblem``.

Layer: emu (orchestration); reads the trace and the AWC weights it names.

Drafters' capabilities are drawn from ``capability`` with ``sim.seed``; the verifiers are the
tiers' ``count`` each (``v0``, ``v1``, ... in the tiers' order); each drafter reaches
``fanout`` of them, each pair's one-way base times drawn once from its verifier's tier. The
compute model is affine per pass (``emu.planner.dsd.compute``): the drafters' and each tier's,
or a model ``draftnet profile`` measured (``draft_profile``, a tier's ``profile``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from emu.errors import ConfigError, check_in
from emu.planner.dsd.acceptance import PositionCurve
from emu.planner.dsd.awc import AwcNetwork
from emu.planner.dsd.compute import AffineCompute, Compat, Compute, FlopCompute
from emu.planner.dsd.links import wire
from emu.planner.dsd.model import MODES, DrafterSpec, DsdProblem, VerifierSpec
from emu.planner.dsd.routing import ROUTERS
from emu.planner.dsd.workload import Request, ThinkTime, parse_trace, synthetic_trace
from emu.planner.model import ModelArch
from nodes.core.dsd import BATCH_ORDERS

__all__ = ["DsdConfig", "DsdTierConfig", "dsd_problem"]

GRANULARITIES = ("", "round", "conversation")
ACCEPTANCE_FROM = ("", "embedded")
HAND_SET = "hand-set"  # dsd.awc_weights: the authors' hand-set head
TRAINED = "data/awc.npz"  # draftnet's trained AWC weights, in the emu package


@dataclass(frozen=True, slots=True, kw_only=True)
class DsdTierConfig:
    """One tier of ``[[dsd.tiers]]``: ``count`` verifiers alike (dsd.md section 6's table)."""

    name: str
    count: int = 1
    weight: float = 1.0  # the weighted routers' capacity
    batch_size: int = 12
    window_ms: float = 0.33  # how long a batch collects after its first job
    one_way_ms: tuple[float, float] = (6.0, 10.0)  # a pair's base, each way: uniform in range
    base_ms: float = 20.0  # a verification pass: fixed
    per_token_ms: float = 1.0  # ... a token it processes
    per_context_ms: float = 0.0  # ... a context token it reads
    fused_draft_base_ms: float = 9.0  # fused execution: a drafting pass on its GPU
    fused_draft_per_token_ms: float = 0.1  # ... a token of it
    kv_tokens: int = 1_000_000  # each verifier's KV cache, as the lanes reserve it
    profile: str = ""  # a target profile (draftnet profile --target): its passes instead


def _tiers() -> tuple[DsdTierConfig, ...]:
    return (
        DsdTierConfig(name="a100", count=1, one_way_ms=(6.5, 11.0)),
        DsdTierConfig(
            name="h100",
            count=1,
            weight=1.9,
            batch_size=14,
            window_ms=0.32,
            one_way_ms=(5.2, 9.2),
            base_ms=14.0,
            per_token_ms=0.6,
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DsdConfig:
    drafters: int = 8
    capability: tuple[float, float] = (0.32, 0.60)  # uniform: each drafter's share of arrivals
    draft_base_ms: float = 2.0  # a drafting pass: fixed
    draft_per_token_ms: float = 9.0  # ... a token
    draft_per_context_ms: float = 0.0
    draft_profile: str = ""  # a draft profile (draftnet profile --draft): its passes instead
    tiers: tuple[DsdTierConfig, ...] = field(default_factory=_tiers)
    router: str = "jsq"
    batching: str = "fifo"  # fifo | priority | lab
    lanes: bool = True  # the global phase lanes (6 jobs, 0.3 ms alone, 0.8 ms with company)
    lane_depth: int = 24  # a lane holding more defers what comes ...
    lane_poll_ms: float = 0.08  # ... which asks again this often
    kv_retries: int = 3  # a dispatch a verifier's KV cache refused is tried again this often
    kv_retry_ms: float = 1.0  # ... after this x its refusals; then its conversation fails
    mode: str = "distributed"  # distributed | fused (the verifiers draft, a token a round) |
    # hybrid (fused at a window of 1, else distributed)
    fanout: int = 2  # verifiers each drafter reaches (at most all of them; the presets: 4)
    jitter: float = 0.12  # a transfer's base x (1 + U(-jitter, jitter))
    rtt_scale: float = 1.0  # every tier's one-way range, times this (a study's RTT axis)
    rtt_spread: float = 1.0  # ... its half-width around its middle, times this (0: one value)
    bandwidth_mbps: float = 0.0  # 0: no bytes term
    acceptance_base: float = 0.93  # position i of a draft is accepted with base x decay^i ...
    acceptance_decay: float = 0.97  # (x 0.95 above 1500 tokens of context, 0.92 above 2500)
    acceptance_from: str = ""  # "embedded": every position at the embedded pair's measured rate
    gamma_default: int = 4
    max_gamma: int = 8
    gamma_granularity: str = ""  # round | conversation; "": round (conversation with compat)
    compat: bool = False  # the authors' simulator where it differs (dsd.md section 8)
    awc_weights: str = ""  # an .npz of AWC's arrays (draftnet train-awc); "hand-set": the
    # authors' head; "": draftnet's trained weights (emu/data/awc.npz), the hand-set with compat
    trace: str = ""  # a file of "P,A" lines; "": a stand-in of the authors' GSM8K trace
    think_mean_ms: float = 1700.0
    think_cv: float = 0.6
    think_min_ms: float = 220.0

    def __post_init__(self) -> None:
        check_in("dsd.drafters", self.drafters, 1, 100_000, "an integer >= 1")
        lo, hi = self.capability
        if not 0 <= lo <= hi:
            raise ConfigError(f"dsd.capability must be [lo, hi] with 0 <= lo <= hi, got {[lo, hi]}")
        for name in ("draft_base_ms", "draft_per_token_ms", "draft_per_context_ms"):
            check_in(f"dsd.{name}", getattr(self, name), 0, math.inf, ">= 0")
        if not self.tiers:
            raise ConfigError("dsd.tiers must list at least one tier")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"dsd.tiers' names must be distinct, got {names}")
        for i, t in enumerate(self.tiers):
            where = f"dsd.tiers[{i}]"
            check_in(f"{where}.count", t.count, 1, 100_000, "an integer >= 1")
            check_in(f"{where}.batch_size", t.batch_size, 1, 100_000, "an integer >= 1")
            check_in(f"{where}.window_ms", t.window_ms, 0, 1e6, ">= 0")
            if not t.weight > 0:
                raise ConfigError(f"{where}.weight must be > 0, got {t.weight!r}")
            if not 0 <= t.one_way_ms[0] <= t.one_way_ms[1]:
                raise ConfigError(f"{where}.one_way_ms must be [lo, hi] with 0 <= lo <= hi, "
                                  f"got {list(t.one_way_ms)}")  # fmt: skip
            for name in ("base_ms", "per_token_ms", "per_context_ms", "fused_draft_base_ms",
                         "fused_draft_per_token_ms"):  # fmt: skip
                check_in(f"{where}.{name}", getattr(t, name), 0, math.inf, ">= 0")
            check_in(f"{where}.kv_tokens", t.kv_tokens, 1, 10**12, "an integer >= 1")
        for name, value, allowed in (
            ("router", self.router, ROUTERS),
            ("batching", self.batching, BATCH_ORDERS),
            ("gamma_granularity", self.gamma_granularity, GRANULARITIES),
            ("mode", self.mode, MODES),
        ):
            if value not in allowed:
                known = ", ".join(a or '""' for a in allowed)
                raise ConfigError(f"dsd.{name} must be one of {known}, got {value!r}")
        if self.fanout > self.verifiers:
            raise ConfigError(
                f"dsd.fanout must be at most the {self.verifiers} verifiers of dsd.tiers, "
                f"got {self.fanout}"
            )
        check_in("dsd.fanout", self.fanout, 1, 100_000, "an integer >= 1")
        check_in("dsd.rtt_scale", self.rtt_scale, 0, 1e4, "in [0, 1e4]")
        check_in("dsd.rtt_spread", self.rtt_spread, 0, 1e4, "in [0, 1e4]")
        check_in("dsd.lane_depth", self.lane_depth, 0, 100_000, "an integer >= 0")
        check_in("dsd.lane_poll_ms", self.lane_poll_ms, 1e-6, 1e6, "> 0")
        check_in("dsd.kv_retries", self.kv_retries, 0, 1000, "an integer in [0, 1000]")
        check_in("dsd.kv_retry_ms", self.kv_retry_ms, 0, 1e6, ">= 0")
        check_in("dsd.acceptance_base", self.acceptance_base, 0.01, 0.995, "in [0.01, 0.995]")
        check_in("dsd.acceptance_decay", self.acceptance_decay, 0.01, 1.0, "in [0.01, 1]")
        if self.acceptance_from not in ACCEPTANCE_FROM:
            known = ", ".join(a or '""' for a in ACCEPTANCE_FROM)
            raise ConfigError(f"dsd.acceptance_from must be one of {known}, got "
                              f"{self.acceptance_from!r}")  # fmt: skip
        check_in("dsd.gamma_default", self.gamma_default, 1, 64, "in [1, 64]")
        check_in("dsd.max_gamma", self.max_gamma, self.gamma_default, 64,
                 f"in [dsd.gamma_default = {self.gamma_default}, 64]")  # fmt: skip
        if not isinstance(self.lanes, bool):
            raise ConfigError(f"dsd.lanes must be true or false, got {self.lanes!r}")
        ThinkTime(mean_ms=self.think_mean_ms, cv=self.think_cv, min_ms=self.think_min_ms)

    @property
    def verifiers(self) -> int:
        return sum(t.count for t in self.tiers)


def _awc(path: str, *, compat: bool) -> AwcNetwork:
    """The network ``dsd.awc_weights`` names."""
    if path == HAND_SET or (not path and compat):
        return AwcNetwork.hand_set()
    if not path:
        shipped = resources.files("emu").joinpath(TRAINED)
        if not shipped.is_file():
            raise ConfigError(
                f'dsd.awc_weights "": draftnet\'s trained weights (emu/{TRAINED}) are missing '
                f'from this install; name a file, set "{HAND_SET}", or make them with '
                f"`draftnet train-awc --preset dsd --set dsd.awc_weights={HAND_SET} --out FILE`"
            )
        with shipped.open("rb") as f, np.load(f) as data:
            return AwcNetwork.from_arrays({k: data[k] for k in data.files}, where=TRAINED)
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dsd.awc_weights {path!r} must be a readable .npz: {exc}") from None
    return AwcNetwork.from_arrays(arrays, where=f"dsd.awc_weights {path!r}")


def _trace(path: str, rng: np.random.Generator) -> tuple[Request, ...]:
    if not path:
        return synthetic_trace(rng)
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"dsd.trace {path!r} cannot be read: {exc}") from None
    return parse_trace(text, where=f"dsd.trace {path!r}")


PROFILE_TABLES = {"draft": ("users", "draft", "device"), "target": ("edge", "target", "latency")}


def _profile(path: str, where: str, *, role: str) -> FlopCompute:
    """The passes of the model a ``draftnet profile`` file measured: its shape and its fit."""
    try:
        doc = tomllib.loads(Path(path).expanduser().read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where} {path!r} cannot be read as TOML: {exc}") from None
    section, shape, latency = PROFILE_TABLES[role]
    tables = doc.get(section, {})
    if not (isinstance(tables.get(shape), dict) and isinstance(tables.get(latency), dict)):
        raise ConfigError(
            f"{where} {path!r} must be a {role} profile (`draftnet profile --{role}`), with "
            f"[{section}.{shape}] and [{section}.{latency}]"
        )
    try:
        arch = ModelArch(**{k: tables[shape][k] for k in ("layers", "hidden", "ffn")},
                         name=str(tables[shape].get("name", "")))  # fmt: skip
        return FlopCompute(arch=arch, c_ms_per_flop=float(tables[latency]["c_ms_per_flop"]),
                           beta_ms=float(tables[latency]["beta_ms"]),
                           drafter=role == "draft")  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where} {path!r}: [{section}] needs layers, hidden, ffn, "
                          f"c_ms_per_flop and beta_ms ({exc})") from None  # fmt: skip


def _curve(cfg: DsdConfig) -> PositionCurve:
    """Each draft position's acceptance: the authors' curve, its base and decay the scenario's
    (with ``acceptance_from = "embedded"`` the runners put the embedded pair's measured rate
    in its place: ``emu.runners.sim_dsd.with_acceptance``; this layer cannot read models)."""
    return PositionCurve(base=cfg.acceptance_base, decay=cfg.acceptance_decay)


def _scaled(one_way_ms: tuple[float, float], scale: float, spread: float) -> tuple[float, float]:
    """A tier's one-way range with its middle times ``scale`` and its half-width times
    ``scale`` x ``spread`` (never below 0)."""
    lo, hi = one_way_ms
    mid, half = (lo + hi) / 2 * scale, (hi - lo) / 2 * scale * spread
    return max(0.0, mid - half), mid + half


def dsd_problem(cfg: DsdConfig, *, seed: int) -> DsdProblem:
    """The deployment ``cfg`` describes, its draws made with ``seed``."""
    rng = np.random.default_rng([seed, 18])
    lo, hi = cfg.capability
    draft: Compute = (
        _profile(cfg.draft_profile, "dsd.draft_profile", role="draft")
        if cfg.draft_profile
        else AffineCompute(
            base_ms=cfg.draft_base_ms,
            per_token_ms=cfg.draft_per_token_ms,
            per_context_ms=cfg.draft_per_context_ms,
        )
    )
    targets = {
        t.name: _profile(t.profile, f"dsd.tiers[{i}].profile", role="target")
        for i, t in enumerate(cfg.tiers)
        if t.profile
    }
    drafters = tuple(
        DrafterSpec(name=f"d{i}", capability=float(c), compute=draft)
        for i, c in enumerate(rng.uniform(lo, hi, size=cfg.drafters))
    )
    verifiers = tuple(
        VerifierSpec(
            name=f"v{k}",
            tier=t.name,
            batch_size=t.batch_size,
            window_ms=t.window_ms,
            weight=t.weight,
            compute=targets.get(t.name)
            or AffineCompute(
                base_ms=t.base_ms, per_token_ms=t.per_token_ms, per_context_ms=t.per_context_ms
            ),
            fused_draft=AffineCompute(
                base_ms=t.fused_draft_base_ms, per_token_ms=t.fused_draft_per_token_ms
            ),
            kv_tokens=t.kv_tokens,
        )
        for k, t in enumerate(t for t in cfg.tiers for _ in range(t.count))
    )
    links = wire(
        {d.name: [v.name for v in verifiers] for d in drafters},
        {v.name: v.tier for v in verifiers},
        rng,
        fanout=cfg.fanout,
        ranges_ms={t.name: _scaled(t.one_way_ms, cfg.rtt_scale, cfg.rtt_spread) for t in cfg.tiers},
        bandwidth_mbps=cfg.bandwidth_mbps,
        jitter=cfg.jitter,
    )
    compat = Compat.authors() if cfg.compat else Compat()
    if cfg.gamma_granularity:
        compat = replace(compat, gamma_granularity=cfg.gamma_granularity)
    return DsdProblem(
        drafters=drafters,
        verifiers=verifiers,
        links=links,
        trace=_trace(cfg.trace, rng),
        think=ThinkTime(mean_ms=cfg.think_mean_ms, cv=cfg.think_cv, min_ms=cfg.think_min_ms),
        curve=_curve(cfg),
        router=cfg.router,
        batching=cfg.batching,
        lanes=cfg.lanes,
        lane_depth=cfg.lane_depth,
        lane_poll_ms=cfg.lane_poll_ms,
        kv_retries=cfg.kv_retries,
        kv_retry_ms=cfg.kv_retry_ms,
        mode=cfg.mode,
        compat=compat,
        gamma_default=cfg.gamma_default,
        max_gamma=cfg.max_gamma,
        awc=_awc(cfg.awc_weights, compat=cfg.compat),
    )
