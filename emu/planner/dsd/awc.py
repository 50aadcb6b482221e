"""Adaptive window control (AWC, dsd.md section 4.3): a small residual network reads 11
features of a drafter's situation and moves the draft window from its default; the output is
clamped, smoothed per (drafter, verifier) pair, quantised to the allowed windows, and held at 1
(fused) for a dwell once it reaches 1.

Layer: pure (emu.planner). The weights come in as arrays (``AwcNetwork.from_arrays``); reading
them from a file is the scenario loader's.

The network: ``proj = P x``; ``h = proj + W2 act(W1 proj)``; ``out = w . h + b``. The authors'
hand-set head is diagonal (hidden 11, P = I, W1 = W2 = 0.5 I), so its output is
``sum_i w_i (x_i + 0.5 SiLU(0.5 x_i)) + b``; a trained head is the same shape with any hidden
width (draftnet's trainer fits 16).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = [
    "ALLOWED_WINDOWS",
    "FEATURES",
    "HAND_SET_HEAD",
    "Awc",
    "AwcNetwork",
    "Situation",
    "awc_features",
]

FEATURES = (
    "queue_util",
    "queue_trend",
    "pending_norm",
    "rtt_avg_norm",
    "rtt_delta",
    "tpot_avg_norm",
    "tpot_delta",
    "drafter_capability_norm",
    "acceptance_recent",
    "last_gamma_norm",
    "context_norm",
)
HAND_SET_HEAD = (-0.9, -0.5, -0.6, -1.1, -0.6, -0.9, -0.5, 0.35, 0.4, 0.2, -0.1)
ALLOWED_WINDOWS = (1, 2, 3, 4, 6, 8)
ACTIVATIONS = ("silu", "relu")
RTT_SCALE_MS = 30.0
TPOT_SCALE_MS = 15.0
PENDING_SCALE_TOKENS = 2048.0
CONTEXT_SCALE_TOKENS = 2048.0
HISTORY = 3  # the pair's (and the target's) recent values a mean takes


@dataclass(frozen=True, slots=True, kw_only=True)
class Situation:
    """What a drafter knows when it chooses a window, as AWC reads it (times in ms).

    ``round_ms`` and ``tpot_ms`` are the pair's recent values, oldest first ("RTT" is a whole
    round: drafting, the network, the queue and verifying); ``queue_utils`` the target's recent
    queue utilisations, oldest first; ``workload_util`` the pending tokens over the batch's
    capacity when the drafter knows it (else ``pending_tokens`` / 2048 is used)."""

    queue_len: int
    batch_size: int
    queue_utils: Sequence[float] = ()
    pending_tokens: int = 0
    workload_util: float | None = None
    round_ms: Sequence[float] = ()
    tpot_ms: Sequence[float] = ()
    capability: float = 1.0
    acceptance_recent: float | None = None  # the pair's last round's ratio
    acceptance_estimate: float = 0.0  # the curve's, used before the pair has a ratio
    last_gamma: int | None = None  # None: the default window
    context: int = 0  # the prompt's tokens


def _mean_last(xs: Sequence[float]) -> float:
    last = xs[-HISTORY:]
    return sum(last) / len(last) if len(last) else 0.0


def _delta(xs: Sequence[float]) -> float:
    return float(xs[-1] - xs[-2]) if len(xs) >= 2 else 0.0


def awc_features(s: Situation, *, default: int, max_gamma: int) -> npt.NDArray[np.float64]:
    """The 11 features, in ``FEATURES``' order."""
    util = s.queue_len / s.batch_size
    pending = (
        s.workload_util if s.workload_util is not None else s.pending_tokens / PENDING_SCALE_TOKENS
    )
    acceptance = s.acceptance_recent if s.acceptance_recent is not None else s.acceptance_estimate
    gamma = default if s.last_gamma is None else s.last_gamma
    return np.array(
        [
            util,
            util - _mean_last(s.queue_utils) if len(s.queue_utils) else 0.0,
            min(max(pending, 0.0), 2.0),
            _mean_last(s.round_ms) / RTT_SCALE_MS,
            _delta(s.round_ms) / RTT_SCALE_MS,
            _mean_last(s.tpot_ms) / TPOT_SCALE_MS,
            _delta(s.tpot_ms) / TPOT_SCALE_MS,
            s.capability / 1.0,
            acceptance,
            gamma / max_gamma,
            s.context / CONTEXT_SCALE_TOKENS,
        ]
    )


