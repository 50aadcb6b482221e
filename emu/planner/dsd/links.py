"""The network between DSD's drafters and verifiers (dsd.md sections 3.1, 3.2 and 6): which
verifiers each drafter reaches, each direction's one-way base delay, the payloads, and what a
transfer takes.

Layer: pure (emu.planner). Randomness only from the ``numpy.random.Generator`` passed in;
sampling (``draw_u``, ``wire``) is kept apart from applying (``transfer_ms``).

- Each drafter links to ``fanout`` (4) verifiers drawn without replacement among its allowed
  ones. A pair's forward (drafter to verifier) and response one-way bases are drawn
  independently, once for the pair, uniform in the verifier's tier range [ms].
- A transfer of b bytes takes ``(base + b / (bandwidth_mbps x 125)) x (1 + u)`` ms, u ~
  U(-jitter, +jitter) per transfer (jitter 12%); the bytes term only with a bandwidth > 0
  (the preset sets none). No loss, no retransmission.
- Payloads, 2 bytes a token: prefill request 512 + 2P, response 256 + 2P; a round's request
  128 + 2 x tokens, response 256 + 2 x tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from emu.errors import ConfigError, check_in

__all__ = [
    "BYTES_PER_TOKEN",
    "FANOUT",
    "JITTER",
    "NET_MS_RANGES",
    "PairLink",
    "draw_u",
    "prefill_request_bytes",
    "prefill_response_bytes",
    "round_request_bytes",
    "round_response_bytes",
    "transfer_ms",
    "wire",
]

# The preset's tiers: one-way base delay [ms], uniform in [lo, hi].
NET_MS_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "llama_a100": (6.5, 11.0),
        "codellama_a100": (6.8, 11.5),
        "qwen_h100": (5.2, 9.2),
        "llama3_a100": (6.0, 10.2),
    }
)
FANOUT = 4
JITTER = 0.12
BYTES_PER_TOKEN = 2
BYTES_PER_MS_PER_MBPS = 125.0  # 1 Mbit/s = 125 000 B/s = 125 B/ms


def prefill_request_bytes(prompt_tokens: int) -> int:
    return 512 + BYTES_PER_TOKEN * prompt_tokens


def prefill_response_bytes(prompt_tokens: int) -> int:
    return 256 + BYTES_PER_TOKEN * prompt_tokens


def round_request_bytes(tokens: int) -> int:
    """A round's drafts going to the verifier (``tokens`` = min(gamma, A - generated))."""
    return 128 + BYTES_PER_TOKEN * tokens


def round_response_bytes(tokens: int) -> int:
    return 256 + BYTES_PER_TOKEN * tokens


def _check_jitter(jitter: float) -> None:
    if not 0.0 <= jitter < 1.0:
        raise ConfigError(f"dsd.jitter must be in [0, 1), got {jitter!r}")


def draw_u(rng: np.random.Generator, jitter: float = JITTER) -> float:
    """One transfer's jitter u ~ U(-jitter, +jitter)."""
    _check_jitter(jitter)
    return float(rng.uniform(-jitter, jitter))


def transfer_ms(
    base_ms: float, payload_bytes: float, bandwidth_mbps: float, jitter: float, u: float
) -> float:
    """(base_ms + payload_bytes / (bandwidth_mbps x 125 B/ms)) x (1 + u) [ms]; the bytes term
    only when ``bandwidth_mbps`` > 0. ``u`` is the transfer's draw, within +-``jitter``."""
    _check_jitter(jitter)
    if abs(u) > jitter:
        raise ValueError(f"u must be within +-jitter = +-{jitter}, got {u}")
    serial_ms = payload_bytes / (bandwidth_mbps * BYTES_PER_MS_PER_MBPS) if bandwidth_mbps else 0.0
    return (base_ms + serial_ms) * (1.0 + u)


@dataclass(frozen=True, slots=True, kw_only=True)
class PairLink:
    """A (drafter, verifier) pair's two directed links: one-way bases ``forward_ms`` (drafter
    to verifier) and ``response_ms`` [ms], fixed for the run; ``bandwidth_mbps`` (0: none)
    and ``jitter`` apply to every transfer."""

    drafter: str
    verifier: str
    forward_ms: float
    response_ms: float
    bandwidth_mbps: float = 0.0
    jitter: float = JITTER

    def __post_init__(self) -> None:
        check_in("link.forward_ms", self.forward_ms, 0, math.inf, ">= 0")
        check_in("link.response_ms", self.response_ms, 0, math.inf, ">= 0")
        check_in("dsd.bandwidth_mbps", self.bandwidth_mbps, 0, math.inf, ">= 0 (0: none)")
        _check_jitter(self.jitter)

    def forward(self, payload_bytes: float, rng: np.random.Generator) -> float:
        """One drafter-to-verifier transfer [ms]."""
        u = draw_u(rng, self.jitter)
        return transfer_ms(self.forward_ms, payload_bytes, self.bandwidth_mbps, self.jitter, u)

    def response(self, payload_bytes: float, rng: np.random.Generator) -> float:
        """One verifier-to-drafter transfer [ms]."""
        u = draw_u(rng, self.jitter)
        return transfer_ms(self.response_ms, payload_bytes, self.bandwidth_mbps, self.jitter, u)


def wire(
    allowed: Mapping[str, Sequence[str]],
    tier_of: Mapping[str, str],
    rng: np.random.Generator,
    *,
    fanout: int = FANOUT,
    ranges_ms: Mapping[str, tuple[float, float]] = NET_MS_RANGES,
    bandwidth_mbps: float = 0.0,
    jitter: float = JITTER,
) -> tuple[PairLink, ...]:
    """Each drafter's links, drafters in ``allowed``'s order: ``fanout`` distinct verifiers
    drawn among ``allowed[drafter]``, each pair's bases drawn from the range of its
    verifier's tier (``tier_of``, ``ranges_ms``)."""
    if fanout < 1:
        raise ConfigError(f"dsd.fanout must be at least 1, got {fanout}")
    for name, (lo, hi) in ranges_ms.items():
        if not 0 <= lo <= hi:
            raise ConfigError(f"dsd.net_ms_ranges.{name} must be [lo, hi], 0 <= lo <= hi, "
                              f"got [{lo}, {hi}]")  # fmt: skip
    links = []
    for drafter, verifiers in allowed.items():
        if len(set(verifiers)) != len(verifiers):
            raise ConfigError(f"drafter {drafter}'s allowed verifiers must be distinct, "
                              f"got {list(verifiers)}")  # fmt: skip
        if fanout > len(verifiers):
            raise ConfigError(
                f"dsd.fanout must be at most drafter {drafter}'s {len(verifiers)} allowed "
                f"verifiers, got {fanout}"
            )
        for i in rng.choice(len(verifiers), size=fanout, replace=False):
            verifier = verifiers[int(i)]
            tier = tier_of.get(verifier)
            if tier is None or tier not in ranges_ms:
                raise ConfigError(
                    f"verifier {verifier}'s tier must be one of dsd.net_ms_ranges "
                    f"({', '.join(ranges_ms)}), got {tier!r}"
                )
            lo, hi = ranges_ms[tier]
            forward_ms, response_ms = (float(x) for x in rng.uniform(lo, hi, size=2))
            links.append(
                PairLink(
                    drafter=drafter,
                    verifier=verifier,
                    forward_ms=forward_ms,
                    response_ms=response_ms,
                    bandwidth_mbps=bandwidth_mbps,
                    jitter=jitter,
                )
            )
    return tuple(links)
