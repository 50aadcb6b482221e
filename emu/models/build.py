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
greedily from that prompt (``GreedyReference``: the target's own forward pass over the prompt
and the tokens, no batching and no padding).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from emu.models.embedded import ModelSetup
from emu.models.timing import draft_time, user_prompts, verify_time
from emu.planner.model import Problem, User
from emu.scenario.streams import Streams
from nodes.backends import DraftBackend, DraftOut, VerifyBackend

__all__ = [
    "Departure",
    "GreedyReference",
    "RealModels",
    "RecordingDrafter",
    "check_sessions",
    "read_sessions",
]


@dataclass(slots=True)
class Session:
    prompt: tuple[int, ...]
    tokens: list[int] = field(default_factory=list)
    broken: bool = False  # a resumed start that did not continue it exactly


@dataclass(slots=True)
class RecordingDrafter:
    """A drafter that records what each session commits (for the losslessness check): in
    ``sessions``, and where a ``log`` is given also there, one JSON line per session start
    (``{"prompt": [...]}``) and per commit (``{"tokens": [...]}``), written as it happens."""

    inner: DraftBackend
    sessions: list[Session]
    log: TextIO | None = None
    _draft: tuple[int, ...] = ()

    def start(self, prompt: Sequence[int]) -> None:
        self.inner.start(prompt)
        self.sessions.append(Session(prompt=tuple(int(t) for t in prompt)))
        self._write({"prompt": list(self.sessions[-1].prompt)})

    def draft(self, n: int) -> DraftOut:
        out = self.inner.draft(n)
        self._draft = out.tokens
        return out

    def commit(self, accepted: int, token: int) -> None:
        self.inner.commit(accepted, token)
        new = [*(int(t) for t in self._draft[:accepted]), int(token)]
        self.sessions[-1].tokens.extend(new)
        self._draft = ()
        self._write({"tokens": new})

    def _write(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()


def read_sessions(path: Path) -> list[Session]:
    """The sessions a ``RecordingDrafter`` logged (a line cut short by a killed node is
    dropped; a session cut short keeps what it committed).

    A start whose prompt begins with the last session's prompt and is longer, or is that
    prompt itself when the session committed nothing, resumes that session (a new connection,
    or a restarted process appending to the same log): its prompt
    must be the session's prompt and every token the session committed, then perhaps tokens
    the user took back from the edge's ledger without logging them; the session then goes on
    with those and what the resumed start commits. One that drops or repeats a token is
    marked ``broken``."""
    sessions: list[Session] = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "prompt" in r:
            prompt = tuple(r["prompt"])
            last = sessions[-1] if sessions else None
            if last is not None and (
                (len(prompt) > len(last.prompt) and prompt[: len(last.prompt)] == last.prompt)
                # Killed before its first token: the edge hands back the bare prompt.
                or (prompt == last.prompt and not last.tokens)
            ):
                done = (*last.prompt, *last.tokens)
                if prompt[: len(done)] != done:
                    last.broken = True
                last.tokens = list(prompt[len(last.prompt) :])
                continue
            sessions.append(Session(prompt=prompt))
        elif sessions:
            sessions[-1].tokens.extend(r["tokens"])
    return sessions


Departure = Callable[[Sequence[int], Sequence[int]], "int | None"]


def check_sessions(per_user: Sequence[Sequence[Session]], reference: Departure) -> dict[str, Any]:
    """``lossless``: every session's tokens equal the target's own greedy decoding of its
    prompt (``reference(prompt, tokens)``: the first position where they depart from it, as
    ``GreedyReference`` gives it), null when nothing was committed; ``lossless_checked``
    gives what was compared."""
    bad = []
    sessions = tokens = 0
    for uid, per in enumerate(per_user):
        for k, s in enumerate(per):
            if not s.tokens:
                continue
            sessions += 1
            tokens += len(s.tokens)
            if s.broken:
                why = "a resumed start that does not continue its session"
                bad.append({"user": uid, "session": k, "position": None, "why": why})
                continue
            if (at := reference(s.prompt, s.tokens)) is not None:
                bad.append({"user": uid, "session": k, "position": at})
    return {
        # Nothing committed is nothing checked: null, never a vacuous true.
        "lossless": (not bad) if tokens else None,
        "lossless_checked": {"sessions": sessions, "tokens": tokens, "mismatches": bad},
    }


class GreedyReference:
    """Where committed tokens depart from what the target alone decodes greedily from their
    prompt: ``reference(prompt, tokens)`` is the first position whose token is not the
    target's argmax given the prompt and the tokens before it, None if there is none. One
    forward pass over the prompt and the tokens checks them all (teacher forcing): the greedy
    decoding is the one sequence whose every token is the argmax after its prefix. Decoding it
    a token at a time took a pass a token, 0.1-0.4 s each on a 2-core machine: half a minute
    after each run for 75 tokens."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device

    @classmethod
    def load(cls, setup: ModelSetup, dtype: str = "") -> GreedyReference:
        """The target of ``setup`` loaded on its own (the emulation's runner checks the nodes'
        records with it after each policy), in the dtype the edge verifies in."""
        from nodes.hf_verifier import HFVerifier

        v = HFVerifier(setup.target, device=setup.device, dtype=dtype or None)
        return cls(v.model, v.device)

    def __call__(self, prompt: Sequence[int], tokens: Sequence[int]) -> int | None:
        if not tokens:
            return None
        import torch

        # The last token's own prediction is not needed: the pass reads the prompt and every
        # token but the last, and keeps the logits of the last len(tokens) positions.
        ids = torch.tensor([[*prompt, *tokens[:-1]]], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=len(tokens)).logits
        greedy = logits[0].float().argmax(-1).tolist()
        return next(
            (j for j, (a, b) in enumerate(zip(tokens, greedy, strict=True)) if a != b), None
        )


class RealModels:
    """The ``_Backends`` of ``emu.runners.sim`` on real models (see the module docstring)."""

    def __init__(
        self,
        setup: ModelSetup,
        *,
        users: int,
        temperature: float = 0.0,
        top_k: int = 8,
        draft_threads: int = 1,
        verify_threads: int = 0,
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
            threads=verify_threads or None,  # one process, one step at a time: all cores
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
        self._sessions: list[list[Session]] = [[] for _ in range(users)]

    # --- the _Backends interface, called once per policy --------------------------------------
    def verifier(self, problem: Problem, streams: Streams) -> VerifyBackend:
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
        return RecordingDrafter(d, self._sessions[i])

    def prompts(self, i: int, user: User, rng: np.random.Generator) -> Iterator[Sequence[int]]:
        return user_prompts(self.setup.prompts, i, self.users)

    def results(self) -> dict[str, Any]:
        """``lossless`` for the policy that just ran (null unless verification is greedy)."""
        if self.temperature > 0:
            return {"lossless": None}  # no check made
        return check_sessions(self._sessions, self._reference)
