"""The two model interfaces the nodes call, and the synthetic backends behind them.

Layer: nodes. Backends are synchronous: a call computes and returns what it produced plus the
time that computation stands for (``compute_ms``), which the node's pacer turns into time on its
clock (virtual in ``sim``, padded or real in ``emu``).

The synthetic backends are for the simulation and the unit tests, and say so in every result:
they produce random token ids, accept each drafted token with the user's acceptance rate
(Bernoulli, from a seeded generator) and take exactly the time the cost model predicts at the
user's configured prefix. They therefore reproduce the planner's assumptions, so that the
simulation checks the execution (pipelining, deadlines, messages, links) against the planner.
Real models (llama.cpp drafting, transformers verification) implement the same interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from emu.planner.model import (
    Edge,
    LatencyModel,
    ModelArch,
    User,
    draft_flops,
    verify_flops,
)

__all__ = [
    "DraftBackend",
    "DraftOut",
    "SyntheticDrafter",
    "SyntheticVerifier",
    "VerifyBackend",
    "VerifyItem",
    "VerifyOut",
]

SYNTHETIC_VOCAB = 32000


@dataclass(frozen=True, slots=True)
class DraftOut:
    tokens: tuple[int, ...]
    compute_ms: float
    top_ids: tuple[tuple[int, ...], ...] = ()
    top_probs: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class VerifyItem:
    """One user's draft in a batch: ``tokens`` extend its committed sequence of ``base_len``."""

    user: int
    base_len: int
    tokens: tuple[int, ...]
    top_ids: tuple[tuple[int, ...], ...] = ()
    top_probs: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class VerifyOut:
    accepted: int
    token: int


class DraftBackend(Protocol):
    """The drafting model on one device."""

    def start(self, prompt: Sequence[int]) -> None:
        """Begin a session on ``prompt`` (token ids)."""

    def draft(self, n: int) -> DraftOut:
        """Draft ``n`` tokens after the committed sequence."""

    def commit(self, accepted: int, token: int) -> None:
        """Keep the first ``accepted`` tokens of the last draft, then ``token``."""


class VerifyBackend(Protocol):
    """The target model at the edge, serving many users."""

    def prefill(self, prompts: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        """Process new sessions' prompts in one pass; each user's first token, and the time."""

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        """Verify a batch's drafts in one pass; per item the outcome, and the time [ms]."""

    def drop(self, user: int) -> None:
        """Forget a user's state (it left)."""


@dataclass(slots=True)
class SyntheticDrafter:
    """Synthetic drafting (simulation and tests only): random ids, cost-model time."""

    arch: ModelArch
    device: LatencyModel
    prefix_len: int
    rng: np.random.Generator

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def draft(self, n: int) -> DraftOut:
        per_token = self.device(1.0, float(draft_flops(self.arch, self.prefix_len)))
        tokens = tuple(int(t) for t in self.rng.integers(0, SYNTHETIC_VOCAB, size=n))
        return DraftOut(tokens=tokens, compute_ms=n * per_token)

    def commit(self, accepted: int, token: int) -> None:
        pass

    @classmethod
    def for_user(cls, user: User, rng: np.random.Generator) -> SyntheticDrafter:
        return cls(arch=user.draft, device=user.device, prefix_len=user.prefix_len, rng=rng)


@dataclass(slots=True)
class SyntheticVerifier:
    """Synthetic verification (simulation and tests only).

    Each drafted token is accepted with its user's rate until the first rejection; the result is
    followed by one random token (the correction, or the bonus after a full acceptance). Time is
    G_v(b, F_v(L, I)) with the batch padded to its longest draft (at least 1) and largest prefix.
    A user it was not told of (a joiner) accepts at the mean rate, at the mean prefix.

    ``user_rng``, where given, gives each user its own stream of draws (made on first use): a
    user's k-th verification then draws the same numbers whichever users share its batches and
    in whatever order they arrive, so two runners with the same seed and plan (the simulation
    and the emulation) draw the same acceptances. Without it every user draws from ``rng``;
    one of the two is required.
    """

    edge: Edge
    alpha: dict[int, float]
    prefix_len: dict[int, int]
    rng: np.random.Generator | None = None
    prefill_free: bool = False  # contexts already cached: steady-state decoding only
    vocab_size: int = SYNTHETIC_VOCAB
    user_rng: Callable[[int], np.random.Generator] | None = None
    _streams: dict[int, np.random.Generator] = field(default_factory=dict)

    def prefill(self, prompts: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        if not prompts:
            return {}, 0.0
        longest = max(len(p) for p in prompts.values())
        flops = float(verify_flops(self.edge.target, longest, 0))
        first = {u: int(self._rng(u).integers(0, SYNTHETIC_VOCAB)) for u in prompts}
        return first, 0.0 if self.prefill_free else self.edge.latency(float(len(prompts)), flops)

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        if not batch:
            return [], 0.0
        L = max(1, *(len(it.tokens) for it in batch))
        I = max(self._prefix(it.user) for it in batch)
        out = []
        for it in batch:
            n = len(it.tokens)
            # Accepted count: the first failure of Bernoulli(alpha) trials, capped at n.
            rng = self._rng(it.user)
            trials = rng.random(n) < self._alpha(it.user)
            k = int(np.argmin(trials)) if not trials.all() else n
            out.append(VerifyOut(accepted=k, token=int(rng.integers(0, SYNTHETIC_VOCAB))))
        flops = float(verify_flops(self.edge.target, L, I))
        return out, self.edge.latency(float(len(batch)), flops)

    def drop(self, user: int) -> None:
        pass  # a user's stream of draws outlives its connection: a redial resumes it

    def _rng(self, user: int) -> np.random.Generator:
        if self.user_rng is None:
            if self.rng is None:
                raise ValueError("a SyntheticVerifier needs rng or user_rng")
            return self.rng
        if user not in self._streams:
            self._streams[user] = self.user_rng(user)
        return self._streams[user]

    def _alpha(self, user: int) -> float:
        a = self.alpha.get(user)
        return a if a is not None else float(np.mean(list(self.alpha.values()) or [0.5]))

    def _prefix(self, user: int) -> int:
        p = self.prefix_len.get(user)
        return p if p is not None else int(np.mean(list(self.prefix_len.values()) or [0]))