def _silu(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x / (1.0 + np.exp(-x))


@dataclass(frozen=True, slots=True, kw_only=True)
class AwcNetwork:
    """``out = head . h + bias``, ``h = proj + w2 act(w1 proj + b1)``, ``proj = p x``."""

    p: npt.NDArray[np.float64]  # (hidden, 11)
    w1: npt.NDArray[np.float64]  # (hidden, hidden)
    b1: npt.NDArray[np.float64]  # (hidden,)
    w2: npt.NDArray[np.float64]  # (hidden, hidden)
    head: npt.NDArray[np.float64]  # (hidden,)
    bias: float = 0.0
    activation: str = "silu"
    max_gamma: int = 0  # the largest window it was made for (its clamp); 0: the default window

    @classmethod
    def hand_set(cls) -> AwcNetwork:
        """The authors' head: diagonal, hidden 11, their hand-set weights."""
        eye = np.eye(len(FEATURES))
        return cls(
            p=eye, w1=0.5 * eye, b1=np.zeros(len(FEATURES)), w2=0.5 * eye,
            head=np.array(HAND_SET_HEAD),
        )  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike], *, where: str) -> AwcNetwork:
        """A network from named arrays (``p``, ``w1``, ``w2``, ``head``; optionally ``b1``,
        ``bias``, ``activation`` and ``max_gamma``); ConfigError naming ``where``, the array and
        the shape it needs when one is missing or of the wrong shape."""
        for name in ("p", "w1", "w2", "head"):
            if name not in arrays:
                raise ConfigError(f"{where} has no array {name!r} (an AWC network needs p, w1, "
                                  f"w2 and head)")  # fmt: skip
        p = np.asarray(arrays["p"], dtype=float)
        hidden = p.shape[0] if p.ndim == 2 else -1
        need = {
            "p": (hidden, len(FEATURES)),
            "w1": (hidden, hidden),
            "b1": (hidden,),
            "w2": (hidden, hidden),
            "head": (hidden,),
            "bias": (),
        }
        got = {n: np.asarray(arrays.get(n, np.zeros(need[n])), dtype=float) for n in need}
        for name, shape in need.items():
            if got[name].shape != shape or hidden < 1:
                want = (
                    "x".join(str(d) for d in shape) if hidden >= 1 else f"hidden x {len(FEATURES)}"
                )
                raise ConfigError(
                    f"{where}: array {name!r} must have shape ({want}) for {len(FEATURES)} "
                    f"features, got {got[name].shape}"
                )
            if not np.all(np.isfinite(got[name])):
                raise ConfigError(f"{where}: array {name!r} must be finite")
        activation = str(np.asarray(arrays.get("activation", "silu")))
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"{where}: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        max_gamma = np.asarray(arrays.get("max_gamma", 0))
        if max_gamma.shape != () or not (max_gamma == 0 or 1 <= max_gamma <= 64):
            raise ConfigError(f"{where}: max_gamma must be one integer in [1, 64] (or 0: the "
                              f"default window), got {max_gamma.tolist()!r}")  # fmt: skip
        return cls(
            p=got["p"], w1=got["w1"], b1=got["b1"], w2=got["w2"], head=got["head"],
            bias=float(got["bias"]), activation=activation, max_gamma=int(max_gamma),
        )  # fmt: skip

    def arrays(self) -> dict[str, npt.NDArray[np.float64] | str | float]:
        """The named arrays ``from_arrays`` reads back."""
        return {"p": self.p, "w1": self.w1, "b1": self.b1, "w2": self.w2, "head": self.head,
                "bias": self.bias, "activation": self.activation,
                "max_gamma": self.max_gamma}  # fmt: skip

    def out(self, x: npt.NDArray[np.float64]) -> float:
        """The network's output for features ``x`` (the window's move from its default)."""
        proj = self.p @ x
        pre = self.w1 @ proj + self.b1
        act = _silu(pre) if self.activation == "silu" else np.maximum(pre, 0.0)
        return float(self.head @ (proj + self.w2 @ act) + self.bias)


def quantise(x: float, allowed: Sequence[int] = ALLOWED_WINDOWS) -> int:
    """The allowed window nearest ``x``; a tie goes to the lower one."""
    return min(sorted(allowed), key=lambda g: abs(g - x))


@dataclass(slots=True, kw_only=True)
class Awc:
    """AWC's window for each round of a (drafter, verifier) ``pair``: ``default`` plus the
    network's output, clamped to [1, ``max_gamma``], smoothed (``smoothing`` of the new value,
    the rest the pair's previous smoothed value, kept unquantised), quantised to ``allowed``;
    a window of 1 (fused, in hybrid mode) then holds for ``dwell`` more rounds. ``max_gamma``
    0 takes the network's, else the default window (the authors')."""

    network: AwcNetwork
    default: int = 4
    max_gamma: int = 0  # 0: the default
    smoothing: float = 0.4
    allowed: tuple[int, ...] = ALLOWED_WINDOWS
    dwell: int = 1
    _smoothed: dict[str, float] = field(default_factory=dict)
    _dwell_left: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_gamma == 0:
            self.max_gamma = self.network.max_gamma or self.default

    def window(self, pair: str, s: Situation) -> int:
        x = awc_features(s, default=self.default, max_gamma=self.max_gamma)
        raw = min(max(self.default + self.network.out(x), 1.0), float(self.max_gamma))
        prev = self._smoothed.get(pair)
        smooth = raw if prev is None else self.smoothing * raw + (1.0 - self.smoothing) * prev
        self._smoothed[pair] = smooth
        gamma = quantise(smooth, self.allowed)
        if gamma == 1:
            self._dwell_left[pair] = self.dwell
            return 1
        if self._dwell_left.get(pair, 0) > 0:
            self._dwell_left[pair] -= 1
            return 1
        return gamma
