"""The DiP-SD cost model: problem data and the formulas of ARCHITECTURE.md.

Layer: pure (emu.planner). No I/O, no clock, no global randomness.

Units are in the names: ``*_ms`` milliseconds, ``*_bytes`` bytes, FLOPs are plain floats.
Every dataclass validates itself on construction and raises ``ConfigError`` naming the field,
the value and the rule, so a bad scenario never reaches the optimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError, Infeasible
from emu.planner.lattice import Lattice

__all__ = [
    "BYTES_PER_PARAM",
    "MAX_TOLERANCE",
    "MAX_USERS",
    "CloseRule",
    "Edge",
    "LatencyModel",
    "ModelArch",
    "Problem",
    "User",
    "draft_flops",
    "expected_tokens",
    "verify_flops",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# fp16/bf16 weights and KV cache, as in the paper's memory bound.
BYTES_PER_PARAM = 2
# Largest deadline tolerance a close rule takes (1 + 100 times the expected ready time: a
# batch that waits for all its members in all but name).
MAX_TOLERANCE = 100.0
# Largest instance the planner accepts: its DP tables are (M + 1)^2 floats.
MAX_USERS = 2000


def _check(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}")


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelArch:
    """Transformer shape used by the FLOP and memory formulas.

    layers: J, the number of decoder layers. hidden: h1. ffn: h2, the MLP width.
    """

    layers: int
    hidden: int
    ffn: int
    name: str = ""

    def __post_init__(self) -> None:
        for attr in ("layers", "hidden", "ffn"):
            v = getattr(self, attr)
            _check(
                isinstance(v, int) and v >= 1, f"{self.name or 'model'}.{attr}", v, "must be >= 1"
            )

    @property
    def weight_bytes(self) -> float:
        """J (8 h1^2 + 4 h1 h2): fp16 weights of attention and MLP [bytes]."""
        return float(self.layers * (8 * self.hidden**2 + 4 * self.hidden * self.ffn))

    def kv_bytes(self, tokens: float | FloatArray) -> FloatArray:
        """4 J h1 tokens: fp16 K and V for ``tokens`` cached tokens [bytes]."""
        return np.asarray(4.0 * self.layers * self.hidden * np.asarray(tokens, dtype=np.float64))


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyModel:
    """Affine compute latency G(b, F) = c b F + beta [ms]."""

    c_ms_per_flop: float
    beta_ms: float
    name: str = ""

    def __post_init__(self) -> None:
        who = self.name or "latency"
        _check(
            _finite(self.c_ms_per_flop) and self.c_ms_per_flop >= 0,
            f"{who}.c_ms_per_flop",
            self.c_ms_per_flop,
            "must be a finite number >= 0",
        )
        _check(
            _finite(self.beta_ms) and self.beta_ms >= 0,
            f"{who}.beta_ms",
            self.beta_ms,
            "must be a finite number >= 0",
        )

    def __call__(self, batch: float, flops: float) -> float:
        return self.c_ms_per_flop * batch * flops + self.beta_ms


def expected_tokens(alpha: float | FloatArray, draft_len: int | IntArray) -> FloatArray:
    """u(l) = (1 - a^(l+1)) / (1 - a): expected tokens committed by one round [tokens].

    ``draft_len = 0`` is autoregressive decoding: one token per round.
    """
    a = np.asarray(alpha, dtype=np.float64)
    ln = np.asarray(draft_len, dtype=np.float64)
    return np.asarray((1.0 - a ** (ln + 1.0)) / (1.0 - a), dtype=np.float64)


def draft_flops(arch: ModelArch, prefix: float | FloatArray) -> FloatArray:
    """F_d(i) = 4 J h1 (2 h1 + i + 1 + h2): FLOPs to draft one token at prefix i."""
    h1, h2 = arch.hidden, arch.ffn
    return np.asarray(4.0 * arch.layers * h1 * (2.0 * h1 + np.asarray(prefix) + 1.0 + h2))


def verify_flops(
    arch: ModelArch, tokens: float | FloatArray, prefix: float | FloatArray
) -> FloatArray:
    """F_v(L, I) = 4 J h1 L (2 h1 + I + L + h2): FLOPs to verify L tokens at prefix I, per user."""
    h1, h2 = arch.hidden, arch.ffn
    L = np.asarray(tokens, dtype=np.float64)
    return np.asarray(4.0 * arch.layers * h1 * L * (2.0 * h1 + np.asarray(prefix) + L + h2))


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """One drafting user: its acceptance rate, context, device and link.

    alpha: per-token acceptance rate a_m, in (0, 1).
    prefix_len: context length i_m [tokens].
    comm_ms: communication latency per round tau_c_m [ms].
    draft: the draft model run on the device; device: its affine latency model.
    comm_noise: what a round's communication takes beyond comm_ms, as a distribution (its
    link's jitter and retransmissions, or what the edge measured); None: nothing, the published
    model's user. The mean model ignores it; the stochastic model (emu.planner.stochastic)
    and the jitter-aware policy plan with it.
    """

    alpha: float
    prefix_len: int
    comm_ms: float
    draft: ModelArch
    device: LatencyModel
    name: str = ""
    comm_noise: Lattice | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        who = self.name or "user"
        _check(
            _finite(self.alpha) and 0.0 < self.alpha < 1.0,
            f"{who}.alpha",
            self.alpha,
            "must be in (0, 1)",
        )
        _check(
            isinstance(self.prefix_len, int) and self.prefix_len >= 0,
            f"{who}.prefix_len",
            self.prefix_len,
            "must be an integer >= 0",
        )
        _check(
            _finite(self.comm_ms) and self.comm_ms >= 0,
            f"{who}.comm_ms",
            self.comm_ms,
            "must be a finite number >= 0",
        )
        n = self.comm_noise
        if n is not None:
            _check(
                isinstance(n, Lattice)
                and math.isfinite(n.t0_ms)
                and n.step_ms > 0
                and bool(np.isfinite(n.pmf).all() and (n.pmf >= 0).all())
                and abs(float(n.pmf.sum()) - 1.0) < 1e-6
                and self.comm_ms + n.t0_ms >= -1e-9,
                f"{who}.comm_noise",
                n,
                "must be a distribution (a Lattice of probabilities summing to 1) that never "
                "makes comm_ms + noise negative",
            )

    @property
    def draft_ms_per_token(self) -> float:
        """G_m(1, F_d(i_m)): time to draft one token on the device [ms]."""
        return self.device(1, float(draft_flops(self.draft, self.prefix_len)))


@dataclass(frozen=True, slots=True)
class CloseRule:
    """How the edge closes a batch whose drafts are not all in (``nodes.core.schedule``'s
    staged pipeline): at ``1 + tolerance`` times its members' latest expected ready time plus
    ``grace_ms``, without the late drafts, each verified at the first later turn of its batch
    that it is in by."""

    tolerance: float = 0.25
    grace_ms: float = 2.0

    def with_tolerance(self, tolerance: float | None) -> CloseRule:
        """This rule with a batch's own ``tolerance`` (None: this rule's)."""
        if tolerance is None or tolerance == self.tolerance:
            return self
        return CloseRule(tolerance=tolerance, grace_ms=self.grace_ms)

    def deadline_ms(self, expected_ready_ms: float) -> float:
        """When a batch whose latest member is expected ready at ``expected_ready_ms`` (after
        its last verification) closes."""
        return (1.0 + self.tolerance) * expected_ready_ms + self.grace_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """The verifying server: target model shape, its latency model and memory Gamma_max, and
    how it closes a batch (``close``; None: it waits for every draft, as the published model
    assumes)."""

    target: ModelArch
    latency: LatencyModel
    memory_bytes: float
    close: CloseRule | None = None

    def __post_init__(self) -> None:
        _check(
            _finite(self.memory_bytes) and self.memory_bytes > 0,
            "edge.memory_bytes",
            self.memory_bytes,
            "must be a finite number > 0",
        )
        _check(
            self.memory_bytes > self.target.weight_bytes,
            "edge.memory_bytes",
            self.memory_bytes,
            f"must exceed the target's fp16 weights ({self.target.weight_bytes:.4g} bytes)",
        )

    def batch_capacity(self, prefix: float | FloatArray) -> IntArray:
        """Largest batch whose KV cache at prefix I fits beside the weights [users]."""
        free = self.memory_bytes - self.target.weight_bytes
        per_user = np.maximum(self.target.kv_bytes(np.asarray(prefix, dtype=np.float64)), 1.0)
        return np.asarray(np.floor(free / per_user), dtype=np.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A planning instance: users, the edge, and the draft-length bounds.

    The per-user arrays are precomputed once here so every policy evaluates plans with a few
    numpy operations.
    """

    users: tuple[User, ...]
    edge: Edge
    max_draft_len: int = 20
    initial_draft_len: int = 7
    fixed_draft_len: int = 7
    alpha: FloatArray = field(init=False, repr=False, compare=False)
    prefix: FloatArray = field(init=False, repr=False, compare=False)
    comm_ms: FloatArray = field(init=False, repr=False, compare=False)
    draft_ms: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(len(self.users) >= 1, "users.count", len(self.users), "must be >= 1")
        _check(
            len(self.users) <= MAX_USERS,
            "users.count",
            len(self.users),
            f"must be <= {MAX_USERS} (the planner's assignment step is O(M^2) in memory)",
        )
        _check(
            isinstance(self.max_draft_len, int) and self.max_draft_len >= 1,
            "planner.max_draft_len",
            self.max_draft_len,
            "must be an integer >= 1",
        )
        for name in ("initial_draft_len", "fixed_draft_len"):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and 1 <= v <= self.max_draft_len,
                f"planner.{name}",
                v,
                f"must be an integer in [1, max_draft_len={self.max_draft_len}]",
            )
        object.__setattr__(self, "alpha", np.array([u.alpha for u in self.users], dtype=np.float64))
        object.__setattr__(
            self, "prefix", np.array([u.prefix_len for u in self.users], dtype=np.float64)
        )
        object.__setattr__(
            self, "comm_ms", np.array([u.comm_ms for u in self.users], dtype=np.float64)
        )
        object.__setattr__(
            self, "draft_ms", np.array([u.draft_ms_per_token for u in self.users], dtype=np.float64)
        )
        for a in (self.alpha, self.prefix, self.comm_ms, self.draft_ms):
            a.flags.writeable = False
        cap = self.edge.batch_capacity(self.prefix)
        worst = int(np.argmin(cap))
        if cap[worst] < 1:
            edge = self.edge
            kv_gb = float(edge.target.kv_bytes(self.prefix[worst])) / 1e9
            raise Infeasible(
                f"user {worst} does not fit in the edge's memory: target weights "
                f"{edge.target.weight_bytes / 1e9:.3g} GB + KV cache at prefix "
                f"{int(self.prefix[worst])} ({kv_gb:.3g} GB) > edge.memory_bytes "
                f"{edge.memory_bytes / 1e9:.3g} GB"
            )

    @property
    def size(self) -> int:
        return len(self.users)

    def ready_ms(self, draft_len: IntArray) -> FloatArray:
        """tau_d + tau_c per user [ms]; zero for a user that does not draft (l = 0)."""
        ln = np.asarray(draft_len, dtype=np.float64)
        return np.where(ln > 0, ln * self.draft_ms + self.comm_ms, 0.0)

    def verify_ms(self, batch: FloatArray, tokens: FloatArray, prefix: FloatArray) -> FloatArray:
        """t_v = c_v b F_v(L, I) + beta_v for batches of given size, padded length and prefix."""
        lat = self.edge.latency
        flops = verify_flops(self.edge.target, tokens, prefix)
        return np.asarray(lat.c_ms_per_flop * batch * flops + lat.beta_ms)

    def fits(self, batch: FloatArray, prefix: FloatArray) -> npt.NDArray[np.bool_]:
        """Memory bound: W + 4 J_v h1_v b I <= Gamma_max."""
        edge = self.edge
        need = edge.target.weight_bytes + edge.target.kv_bytes(np.asarray(batch) * prefix)
        return np.asarray(need <= edge.memory_bytes)
