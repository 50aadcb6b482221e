"""The scenario's ``[hetnet]``: the heterogeneous-edge system's workload and constants
(``../shared/systems/hetnet.md`` section 6), turned into the planner's ``HetnetProblem``.

Layer: emu (orchestration; typed configuration, no I/O).

One user is one task, so ``users.count`` is K and ``users.alpha`` the pair's acceptance (the
``--users`` and ``--alpha`` flags); each task's prompt, output, distance to the small cell and
power are drawn from the ranges here with ``sim.seed``, unless ``[[hetnet.tasks]]`` lists them.
The fronthaul is the deployment's link between the drafter and the verifier
(``[[deployment.links]]``), its rate and one-way delay; the small cell's and the macro cell's
compute are the affine models here, or their GPUs' rooflines with ``time_mode = "roofline"``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from channel_models.two_tier import TwoTierConfig, drop
from emu.errors import ConfigError, check_in
from emu.planner.hetnet.model import (
    DISCIPLINES,
    OBJECTIVES,
    TIME_MODES,
    HetnetProblem,
    Roofline,
    Task,
)
from emu.planner.model import LatencyModel, ModelArch
from emu.scenario.compute import ArchConfig, LatencyConfig
from nodes.batched import ACCEPTANCE_MODES

__all__ = ["ARRIVAL_PROCESSES", "ArrivalsConfig", "GpuConfig", "HetnetConfig", "TaskConfig",
           "hetnet_problem"]  # fmt: skip

ARRIVAL_PROCESSES = ("batch", "poisson", "trace")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskConfig:
    """One task of ``[[hetnet.tasks]]``; ``alpha`` 0 takes ``users.alpha``."""

    input_len: int
    output_len: int
    distance_m: float = 100.0
    power_w: float = 0.2
    alpha: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuConfig:
    """A server's GPU for ``time_mode = "roofline"``: peak FLOP/s and memory bandwidth."""

    peak_flops: float = 0.0
    memory_bw_bps: float = 0.0  # bytes per second
    compute_efficiency: float = 0.5
    memory_efficiency: float = 0.8
    launch_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalsConfig:
    """``[hetnet.arrivals]``: when the tasks arrive, and how often the small cells plan.
    ``batch`` (the paper's): every task at the start, planned at once; ``poisson``: at
    ``rate_per_s`` (the first after one gap), drawn with ``sim.seed``; ``trace``: at
    ``times_s``, one a task. Arrived tasks are planned every ``window_s`` (0: at each
    arrival)."""

    process: str = "batch"
    rate_per_s: float = 1.0
    times_s: tuple[float, ...] = ()
    window_s: float = 1.0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise ConfigError(
                f"hetnet.arrivals.process must be one of {', '.join(ARRIVAL_PROCESSES)}, "
                f"got {self.process!r}"
            )
        _positive("hetnet.arrivals.rate_per_s", self.rate_per_s)
        check_in(
            "hetnet.arrivals.window_s", self.window_s, 0, 1e6, "in [0, 1e6] (0: at each arrival)"
        )
        for i, t in enumerate(self.times_s):
            if not (isinstance(t, int | float) and math.isfinite(t) and t >= 0):
                raise ConfigError(
                    f"hetnet.arrivals.times_s[{i}] must be a time >= 0 [s], got {t!r}"
                )
        if self.process == "trace" and not self.times_s:
            raise ConfigError("hetnet.arrivals.times_s must list a time a task for process = trace")

    def times_ms(self, count: int, seed: int) -> list[float]:
        """Each of ``count`` tasks' arrival [ms]."""
        if self.process == "batch":
            return [0.0] * count
        if self.process == "trace":
            if len(self.times_s) != count:
                raise ConfigError(
                    f"hetnet.arrivals.times_s lists {len(self.times_s)} times and users.count "
                    f"is {count}: one a task"
                )
            return [1e3 * float(t) for t in self.times_s]
        gaps = np.random.default_rng([seed, 3]).exponential(1.0 / self.rate_per_s, count)
        return [float(t) for t in 1e3 * np.cumsum(gaps)]


