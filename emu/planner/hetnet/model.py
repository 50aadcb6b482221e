"""The heterogeneous-edge system's problem: tasks uploaded over a shared band to a small cell
that drafts for batches of them, verified at a macro cell over a fronthaul
(``../shared/systems/hetnet.md``, arXiv 2510.11331 as draftnet reconstructs it).

Layer: pure (emu.planner). Units are in the names: ``*_ms`` milliseconds, ``*_hz`` hertz,
``*_bps`` bits per second, ``*_bits``; FLOPs are plain floats.

The FLOPs templates are the paper's (draft prefill F1, draft decode F2) and DiP-SD's verify
term with L = l + 1 (``draft_flops`` and ``verify_flops``, shared). Their FFN term counts two
matrices where LLaMA's SwiGLU has three: the paper's form, kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu.errors import ConfigError
from emu.planner.model import FloatArray, LatencyModel, ModelArch, draft_flops, verify_flops

__all__ = [
    "DISCIPLINES",
    "OBJECTIVES",
    "ROUNDS",
    "TIME_MODES",
    "HetnetProblem",
    "Roofline",
    "Stage",
    "Task",
    "expected_max_rounds",
    "expected_tokens_per_round",
    "prefill_flops",
]

TIME_MODES = ("affine", "roofline")
Num = float | FloatArray  # a number, or an array of them elementwise
OBJECTIVES = ("sum", "makespan")
DISCIPLINES = ("priority", "fifo")  # how a server picks among ready stages (evaluate.py)
# A batch's rounds: ceil(O_m / L_m) (the paper's fixed output, every round committing L tokens)
# or the expected rounds of its slowest task when each round's acceptance is sampled.
ROUNDS = ("expected", "sampled")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One user's request: its prompt (``input_len``) and expected output (``output_len``)
    tokens, its uplink (its small cell, the distance to it, its path gain, transmit power) and
    its acceptance. ``gain_db`` None is the paper's law at ``distance_m`` (hetnet.md 3.4); the
    two-tier radio (``channel_models.two_tier``) gives it with shadowing and its own law.
    ``arrival_ms`` is when the user asks (0: at the start, the paper's offline batch); its
    latency counts from then. ``prior_alpha`` is the acceptance the planner is told where it
    is not the task's own (``HetnetProblem.believed``); None: the planner knows ``alpha``."""

    input_len: int
    output_len: int
    distance_m: float = 100.0
    power_w: float = 0.2
    alpha: float = 0.75
    cell: int = 0
    gain_db: float | None = None
    arrival_ms: float = 0.0
    prior_alpha: float | None = None

    def check(self, k: int, *, where: str = "hetnet.tasks") -> None:
        """ConfigError naming ``where[k]``'s field unless every field is in its range."""
        for name in ("input_len", "output_len"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{where}[{k}].{name} must be an integer >= 1, got {v!r}")
        _positive(f"{where}[{k}].distance_m", self.distance_m)
        _positive(f"{where}[{k}].power_w", self.power_w)
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"{where}[{k}].alpha must be in (0, 1), got {self.alpha!r}")
        if not (isinstance(self.cell, int) and self.cell >= 0):
            raise ConfigError(f"{where}[{k}].cell must be an integer >= 0, got {self.cell!r}")
        if self.gain_db is not None and not (math.isfinite(self.gain_db) and self.gain_db < 0):
            raise ConfigError(
                f"{where}[{k}].gain_db must be a finite number < 0, got {self.gain_db!r}"
            )
        if self.prior_alpha is not None and not 0.0 < self.prior_alpha < 1.0:
            raise ConfigError(
                f"{where}[{k}].prior_alpha must be in (0, 1), got {self.prior_alpha!r}"
            )
        if not (math.isfinite(self.arrival_ms) and self.arrival_ms >= 0):
            raise ConfigError(
                f"{where}[{k}].arrival_ms must be a finite number >= 0, got {self.arrival_ms!r}"
            )


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a batch (``evaluate.stages_of``): it holds ``resource`` for ``hold_ms``,
    and the next step may start ``after_ms`` after it ends (a fronthaul's latency)."""

    round: int  # 0: the prefill; 1..R: the rounds
    what: str  # prefill | draft | up | verify | down
    resource: str
    hold_ms: float
    after_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Roofline:
    """A pass's time bound by compute or by memory traffic: max(n F / (eta_c C), (W + n KV(c))
    / (eta_m BW)) + launch [ms], for n tasks of F FLOPs each at KV length c."""

    peak_flops: float  # C_peak [FLOP/s]
    memory_bw_bps: float  # BW_mem [bytes/s]
    compute_efficiency: float = 0.5  # eta_c
    memory_efficiency: float = 0.8  # eta_m
    launch_ms: float = 0.0

    def __post_init__(self) -> None:
        _positive("roofline.peak_flops", self.peak_flops)
        _positive("roofline.memory_bw_bps", self.memory_bw_bps)
        for name in ("compute_efficiency", "memory_efficiency"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"roofline.{name} must be in (0, 1], got {v!r}")
        if self.launch_ms < 0:
            raise ConfigError(f"roofline.launch_ms must be >= 0, got {self.launch_ms!r}")

    def time_ms(self, arch: ModelArch, n: Num, flops: Num, kv_len: Num) -> FloatArray:
        """Elementwise over arrays of batch sizes, FLOPs and KV lengths."""
        compute_s = np.asarray(n) * flops / (self.compute_efficiency * self.peak_flops)
        traffic = arch.weight_bytes + np.asarray(n) * arch.kv_bytes(kv_len)
        memory_s = traffic / (self.memory_efficiency * self.memory_bw_bps)
        return np.asarray(1000.0 * np.maximum(compute_s, memory_s) + self.launch_ms)


def prefill_flops(arch: ModelArch, prompt: float | FloatArray) -> FloatArray:
    """F1 = 4 J h I (2 h + I + f): FLOPs to prefill a prompt of I tokens."""
    h, f = arch.hidden, arch.ffn
    i = np.asarray(prompt, dtype=np.float64)
    return np.asarray(4.0 * arch.layers * h * i * (2.0 * h + i + f))


def expected_tokens_per_round(alpha: float, draft_len: int) -> float:
    """L(l, a) = (1 - a^(l+1)) / (1 - a): tokens a verification commits, its bonus included."""
    return (1.0 - alpha ** (draft_len + 1)) / (1.0 - alpha)


@functools.lru_cache(maxsize=4096)
def _rounds_cdf(output: int, alpha: float, draft_len: int) -> tuple[float, ...]:
    """P(N <= r), r = 0, 1, ...: N the rounds a task needs for ``output`` tokens when a round
    commits j tokens with probability a^(j-1) (1 - a) (j <= l) or a^l (j = l + 1): each draft
    token accepted with probability a until the first rejection, and the bonus."""
    pmf = np.array([0.0, *(alpha ** (j - 1) * (1 - alpha) for j in range(1, draft_len + 1)),
                    alpha**draft_len])  # fmt: skip
    dist = np.zeros(output + 1)  # tokens so far, the last entry "output or more"
    dist[0] = 1.0
    cdf = [0.0]
    while cdf[-1] < 1.0 - 1e-12 and len(cdf) <= output:
        step = np.convolve(dist, pmf)
        step[output] += step[output + 1 :].sum()
        dist = step[: output + 1]
        cdf.append(float(dist[output]))
    cdf[-1] = 1.0  # after ``output`` rounds every task is done (a round commits >= 1 token)
    return tuple(cdf)


def expected_max_rounds(members: Sequence[tuple[int, float]], draft_len: int) -> float:
    """E[max_k N_k] over a batch's tasks (output, alpha): the rounds the batch runs when each
    round's acceptance is sampled and the batch waits for its slowest task."""
    cdfs = [_rounds_cdf(out, round(a, 12), draft_len) for out, a in members]
    horizon = max(len(c) for c in cdfs)
    all_done = np.ones(horizon)
    for c in cdfs:
        all_done *= np.concatenate([c, np.ones(horizon - len(c))])
    return float(np.sum(1.0 - all_done))


@dataclass(frozen=True, slots=True, kw_only=True)
class HetnetProblem:
    """Everything the planner and the evaluator need (hetnet.md section 6 for the values).

    Tasks may be in several small cells (``Task.cell``, 0..cells - 1, each with a task). Each
    small cell has a server, a band of ``bandwidth_hz`` and a fronthaul of its own (``fronthauls``
    [(bit/s, one-way ms)] a cell; empty: every one ``fronthaul_bps``, ``fronthaul_latency_ms``),
    and hears ``interference_dbm_per_hz`` over the noise (one a cell; empty: none). The macro
    cell's server is the one they share.

    Tasks that arrive over time (``Task.arrival_ms``) are planned a window at a time: every
    ``window_ms`` the tasks that arrived since the last window closed are planned as a problem
    of their own (``emu.planner.hetnet.online``); 0 plans each arrival as it comes."""

    tasks: tuple[Task, ...]
    draft: ModelArch
    target: ModelArch
    draft_latency: LatencyModel  # affine: G(n, F) = c n F + beta at the small cell
    verify_latency: LatencyModel  # ... and at the macro cell
    time_mode: str = "affine"  # or "roofline" (the two below)
    draft_roofline: Roofline | None = None
    verify_roofline: Roofline | None = None
    bandwidth_hz: float = 10e6  # B: the uplink band the tasks share (FDMA)
    noise_dbm_per_hz: float = -174.0  # N0
    bits_per_token: int = 16  # b_tok
    fronthaul_bps: float = 10e9  # R_F
    fronthaul_latency_ms: float = 0.1  # tau_F, one way
    prob_bits: int = 16  # b_prob: one probability of a draft distribution
    vocab: int = 32000  # V: the entries of a full distribution
    overhead_bits: int = 0  # h_ovh: a message's header
    max_draft_len: int = 8  # l_max
    max_batch: int = 0  # b_max; 0: every task
    objective: str = "sum"  # or "makespan"
    discipline: str = "priority"  # or "fifo" (hetnet.md 3.5's)
    rounds: str = "expected"  # or "sampled" (ROUNDS; expected_max_rounds)
    reference_bandwidth_hz: float = field(default=0.0)  # B_ref; 0: B / K of the task's cell
    fronthauls: tuple[tuple[float, float], ...] = ()  # (R_F, tau_F) a small cell
    interference_dbm_per_hz: tuple[float, ...] = ()  # a small cell's (-inf: none)
    window_ms: float = 0.0  # re-planning period under arrivals (0: at each arrival)
    # When a server or link is first free [ms] by its name (sbs, mbs, fh_up1, ...): the work
    # the earlier windows left on it, for planning a window (online.py); absent: at 0.
    free_at_ms: tuple[tuple[str, float], ...] = ()
    # ... and the earlier windows' batches still running then: each one's next stage's ready
    # time [ms] and its stages left, served before the plan's batches (``priority``).
    carried: tuple[tuple[float, tuple[Stage, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("hetnet.tasks must hold at least one task")
        for k, task in enumerate(self.tasks):
            task.check(k)
        _positive("hetnet.bandwidth_hz", self.bandwidth_hz)
        _positive("hetnet.fronthaul_bps", self.fronthaul_bps)
        tau = self.fronthaul_latency_ms
        if not (math.isfinite(tau) and tau >= 0):
            raise ConfigError(f"hetnet.fronthaul_latency_ms must be >= 0, got {tau!r}")
        if self.time_mode not in TIME_MODES:
            raise ConfigError(
                f"hetnet.time_mode must be one of {', '.join(TIME_MODES)}, got {self.time_mode!r}"
            )
        if self.time_mode == "roofline" and (
            self.draft_roofline is None or self.verify_roofline is None
        ):
            raise ConfigError("hetnet.time_mode = roofline needs both servers' rooflines")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"hetnet.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.discipline not in DISCIPLINES:
            raise ConfigError(
                f"hetnet.discipline must be one of {', '.join(DISCIPLINES)}, "
                f"got {self.discipline!r}"
            )
        if self.rounds not in ROUNDS:
            raise ConfigError(f"rounds must be one of {', '.join(ROUNDS)}, got {self.rounds!r}")
        if not (isinstance(self.max_draft_len, int) and self.max_draft_len >= 1):
            raise ConfigError(f"hetnet.max_draft_len must be >= 1, got {self.max_draft_len!r}")
        if not (isinstance(self.max_batch, int) and self.max_batch >= 0):
            raise ConfigError(
                f"hetnet.max_batch must be >= 1 (or 0: every task), got {self.max_batch!r}"
            )
        used = {t.cell for t in self.tasks}
        if used != set(range(len(used))):
            raise ConfigError(
                f"hetnet.tasks' cells must be 0..{len(used) - 1}, each with a task, got "
                f"{sorted(used)}"
            )
        for name in ("fronthauls", "interference_dbm_per_hz"):
            given = len(getattr(self, name))
            if given not in (0, self.cells):
                raise ConfigError(
                    f"hetnet.{name} must give one a small cell ({self.cells}), got {given}"
                )
        if not (math.isfinite(self.window_ms) and self.window_ms >= 0):
            raise ConfigError(
                f"hetnet.arrivals.window_s must be >= 0, got {self.window_ms / 1e3!r}"
            )
        for c, (bps, tau_ms) in enumerate(self.fronthauls):
            _positive(f"hetnet.fronthauls[{c}] rate", bps)
            if not (math.isfinite(tau_ms) and tau_ms >= 0):
                raise ConfigError(f"hetnet.fronthauls[{c}] latency must be >= 0, got {tau_ms!r}")

    @property
    def size(self) -> int:
        return len(self.tasks)

    @property
    def batch_cap(self) -> int:
        return self.max_batch or self.size

    @property
    def lengths(self) -> tuple[int, ...]:
        """The speculation lengths a batch may have: 0 (the target alone, decoding a token a
        pass, where drafting does not pay) to l_max."""
        return tuple(range(self.max_draft_len + 1))

    @property
    def cells(self) -> int:
        """The small cells."""
        return 1 + max(t.cell for t in self.tasks)

    def members(self, cell: int) -> tuple[int, ...]:
        """The tasks of a small cell."""
        return tuple(k for k, t in enumerate(self.tasks) if t.cell == cell)

    def believed(self) -> HetnetProblem:
        """The problem as the planner is told it: each task's acceptance its ``prior_alpha``
        where it has one (the evaluator of the problem itself is the truth)."""
        if all(t.prior_alpha is None for t in self.tasks):
            return self
        told = tuple(
            t if t.prior_alpha is None else dataclasses.replace(t, alpha=t.prior_alpha,
                                                                 prior_alpha=None)
            for t in self.tasks
        )  # fmt: skip
        return dataclasses.replace(self, tasks=told)

    @property
    def online(self) -> bool:
        """Whether any task arrives after the start (planned a window at a time)."""
        return any(t.arrival_ms > 0 for t in self.tasks)

    def subset(self, tasks: Sequence[int]) -> HetnetProblem:
        """The problem of ``tasks`` alone (numbered 0.. in that order): their small cells
        numbered 0.. in order, each with its fronthaul and interference."""
        used = sorted({self.tasks[k].cell for k in tasks})
        number = {c: i for i, c in enumerate(used)}
        rise = self.interference_dbm_per_hz
        return dataclasses.replace(
            self,
            tasks=tuple(
                dataclasses.replace(self.tasks[k], cell=number[self.tasks[k].cell]) for k in tasks
            ),
            fronthauls=tuple(self.fronthaul(c) for c in used) if self.fronthauls else (),
            interference_dbm_per_hz=tuple(rise[c] for c in used) if rise else (),
        )

    def fronthaul(self, cell: int) -> tuple[float, float]:
        """A small cell's fronthaul: its rate [bit/s] and one-way latency [ms]."""
        if self.fronthauls:
            return self.fronthauls[cell]
        return self.fronthaul_bps, self.fronthaul_latency_ms

    def cell_suffix(self, cell: int) -> str:
        """What names a small cell's resources and node: its number where there are several
        (``sbs1``, ``fh_up1``), nothing where there is one (``sbs``)."""
        return str(cell) if self.cells > 1 else ""

    def even_share_hz(self) -> FloatArray:
        """B / K of each task's small cell: its band split evenly among its tasks."""
        per_cell = np.bincount([t.cell for t in self.tasks])
        return np.array([self.bandwidth_hz / per_cell[t.cell] for t in self.tasks])

    def reference_band_hz(self) -> FloatArray:
        """B_ref of each task: ``reference_bandwidth_hz``, or B over its small cell's tasks."""
        if self.reference_bandwidth_hz:
            return np.full(self.size, self.reference_bandwidth_hz)
        return self.even_share_hz()

    def noise_w_per_hz(self) -> FloatArray:
        """Each task's noise at its small cell [W/Hz]: N0 and the cell's interference."""
        n0_w = 10.0 ** ((self.noise_dbm_per_hz - 30.0) / 10.0)
        rise = [10.0 ** ((i - 30.0) / 10.0) for i in self.interference_dbm_per_hz]
        return np.array([n0_w + (rise[t.cell] if rise else 0.0) for t in self.tasks])

    def pass_ms(self, where: str, n: Num, flops: Num, kv_len: Num) -> FloatArray:
        """A pass's time [ms] for n tasks of ``flops`` each at KV length ``kv_len``, at the
        small cell (``where = "draft"``) or the macro cell (``"verify"``); elementwise over
        arrays (the DP's surrogate) as over numbers (the evaluator)."""
        if self.time_mode == "roofline":
            roof = self.draft_roofline if where == "draft" else self.verify_roofline
            assert roof is not None
            return roof.time_ms(self.draft if where == "draft" else self.target, n, flops, kv_len)
        lat = self.draft_latency if where == "draft" else self.verify_latency
        return np.asarray(lat.c_ms_per_flop * np.asarray(n) * flops + lat.beta_ms)

    def _time(self, where: str, n: int, flops: float, kv_len: float) -> float:
        return float(self.pass_ms(where, n, flops, kv_len))

    def draft_prefill_ms(self, n: int, prompt: int) -> float:
        return self._time("draft", n, float(prefill_flops(self.draft, prompt)), prompt)

    def draft_ms(self, n: int, context: int, draft_len: int) -> float:
        """``draft_len`` decode steps from KV length ``context`` (F2 at c, c + 1, ...)."""
        return sum(
            self._time("draft", n, float(draft_flops(self.draft, context + i)), context + i)
            for i in range(draft_len)
        )

    def verify_ms(self, n: int, context: int, draft_len: int, *, prefill: int = 0) -> float:
        """One verification of ``draft_len`` drafts and the bonus at KV length ``context``,
        with the target's prefill of a ``prefill``-token prompt added (the first round)."""
        flops = float(verify_flops(self.target, draft_len + 1, context))
        if prefill:
            flops += float(prefill_flops(self.target, prefill))
        return self._time("verify", n, flops, context)

    def verify_prefill_ms(self, n: int, prompt: int) -> float:
        """The target's prefill of a ``prompt``-token prompt alone (autoregressive decoding)."""
        return self._time("verify", n, float(prefill_flops(self.target, prompt)), prompt)

    # Fronthaul messages [bits] of a batch of n tasks (elementwise over arrays too).
    def fronthaul_up_bits(self, n: Num, draft_len: Num, *, prompt: int = 0) -> Any:
        per_task = draft_len * (self.bits_per_token + self.vocab * self.prob_bits)
        return n * (per_task + self.overhead_bits + prompt * self.bits_per_token)

    def fronthaul_down_bits(self, n: Num) -> Any:
        verdict = math.log2(self.max_draft_len + 1) + self.bits_per_token + self.overhead_bits
        return n * verdict

    def fronthaul_transfer_ms(self, bits: Any, cell: int = 0) -> Any:
        """How long ``bits`` hold a small cell's fronthaul (its latency comes on top, not
        holding it)."""
        return 1000.0 * bits / self.fronthaul(cell)[0]
