"""A scenario's typed sections: every field with its default and its rule.

Layer: emu (orchestration); reads files. Every field has a default (the embedded default
scenario, ``emu/presets/default.toml``). A file may start from a built-in preset
(``preset = "dipsd-paper"``) and change any field. Command-line flags are applied generically
as dotted-path overrides, after the file. Unknown keys, wrong types and out-of-range values raise
``ConfigError`` with the field's dotted name, the value and the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from channel_models.config import RadioConfig
from channel_models.trace import IntArray, from_mahimahi
from emu.errors import ConfigError, check_in
from emu.planner.dsd.model import DsdProblem
from emu.planner.hetnet.model import HetnetProblem
from emu.planner.lattice import Lattice, LinkNoise
from emu.planner.model import Edge, LatencyModel, ModelArch, Problem, User
from emu.scenario.compute import ArchConfig, LatencyConfig
from emu.scenario.deployment import DeploymentConfig
from emu.scenario.dsd import DsdConfig, dsd_problem
from emu.scenario.faults import FaultsConfig
from emu.scenario.hetnet import HetnetConfig, hetnet_problem
from nodes.core.guard import Limits
from nodes.core.runtime import RuntimeConfig
from nodes.core.systems import get_system
from nodes.protocol.events import MAX_TOP_K

__all__ = ["MAX_TIME_SCALE", "MODEL_KINDS", "PRESETS", "SHAPING", "TIMING", "Scenario"]

PRESETS = ("default", "dipsd-paper", "hetnet", "dsd", "dsd-full")
NETWORK_MODELS = ("fixed", "radio", "trace")
_TOP_ENTRY_BYTES = 14  # one top-k entry of a draft on the wire: an id (<= 5) and a float64 (9)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserOverride:
    """Fields one user may set for itself; unset ones come from [users] (``jitter_ms`` and
    ``loss``, its link's on fixed and traced links, from [network]).

    ``comm_noise_ms``: its link time per round beyond ``comm_ms``, as equally likely values
    [ms]. The planner takes it instead of what the links' jitter and loss imply; the links
    themselves are unchanged. A measured distribution goes here. On radio links the runners
    plan with the radio series instead, and an emulation gives its nodes each user's series
    this way.
    """

    alpha: float | None = None
    prefix_len: int | None = None
    comm_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    comm_noise_ms: tuple[float, ...] | None = None
    draft: ArchConfig | None = None
    device: LatencyConfig | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersConfig:
    count: int = 1
    alpha: float = 0.5
    prefix_len: int = 0
    comm_ms: float = 0.0
    draft: ArchConfig = field(default_factory=ArchConfig)
    device: LatencyConfig = field(default_factory=LatencyConfig)
    each: tuple[UserOverride, ...] = ()

    def __post_init__(self) -> None:
        for m, o in enumerate(self.each):
            if o.jitter_ms is not None:
                check_in(f"users.each[{m}].jitter_ms", o.jitter_ms, 0, 1e5, "in [0, 1e5]")
            if o.loss is not None:
                check_in(f"users.each[{m}].loss", o.loss, 0, 0.5, "in [0, 0.5]")
            if o.comm_noise_ms is not None:
                _check_noise(f"users.each[{m}].comm_noise_ms", o.comm_noise_ms)

    def override(self, m: int) -> UserOverride:
        """What user ``m`` sets for itself (nothing past the listed ones)."""
        return self.each[m] if m < len(self.each) else UserOverride()


# The most values a user's comm_noise_ms may list.
MAX_NOISE_VALUES = 4096


def _check_noise(where: str, values: tuple[float, ...]) -> None:
    ok = 0 < len(values) <= MAX_NOISE_VALUES and all(
        isinstance(v, int | float) and math.isfinite(v) and abs(v) <= 1e5 for v in values
    )
    if not ok:
        raise ConfigError(
            f"{where} must list 1 to {MAX_NOISE_VALUES} finite numbers of ms in [-1e5, 1e5], "
            f"got {_preview(values)}"
        )


def _preview(values: tuple[float, ...]) -> str:
    shown = ", ".join(repr(v) for v in values[:4])
    return f"[{shown}{', ...' if len(values) > 4 else ''}] ({len(values)} values)"


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    memory_bytes: float = 1.0
    target: ArchConfig = field(default_factory=ArchConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerConfig:
    policy: str = "dipsd"
    max_draft_len: int = 20
    initial_draft_len: int = 7
    fixed_draft_len: int = 7  # policy: one of the deployment's system's (checked by Scenario)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """Every user's link, both ways. ``model = "fixed"``: one-way delay users.comm_ms / 2 and
    the fields below; ``"radio"``: each user's uplink and downlink follow the [radio] model's
    link states (users.comm_ms is then taken from them); ``"trace"``: as fixed, with the rate
    of each direction from a recorded Mahimahi trace (``trace_up``, ``trace_down``: paths
    relative to the working directory; "" for an unlimited direction), the same for every
    user."""

    model: str = "fixed"
    rate_bps: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = 200.0
    trace_up: str = ""
    trace_down: str = ""

    def __post_init__(self) -> None:
        if self.model not in NETWORK_MODELS:
            raise ConfigError(
                f"network.model must be one of {', '.join(NETWORK_MODELS)}, got {self.model!r}"
            )
        if self.model == "trace":
            if not (self.trace_up or self.trace_down):
                raise ConfigError(
                    'network.model = "trace" needs network.trace_up or network.trace_down (a '
                    "Mahimahi trace file), got neither"
                )
            for name in ("trace_up", "trace_down"):
                self.trace(name)  # readable and a trace, or one line naming the field
            if self.rate_bps:
                raise ConfigError(
                    f"network.rate_bps is the traces' with network.model = trace: leave it 0, "
                    f"got {self.rate_bps!r}"
                )
        else:
            for name in ("trace_up", "trace_down"):
                if getattr(self, name):
                    raise ConfigError(
                        f"network.{name} needs network.model = trace, got model "
                        f"{self.model!r} and {name} {getattr(self, name)!r}"
                    )
        check_in("network.rate_bps", self.rate_bps, 0, math.inf, ">= 0 (0: unlimited)")
        check_in("network.jitter_ms", self.jitter_ms, 0, 1e5, "in [0, 1e5]")
        check_in("network.loss", self.loss, 0, 0.5, "in [0, 0.5]")
        check_in("network.rto_ms", self.rto_ms, 1, 1e5, "in [1, 1e5]")

    def trace(self, name: str) -> IntArray | None:
        """Delivery opportunities per millisecond of ``name`` (trace_up or trace_down), None
        for an unlimited direction."""
        path = getattr(self, name)
        if not path:
            return None
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"network.{name} {path!r} cannot be read: {exc.strerror}") from None
        per_ms = from_mahimahi(text, where=f"network.{name} {path!r}")
        if int(per_ms.sum()) == 0:
            raise ConfigError(f"network.{name} {path!r} has no delivery opportunity")
        return per_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    duration_s: float = 60.0
    seed: int = 0
    max_new_tokens: int = 0
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_in("sim.duration_s", self.duration_s, 0.001, 1e6, "in (0, 1e6]")
        check_in("sim.seed", self.seed, 0, 2**63 - 1, "an integer >= 0")
        check_in("sim.max_new_tokens", self.max_new_tokens, 0, 2**31 - 1, ">= 0 (0: no limit)")


SHAPING = ("auto", "tc", "userspace")
TIMING = ("profile", "real")
MAX_TIME_SCALE = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConfig:
    """What ``draftnet channel`` writes besides the series, the traces and the summary."""

    plots: bool = True  # SINR, rate and delay against time, and CDFs (after the summary)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmuConfig:
    """How ``draftnet run`` emulates: the links' shaper, the nodes' compute time, the time
    scale and what a link outside tolerance does."""

    shaping: str = "auto"  # auto | tc | userspace
    timing: str = "profile"  # profile: each step padded to its profile | real
    time_scale: float = 0.0  # every modelled time this many times slower; 0: auto (calibrated)
    strict: bool = False  # a link outside tolerance fails the run

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("emu.shaping", self.shaping, SHAPING),
            ("emu.timing", self.timing, TIMING),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.time_scale != 0.0:
            check_in(
                "emu.time_scale", self.time_scale, 1.0, MAX_TIME_SCALE,
                f"0 (auto) or in [1, {MAX_TIME_SCALE:g}]",
            )  # fmt: skip


MODEL_KINDS = ("synthetic", "embedded", "files")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelsConfig:
    """Which backends draft and verify: synthetic (Bernoulli acceptance, cost-model time; for
    the simulation and tests), the embedded pair, or the model files named here."""

    kind: str = "synthetic"
    draft: str = ""  # GGUF file (kind = "files")
    target: str = ""  # transformers checkpoint directory (kind = "files")
    device: str = "auto"  # the target's: auto | cpu | cuda[:N]
    dtype: str = ""  # the target's torch dtype; "": bf16 on CUDA, fp32 on the CPU
    temperature: float = 0.0  # 0: greedy drafting and verification
    top_k: int = 8  # sparse draft probabilities sent with sampled drafts
    draft_threads: int = 1  # llama.cpp threads per user
    verify_threads: int = 0  # torch threads of the verifier on a CPU; 0: emu.models.timing decides

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(
                f"models.kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "files" and not (self.draft and self.target):
            raise ConfigError(
                'models.kind = "files" needs models.draft (a GGUF) and models.target '
                f"(a checkpoint directory), got draft={self.draft!r} target={self.target!r}"
            )
        if self.kind != "files" and (self.draft or self.target):
            raise ConfigError(
                f'models.draft and models.target are only read with models.kind = "files", '
                f"got kind {self.kind!r}"
            )
        if self.dtype not in ("", "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"models.dtype must be '', float32, bfloat16 or float16, got {self.dtype!r}"
            )
        check_in("models.temperature", self.temperature, 0, 10, "in [0, 10]")
        check_in("models.top_k", self.top_k, 1, 1000, "in [1, 1000]")
        check_in("models.draft_threads", self.draft_threads, 1, 256, "in [1, 256]")
        check_in("models.verify_threads", self.verify_threads, 0, 256, "in [0, 256] (0: auto)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str = "default"
    preset: str = ""
    profiles: tuple[str, ...] = ()
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    users: UsersConfig = field(default_factory=UsersConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    limits: Limits = field(default_factory=Limits)
    sim: SimConfig = field(default_factory=SimConfig)
    emu: EmuConfig = field(default_factory=EmuConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    radio: RadioConfig = field(default_factory=RadioConfig)
    hetnet: HetnetConfig = field(default_factory=HetnetConfig)
    dsd: DsdConfig = field(default_factory=DsdConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    def __post_init__(self) -> None:
        get_system(self.deployment.system).check_policy(self.planner.policy, where="planner.policy")
        if self.deployment.system == "hetnet":
            self.hetnet_problem()  # its tasks, fronthaul and compute checked before any run
        if self.deployment.system == "dsd":
            self.dsd_problem()  # its trace and AWC weights read and checked before any run
        for v in self.deployment.verifiers:
            self.verifier_edge(v)  # a verifier's own compute, checked as [edge]'s is
        dsd = self.deployment.system == "dsd"
        self.faults.check(
            users=self.dsd.drafters if dsd else self.users.count,
            users_are="dsd.drafters" if dsd else "users.count",
            nodes=(*(n.name for n in self.deployment.nodes),
                   *(f"u{i}" for i in range(self.users.count))),
            system=self.deployment.system,
        )  # fmt: skip
        # A sampled draft carries each token's top-k ids and probabilities: the largest one a
        # user may send must fit the frame limit, or honest drafts are refused as too large.
        if self.models.temperature > 0:
            per_token = min(self.models.top_k, MAX_TOP_K) * _TOP_ENTRY_BYTES + 6
            need = self.planner.max_draft_len * per_token + 64
            if self.limits.max_frame_bytes < need:
                raise ConfigError(
                    f"limits.max_frame_bytes must hold a sampled draft of planner.max_draft_len "
                    f"= {self.planner.max_draft_len} tokens with models.top_k = "
                    f"{self.models.top_k} ({need} bytes), got {self.limits.max_frame_bytes}"
                )

    def verifier_edge(self, node: str = "") -> Edge:
        """The verifying server ``[edge]`` describes, or the verifier node ``node`` with its own
        compute (its ``memory_bytes`` and ``latency``, where it sets them)."""
        e = self.edge
        memory, latency = e.memory_bytes, e.latency
        at_memory, at_latency = "edge.memory_bytes", "edge.latency"
        if node:
            at = [i for i, n in enumerate(self.deployment.nodes) if n.name == node]
            if not at:
                raise KeyError(f"{node!r} is not a node of this scenario's deployment")
            i, n = at[0], self.deployment.nodes[at[0]]
            if n.memory_bytes is not None:
                memory, at_memory = n.memory_bytes, f"deployment.nodes[{i}].memory_bytes"
            if n.latency is not None:
                latency, at_latency = n.latency.over(latency), f"deployment.nodes[{i}].latency"
        target = ModelArch(
            name="edge.target", layers=e.target.layers, hidden=e.target.hidden, ffn=e.target.ffn
        )
        if not (math.isfinite(memory) and memory > target.weight_bytes):
            raise ConfigError(
                f"{at_memory} must exceed the target's fp16 weights "
                f"({target.weight_bytes:.4g} bytes), got {memory!r}"
            )
        return Edge(
            target=target,
            latency=LatencyModel(
                name=at_latency,
                c_ms_per_flop=latency.c_ms_per_flop,
                beta_ms=latency.beta_ms,
            ),
            memory_bytes=memory,
            close=self.runtime.close,
        )

    def link_noise(self, m: int) -> LinkNoise:
        """User ``m``'s fixed or traced link, each way: its jitter and loss (its own where
        ``[[users.each]]`` sets them, else [network]'s) and the network's RTO."""
        o, net = self.users.override(m), self.network
        return LinkNoise(
            jitter_ms=net.jitter_ms if o.jitter_ms is None else o.jitter_ms,
            loss=net.loss if o.loss is None else o.loss,
            rto_ms=net.rto_ms,
        )

    def comm_noise(self, m: int) -> Lattice | None:
        """What user ``m``'s links add to its round beyond its ``comm_ms``: its own
        ``comm_noise_ms`` where given, else its links' jitter and retransmissions, up and down
        (None: nothing). On radio links the runners plan with the radio series' noise instead
        (and hand it to their nodes in ``comm_noise_ms``)."""
        o = self.users.override(m)
        if o.comm_noise_ms is not None:
            comm = self.users.comm_ms if o.comm_ms is None else o.comm_ms
            if comm + min(o.comm_noise_ms) < 0:
                raise ConfigError(
                    f"users.each[{m}].comm_noise_ms must not take the link time below 0 ms: "
                    f"its least value is {min(o.comm_noise_ms)!r} and comm_ms is {comm!r}"
                )
            return Lattice.empirical(o.comm_noise_ms)
        noise = self.link_noise(m)
        if self.network.model == "radio" or not (noise.jitter_ms or noise.loss):
            return None
        return noise.round_trip()

    def problem(self) -> Problem:
        """The planning instance this scenario describes (validated by the planner's types)."""
        u = self.users
        if u.count < 1:
            raise ConfigError(f"users.count must be >= 1, got {u.count}")
        users = []
        for m in range(u.count):
            o = u.override(m)
            draft = o.draft or u.draft
            device = o.device or u.device
            users.append(
                User(
                    name=f"users[{m}]",
                    alpha=u.alpha if o.alpha is None else o.alpha,
                    prefix_len=u.prefix_len if o.prefix_len is None else o.prefix_len,
                    comm_ms=u.comm_ms if o.comm_ms is None else o.comm_ms,
                    comm_noise=self.comm_noise(m),
                    draft=ModelArch(
                        name=f"users[{m}].draft",
                        layers=draft.layers,
                        hidden=draft.hidden,
                        ffn=draft.ffn,
                    ),
                    device=LatencyModel(
                        name=f"users[{m}].device",
                        c_ms_per_flop=device.c_ms_per_flop,
                        beta_ms=device.beta_ms,
                    ),
                )
            )
        p = self.planner
        return Problem(
            users=tuple(users),
            edge=self.verifier_edge(),
            max_draft_len=p.max_draft_len,
            initial_draft_len=p.initial_draft_len,
            fixed_draft_len=p.fixed_draft_len,
        )

    def dsd_problem(self) -> DsdProblem:
        """DSD's deployment: ``[dsd]``, its draws made with ``sim.seed``."""
        return dsd_problem(self.dsd, seed=self.sim.seed)

    def hetnet_problem(self) -> HetnetProblem:
        """The heterogeneous-edge system's planning instance: ``users.count`` tasks of
        ``[hetnet]``, acceptance ``users.alpha``, drawn with ``sim.seed``, and the fronthaul,
        the deployment's link from its drafter to its verifier."""
        d = self.deployment
        if not d.drafters:
            raise ConfigError(
                'deployment.nodes must include a drafter (role = "drafter", the small cell) '
                "for deployment.system = hetnet"
            )
        verifier = d.verifiers[0]
        fronthauls = []
        for drafter in d.drafters:  # a small cell each; its link to the verifier its fronthaul
            found = d.link(drafter, verifier)
            if found is None:
                raise ConfigError(
                    f"deployment.links must link the drafter {drafter} to the verifier "
                    f"{verifier}: that link is hetnet's fronthaul"
                )
            j, fronthaul = found
            if fronthaul.rate_bps <= 0:
                raise ConfigError(
                    f"deployment.links[{j}].rate_bps is hetnet's fronthaul rate and must be > 0, "
                    f"got {fronthaul.rate_bps!r}"
                )
            fronthauls.append((fronthaul.rate_bps, fronthaul.delay_ms))
        if self.users.count < 1:
            raise ConfigError(f"users.count (the tasks) must be >= 1, got {self.users.count}")
        return hetnet_problem(
            self.hetnet,
            count=self.users.count,
            alpha=self.users.alpha,
            seed=self.sim.seed,
            fronthauls=fronthauls,
        )
