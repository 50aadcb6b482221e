"""The heterogeneous-edge system's model interfaces: a drafter that drafts for a batch of tasks
in one batched step (the small cell), and a verifier that verifies or decodes a batch (the
macro cell); and their synthetic backends.

Layer: nodes. Backends are synchronous: a call computes and returns what it produced and the
time that computation stands for (``compute_ms``), which the node's pacer turns into time on
its clock (``nodes.pacing``).

The synthetic backends are for the simulation and the unit tests, and say so: random token ids,
and exactly the pass times of the problem's compute model (``HetnetProblem.pass_ms``) at the
batch's padded KV length, so that the simulation checks the execution (grants, uploads, the
servers' queues, the fronthaul, messages) against the evaluator. Acceptance is ``sampled``
(each draft token of task k accepted with its alpha_k until the first rejection, hetnet.md
3.2's sampled mode) or ``expected`` (a batch commits floor(r L) tokens a task by round r, L =
L(l, mean alpha) as the evaluator assumes, so that its rounds are the evaluator's R_m).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from emu.planner.hetnet.model import HetnetProblem, expected_tokens_per_round

__all__ = [
    "ACCEPTANCE_MODES",
    "BatchDrafter",
    "BatchVerifier",
    "SyntheticBatchDrafter",
    "SyntheticBatchVerifier",
]

ACCEPTANCE_MODES = ("sampled", "expected")
Contexts = Sequence[Sequence[int]]  # each task's prompt and the tokens after it


class BatchDrafter(Protocol):
    def prefill(self, tasks: Sequence[int], contexts: Contexts) -> float:
        """Prefill the draft model on each task's prompt; the compute time [ms]."""
        ...

    def draft(
        self, tasks: Sequence[int], contexts: Contexts, length: int
    ) -> tuple[list[tuple[int, ...]], float]:
        """``length`` draft tokens for each task, in one batched step, and its time [ms]."""
        ...


class BatchVerifier(Protocol):
    def verify(
        self,
        batch: int,
        round: int,
        tasks: Sequence[int],
        contexts: Contexts,
        drafts: Sequence[Sequence[int]],
        *,
        prompt_len: int,
    ) -> tuple[list[int], list[tuple[int, ...]], float]:
        """Verify each task's draft after its context (round 1: the target prefills the
        ``prompt_len`` tokens of the prompts first): the drafts accepted, the token after them,
        and the time [ms]."""
        ...

    def prefill(
        self, tasks: Sequence[int], contexts: Contexts
    ) -> tuple[list[tuple[int, ...]], float]:
        """The target alone: prefill the prompts; the token each prefill yields (none where
        the model counts the prefill apart from the passes that decode), and the time [ms]."""
        ...

    def decode(self, tasks: Sequence[int], contexts: Contexts) -> tuple[list[int], float]:
        """The target alone: one token a task, and the pass's time [ms]."""
        ...

    def forget(self, tasks: Sequence[int]) -> None:
        """The tasks are done: drop what the model holds of them (their KV caches)."""
        ...


def _kv(contexts: Contexts) -> int:
    """The batch's KV length: padded to its longest context."""
    return max(len(c) for c in contexts)


@dataclass(slots=True)
class SyntheticBatchDrafter:
    """Random drafts in the compute model's time (synthetic: simulation and tests)."""

    problem: HetnetProblem
    rng: np.random.Generator
    vocab: int = 32000

    def prefill(self, tasks: Sequence[int], contexts: Contexts) -> float:
        return self.problem.draft_prefill_ms(len(tasks), _kv(contexts))

    def draft(
        self, tasks: Sequence[int], contexts: Contexts, length: int
    ) -> tuple[list[tuple[int, ...]], float]:
        ids = self.rng.integers(0, self.vocab, size=(len(tasks), length))
        drafts = [tuple(int(t) for t in row) for row in ids]
        return drafts, self.problem.draft_ms(len(tasks), _kv(contexts), length)


@dataclass(slots=True)
class SyntheticBatchVerifier:
    """Acceptance ``sampled`` or ``expected`` (see the module), in the compute model's time
    (synthetic: simulation and tests)."""

    problem: HetnetProblem
    rng: np.random.Generator
    acceptance: str = "sampled"
    vocab: int = 32000

    def __post_init__(self) -> None:
        if self.acceptance not in ACCEPTANCE_MODES:
            raise ValueError(
                f"acceptance must be one of {', '.join(ACCEPTANCE_MODES)}, got {self.acceptance!r}"
            )

    def verify(
        self,
        batch: int,
        round: int,
        tasks: Sequence[int],
        contexts: Contexts,
        drafts: Sequence[Sequence[int]],
        *,
        prompt_len: int,
    ) -> tuple[list[int], list[tuple[int, ...]], float]:
        length = len(drafts[0])
        n = len(tasks)
        ms = self.problem.verify_ms(n, _kv(contexts), length, prefill=prompt_len)
        if self.acceptance == "expected":
            alpha = math.fsum(self.problem.tasks[k].alpha for k in tasks) / n
            per_round = expected_tokens_per_round(alpha, length)
            # floor(r L) tokens a task by round r: this round adds the difference, its bonus
            # among them.
            add = math.floor(round * per_round + 1e-9) - math.floor((round - 1) * per_round + 1e-9)
            accepted = [min(length, max(0, add - 1))] * n
        else:
            accepted = []
            for k in tasks:
                alpha = self.problem.tasks[k].alpha
                a = 0
                while a < length and self.rng.random() < alpha:
                    a += 1
                accepted.append(a)
        tokens: list[tuple[int, ...]] = [(int(self.rng.integers(0, self.vocab)),) for _ in tasks]
        return accepted, tokens, ms

    def prefill(
        self, tasks: Sequence[int], contexts: Contexts
    ) -> tuple[list[tuple[int, ...]], float]:
        """No token: the evaluator's target alone decodes O_m passes after its prefill."""
        return [() for _ in tasks], self.problem.verify_prefill_ms(len(tasks), _kv(contexts))

    def forget(self, tasks: Sequence[int]) -> None:
        pass  # nothing held

    def decode(self, tasks: Sequence[int], contexts: Contexts) -> tuple[list[int], float]:
        ms = self.problem.verify_ms(len(tasks), _kv(contexts), 0)
        return [int(t) for t in self.rng.integers(0, self.vocab, size=len(tasks))], ms
