"""Real models behind a run's nodes, with time from the scenario's profile, and the check that
greedy speculative decoding was lossless.

Layer: emu (orchestration). The models are loaded once per command and serve every policy in
turn: one llama.cpp drafter per user (a device drafts for one user) and one transformers
verifier at the edge. Their tokens and acceptance are real; the time each step stands for is
the cost model of the scenario (the paper's devices by default, or a ``draftnet profile`` the
scenario names), so the simulation's virtual clock runs as the profiled hardware would.

User i decodes the built-in prompts i, i + M, i + 2M, ... (cyclically), one session each, so
every policy sees the same prompts. Every committed token is recorded per session; with greedy
verification a run is lossless when each session's tokens equal what the target alone decodes
greedily from that prompt (``GreedyReference``: the target's own forward pass with its KV cache,
one token at a time, no batching and no padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu.models import ModelSetup
from emu.planner.model import Problem, User
from emu.runtime import draft_time, user_prompts, verify_time
from nodes.backends import DraftBackend, DraftOut, VerifyBackend

__all__ = ["GreedyReference", "RealModels"]


@dataclass(slots=True)
class _Session:
    prompt: tuple[int, ...]
    tokens: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Recording:
    """A drafter that records what each session commits (for the losslessness check)."""

    inner: DraftBackend
    sessions: list[_Session]
    _draft: tuple[int, ...] = ()

    def start(self, prompt: Sequence[int]) -> None:
        self.inner.start(prompt)
        self.sessions.append(_Session(prompt=tuple(int(t) for t in prompt)))

    def draft(self, n: int) -> DraftOut:
        out = self.inner.draft(n)
        self._draft = out.tokens
        return out

    def commit(self, accepted: int, token: int) -> None:
        self.inner.commit(accepted, token)
        self.sessions[-1].tokens.extend([*self._draft[:accepted], int(token)])
        self._draft = ()


class GreedyReference:
    """What the target alone decodes greedily from a prompt (cached per prompt)."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device
        self._done: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, prompt: tuple[int, ...], n: int) -> list[int]:
        have = self._done.get(prompt, [])
        if len(have) < n:
            have = self._decode(prompt, n)
            self._done[prompt] = have
        return have[:n]

    def _decode(self, prompt: tuple[int, ...], n: int) -> list[int]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor([prompt], device=self.device)
        out: list[int] = []
        with torch.inference_mode():
            while len(out) < n:
                logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits
                nxt = int(logits[0, -1].float().argmax())
                out.append(nxt)
                ids = torch.tensor([[nxt]], device=self.device)
        return out


class RealModels:
    """The ``_Backends`` of ``emu.sim`` on real models (see the module docstring)."""

    def __init__(
        self,
        setup: ModelSetup,
        *,
        users: int,
        temperature: float = 0.0,
        top_k: int = 8,
        draft_threads: int = 1,
        dtype: str = "",
        warm_start: bool = True,
        seed: int = 0,
    ) -> None:
        from nodes.hf_verifier import HFVerifier
        from nodes.llama_drafter import LlamaDrafter

        self.setup = setup
        self.users = users
        self.temperature = temperature
        self.seed = seed
        self.session_tokens = setup.session_tokens
        self._verifier = HFVerifier(
            setup.target,
            device=setup.device,
            dtype=dtype or None,
            temperature=temperature,
            seed=seed,
            prefill_free=warm_start,
        )
        self._drafters = [
            LlamaDrafter(
                setup.draft,
                n_ctx=setup.n_ctx,
                threads=draft_threads,
                temperature=temperature,
                top_k=top_k,
                seed=seed + i,
            )
            for i in range(users)
        ]
        self._reference = GreedyReference(self._verifier.model, self._verifier.device)
        self._sessions: list[list[_Session]] = [[] for _ in range(users)]

    # --- the _Backends interface, called once per policy --------------------------------------
    def verifier(self, problem: Problem, rng: np.random.Generator) -> VerifyBackend:
        v = self._verifier
        for uid in list(v.sessions):
            v.drop(uid)
        v.rng = np.random.default_rng(self.seed)
        v.latency = verify_time(problem.edge)
        self._sessions = [[] for _ in range(self.users)]
        return v

    def drafter(self, i: int, user: User, rng: np.random.Generator) -> DraftBackend:
        d = self._drafters[i]
        d.rng = np.random.default_rng(self.seed + i)
        d.latency = draft_time(user)
        return _Recording(d, self._sessions[i])

    def prompts(self, i: int, user: User, rng: np.random.Generator) -> Iterator[Sequence[int]]:
        return user_prompts(self.setup.prompts, i, self.users)

    def results(self) -> dict[str, Any]:
        """``lossless`` for the policy that just ran (null unless verification is greedy)."""
        sessions = [s for per_user in self._sessions for s in per_user if s.tokens]
        tokens = sum(len(s.tokens) for s in sessions)
        if self.temperature > 0:
            return {"lossless": None, "lossless_checked": {"sessions": 0, "tokens": 0}}
        bad = []
        for uid, per_user in enumerate(self._sessions):
            for k, s in enumerate(per_user):
                ref = self._reference(s.prompt, len(s.tokens))
                if s.tokens != ref:
                    at = next(
                        j for j, (a, b) in enumerate(zip(s.tokens, ref, strict=True)) if a != b
                    )
                    bad.append({"user": uid, "session": k, "position": at})
        return {
            "lossless": not bad,
            "lossless_checked": {"sessions": len(sessions), "tokens": tokens, "mismatches": bad},
        }