def _range(where: str, pair: tuple[float, ...], lo: float) -> None:
    if len(pair) != 2 or not (math.isfinite(pair[0]) and lo <= pair[0] <= pair[1]):
        raise ConfigError(
            f"{where} must be [low, high] with {lo:g} <= low <= high, got {list(pair)}"
        )


def _positive(where: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetConfig:
    input_len: tuple[int, ...] = (32, 512)  # each task's prompt, uniform in [low, high] [tokens]
    output_len: tuple[int, ...] = (64, 512)  # its expected output [tokens]
    distance_m: tuple[float, ...] = (20.0, 250.0)  # to the small cell [m]
    power_w: float = 0.2  # every task's uplink transmit power [W]
    tasks: tuple[TaskConfig, ...] = ()  # listed tasks instead of drawn ones (users.count of them)
    bandwidth_hz: float = 10e6  # B: the uplink band, split among the tasks (FDMA)
    noise_dbm_per_hz: float = -174.0  # N0
    bits_per_token: int = 16
    prob_bits: int = 16  # one probability of a draft's distribution on the fronthaul
    vocab: int = 32000  # the distribution's entries
    overhead_bits: int = 0  # a fronthaul message's header
    max_draft_len: int = 8  # l_max
    max_batch: int = 128  # b_max: tasks a batch
    objective: str = "sum"  # sum of the tasks' latencies | makespan
    discipline: str = "priority"  # a server serves the plan's earliest batch first | fifo
    time_mode: str = "affine"  # affine (the latency models) | roofline (the GPUs)
    acceptance: str = "sampled"  # the synthetic verifier's (sim): sampled | expected
    draft: ArchConfig = field(default_factory=ArchConfig)  # the small cell's model
    target: ArchConfig = field(default_factory=ArchConfig)  # the macro cell's
    draft_context: int = 2048  # the draft model's context [tokens]
    target_context: int = 2048
    draft_latency: LatencyConfig = field(default_factory=LatencyConfig)
    verify_latency: LatencyConfig = field(default_factory=LatencyConfig)
    draft_gpu: GpuConfig = field(default_factory=GpuConfig)
    verify_gpu: GpuConfig = field(default_factory=GpuConfig)
    radio: TwoTierConfig | None = None  # [hetnet.radio]: the two tiers place the tasks
    arrivals: ArrivalsConfig = field(default_factory=ArrivalsConfig)  # [hetnet.arrivals]
    # Each task's own acceptance: users.alpha (or its listed one) + U(-spread, spread); the
    # planner is told it (alpha_known) or only users.alpha; learn_alpha: the small cell learns
    # it from the verdicts and chooses each round's length with it (sim).
    alpha_spread: float = 0.0
    alpha_known: bool = True
    learn_alpha: bool = False

    def __post_init__(self) -> None:
        _range("hetnet.input_len", self.input_len, 1)
        _range("hetnet.output_len", self.output_len, 1)
        _range("hetnet.distance_m", self.distance_m, 1e-3)
        for name in ("power_w", "bandwidth_hz"):
            _positive(f"hetnet.{name}", getattr(self, name))
        check_in("hetnet.noise_dbm_per_hz", self.noise_dbm_per_hz, -250, 0, "in [-250, 0]")
        check_in("hetnet.bits_per_token", self.bits_per_token, 1, 64, "in [1, 64]")
        check_in("hetnet.prob_bits", self.prob_bits, 0, 64, "in [0, 64] (0: tokens alone)")
        check_in("hetnet.vocab", self.vocab, 1, 10**7, "in [1, 1e7]")
        check_in("hetnet.overhead_bits", self.overhead_bits, 0, 10**6, "in [0, 1e6]")
        check_in("hetnet.max_draft_len", self.max_draft_len, 1, 64, "in [1, 64]")
        check_in("hetnet.max_batch", self.max_batch, 1, 10**6, "an integer >= 1")
        for name, value, allowed in (
            ("objective", self.objective, OBJECTIVES),
            ("discipline", self.discipline, DISCIPLINES),
            ("time_mode", self.time_mode, TIME_MODES),
            ("acceptance", self.acceptance, ACCEPTANCE_MODES),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"hetnet.{name} must be one of {', '.join(allowed)}, got {value!r}"
                )
        check_in("hetnet.alpha_spread", self.alpha_spread, 0, 0.45, "in [0, 0.45]")
        for name in ("alpha_known", "learn_alpha"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"hetnet.{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name in ("draft_context", "target_context"):
            check_in(f"hetnet.{name}", getattr(self, name), 1, 10**8, "an integer >= 1")
        if self.time_mode == "roofline":
            for name in ("draft_gpu", "verify_gpu"):
                gpu = getattr(self, name)
                _positive(f"hetnet.{name}.peak_flops", gpu.peak_flops)
                _positive(f"hetnet.{name}.memory_bw_bps", gpu.memory_bw_bps)
                for eff in ("compute_efficiency", "memory_efficiency"):
                    check_in(f"hetnet.{name}.{eff}", getattr(gpu, eff), 1e-6, 1, "in (0, 1]")
                check_in(f"hetnet.{name}.launch_ms", gpu.launch_ms, 0, 1e4, "in [0, 1e4]")

    def task_list(self, count: int, alpha: float, seed: int) -> tuple[Task, ...]:
        """The K = ``count`` tasks: the listed ones, or drawn from the ranges with ``seed``;
        each one checked against the models' contexts."""
        if self.tasks:
            if len(self.tasks) != count:
                raise ConfigError(
                    f"hetnet.tasks lists {len(self.tasks)} tasks and users.count is {count}: "
                    "one task a user"
                )
            tasks = tuple(
                Task(
                    input_len=t.input_len,
                    output_len=t.output_len,
                    distance_m=t.distance_m,
                    power_w=t.power_w,
                    alpha=t.alpha or alpha,
                )
                for t in self.tasks
            )
            where = "hetnet.tasks"
        else:
            rng = np.random.default_rng(seed)
            (i_lo, i_hi), (o_lo, o_hi) = self.input_len, self.output_len
            d_lo, d_hi = self.distance_m
            tasks = tuple(
                Task(
                    input_len=int(rng.integers(i_lo, i_hi, endpoint=True)),
                    output_len=int(rng.integers(o_lo, o_hi, endpoint=True)),
                    distance_m=float(rng.uniform(d_lo, d_hi)),
                    power_w=self.power_w,
                    alpha=alpha,
                )
                for _ in range(count)
            )
            where = "hetnet.tasks (drawn)"
        for k, task in enumerate(tasks):
            task.check(k, where=where)
            need = task.input_len + task.output_len + self.max_draft_len
            for name in ("draft", "target"):
                context = getattr(self, f"{name}_context")
                if need > context:
                    raise ConfigError(
                        f"{where}[{k}]: its prompt ({task.input_len}), output "
                        f"({task.output_len}) and a draft (hetnet.max_draft_len "
                        f"{self.max_draft_len}) must fit the {name} model's context "
                        f"(hetnet.{name}_context {context}), got {need} tokens"
                    )
        return tasks

    def placed(
        self, tasks: tuple[Task, ...], seed: int
    ) -> tuple[tuple[Task, ...], tuple[float, ...]]:
        """The tasks where the two tiers drop them (``[hetnet.radio]``), each in the small cell it
        hears best, with its distance and path gain; and each small cell's interference [dBm/Hz]
        (empty: none). Small cells no task attached to are left out, the rest numbered 0.. in
        order."""
        if self.radio is None:
            return tasks, ()
        rng = np.random.default_rng([seed, 2])  # its own stream: the tasks' lengths stay put
        power = [t.power_w for t in tasks]
        at = drop(self.radio, len(tasks), rng, power_w=power, bandwidth_hz=self.bandwidth_hz)
        used = [int(c) for c in np.unique(at.cell)]
        number = {c: i for i, c in enumerate(used)}
        placed = tuple(
            dataclasses.replace(
                t,
                cell=number[int(at.cell[k])],
                distance_m=float(at.distance_m[k]),
                gain_db=float(at.gain_db[k]),
            )
            for k, t in enumerate(tasks)
        )
        shared = self.radio.reuse == "shared"
        return placed, tuple(float(at.interference_dbm_per_hz[c]) for c in used) if shared else ()


def _arch(where: str, a: ArchConfig) -> ModelArch:
    return ModelArch(layers=a.layers, hidden=a.hidden, ffn=a.ffn, name=where)


def _roofline(g: GpuConfig) -> Roofline:
    return Roofline(
        peak_flops=g.peak_flops,
        memory_bw_bps=g.memory_bw_bps,
        compute_efficiency=g.compute_efficiency,
        memory_efficiency=g.memory_efficiency,
        launch_ms=g.launch_ms,
    )


def hetnet_problem(
    h: HetnetConfig,
    *,
    count: int,
    alpha: float,
    seed: int,
    fronthauls: list[tuple[float, float]],
) -> HetnetProblem:
    """The planning instance ``[hetnet]`` describes, with K = ``count`` tasks and the
    deployment's fronthauls [(bit/s, one-way ms)]: one for every small cell, or one a cell."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"users.alpha (the pair's acceptance) must be in (0, 1), got {alpha!r}")
    roof = h.time_mode == "roofline"
    tasks, interference = h.placed(h.task_list(count, alpha, seed), seed)
    arrivals = h.arrivals.times_ms(count, seed)
    tasks = tuple(
        dataclasses.replace(t, arrival_ms=a) for t, a in zip(tasks, arrivals, strict=True)
    )
    if h.alpha_spread > 0:  # its own stream: the lengths, places and arrivals stay put
        shift = np.random.default_rng([seed, 4]).uniform(-h.alpha_spread, h.alpha_spread, count)
        tasks = tuple(
            dataclasses.replace(
                t,
                alpha=float(np.clip(t.alpha + d, 0.02, 0.98)),
                prior_alpha=None if h.alpha_known else t.alpha,
            )
            for t, d in zip(tasks, shift, strict=True)
        )
    cells = 1 + max(t.cell for t in tasks)
    if len(fronthauls) not in (1, cells):
        raise ConfigError(
            f"deployment: {len(fronthauls)} small-cell drafters for {cells} small cells with "
            "tasks (hetnet.radio): give one drafter (every cell's fronthaul its link's) or one "
            "a cell"
        )
    return HetnetProblem(
        tasks=tasks,
        draft=_arch("hetnet.draft", h.draft),
        target=_arch("hetnet.target", h.target),
        draft_latency=LatencyModel(
            name="hetnet.draft_latency",
            c_ms_per_flop=h.draft_latency.c_ms_per_flop,
            beta_ms=h.draft_latency.beta_ms,
        ),
        verify_latency=LatencyModel(
            name="hetnet.verify_latency",
            c_ms_per_flop=h.verify_latency.c_ms_per_flop,
            beta_ms=h.verify_latency.beta_ms,
        ),
        time_mode=h.time_mode,
        draft_roofline=_roofline(h.draft_gpu) if roof else None,
        verify_roofline=_roofline(h.verify_gpu) if roof else None,
        bandwidth_hz=h.bandwidth_hz,
        noise_dbm_per_hz=h.noise_dbm_per_hz,
        bits_per_token=h.bits_per_token,
        fronthaul_bps=fronthauls[0][0],
        fronthaul_latency_ms=fronthauls[0][1],
        fronthauls=tuple(fronthauls) if len(fronthauls) > 1 else (),
        interference_dbm_per_hz=interference,
        prob_bits=h.prob_bits,
        vocab=h.vocab,
        overhead_bits=h.overhead_bits,
        max_draft_len=h.max_draft_len,
        max_batch=h.max_batch,
        objective=h.objective,
        discipline=h.discipline,
        window_ms=1e3 * h.arrivals.window_s,
    )
