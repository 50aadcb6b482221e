"""The heterogeneous edge's models: synthetic, or the embedded pair (or the scenario's files),
for the small cell's drafter and the macro cell's verifier, the tasks' prompts, and the check
that what the users received is the target's own output.

Layer: emu (orchestration; reads the model cache). ``draftnet sim`` takes both backends in
one process; in emulation the small cell's process loads only the drafter and the macro
cell's only the verifier, each when first asked for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from emu.errors import ConfigError
from emu.planner.hetnet.model import HetnetProblem
from emu.scenario import Scenario
from emu.scenario.streams import Streams
from nodes.batched import (
    BatchDrafter,
    BatchVerifier,
    SyntheticBatchDrafter,
    SyntheticBatchVerifier,
)
from nodes.core.hetnet import TaskOutcome
from nodes.protocol.hetnet import token_width

__all__ = ["HetnetModels", "hetnet_models", "predicting"]


class HetnetModels(Protocol):
    problem: HetnetProblem  # the tasks as these models see them
    prompts: list[tuple[int, ...]]  # each task's prompt

    def drafter(self, problem: HetnetProblem, streams: Streams) -> BatchDrafter: ...
    def verifier(self, problem: HetnetProblem, streams: Streams) -> BatchVerifier: ...
    def check(self, outcomes: Sequence[TaskOutcome]) -> dict[str, Any]: ...
    def note(self) -> dict[str, Any]: ...


def predicting(problem: HetnetProblem, models: HetnetModels) -> HetnetProblem:
    """The problem the evaluator predicts these models' run with: a batch's rounds are
    ceil(O / L) where every round commits L tokens (synthetic ``expected`` acceptance), and
    its slowest task's expected rounds where acceptance is sampled (synthetic ``sampled``,
    and real models)."""
    expected = models.note().get("acceptance") == "expected"
    return dataclasses.replace(problem, rounds="expected" if expected else "sampled")


def hetnet_models(sc: Scenario, problem: HetnetProblem) -> HetnetModels:
    """The scenario's ``models.kind``: synthetic, or real (checked here, loaded when used)."""
    if sc.models.kind == "synthetic":
        return _Synthetic(sc, problem)
    return _Real(sc, problem)


class _Synthetic:
    """Random prompts and tokens, the compute model's times (``nodes.batched``)."""

    def __init__(self, sc: Scenario, problem: HetnetProblem) -> None:
        self.problem = problem
        self.acceptance = sc.hetnet.acceptance
        width = token_width(problem.bits_per_token)
        top = min(problem.vocab, 1 << (8 * width))
        rng = Streams(sc.sim.seed).prompts(0)
        self.prompts = [
            tuple(int(t) for t in rng.integers(0, top, size=t.input_len)) for t in problem.tasks
        ]

    def drafter(self, problem: HetnetProblem, streams: Streams) -> BatchDrafter:
        return SyntheticBatchDrafter(problem, streams.drafter(0), vocab=problem.vocab)

    def verifier(self, problem: HetnetProblem, streams: Streams) -> BatchVerifier:
        return SyntheticBatchVerifier(
            problem, streams.acceptance(0), acceptance=self.acceptance, vocab=problem.vocab
        )

    def check(self, outcomes: Sequence[TaskOutcome]) -> dict[str, Any]:
        return {"lossless": None}  # synthetic tokens: nothing to compare

    def note(self) -> dict[str, Any]:
        return {"kind": "synthetic", "acceptance": self.acceptance}


class _Real:
    """The embedded pair (or the scenario's model files): the small cell drafts with llama.cpp
    for a batch in one batched step, the macro cell verifies with transformers, on the
    built-in prompts in turn. Each step's time is the compute model's where the nodes pace to
    it (the simulation's virtual clock, the emulation's ``timing = "profile"``). The tasks'
    prompts are the real ones, and their acceptance the pair's measured one."""

    def __init__(self, sc: Scenario, problem: HetnetProblem) -> None:
        from emu.models.embedded import resolve_models

        m = sc.models
        setup = resolve_models(
            m.kind,
            draft=m.draft,
            target=m.target,
            device=m.device,
            max_draft_len=problem.max_draft_len,
        )
        if setup.target_info.vocab > 1 << problem.bits_per_token:
            raise ConfigError(
                f"hetnet.bits_per_token must carry the target's {setup.target_info.vocab} token "
                f"ids, got {problem.bits_per_token}"
            )
        self.sc, self.setup = sc, setup
        self.prompts = [tuple(setup.prompts[k % len(setup.prompts)]) for k in range(problem.size)]
        self.n_ctx = max(
            len(p) + t.output_len + problem.max_draft_len + 2
            for p, t in zip(self.prompts, problem.tasks, strict=True)
        )
        for name, info in (("draft", setup.draft_info), ("target", setup.target_info)):
            if self.n_ctx > info.context:
                raise ConfigError(
                    f"hetnet.output_len: a task's prompt, output and draft need {self.n_ctx} "
                    f"tokens, over the {name}'s context of {info.context}"
                )
        alpha = setup.acceptance
        tasks = tuple(
            dataclasses.replace(t, input_len=len(p), alpha=alpha or t.alpha)
            for t, p in zip(problem.tasks, self.prompts, strict=True)
        )
        self.problem = dataclasses.replace(problem, tasks=tasks)
        self._drafter: Any = None
        self._hf: Any = None
        self._reference: Any = None

    def drafter(self, problem: HetnetProblem, streams: Streams) -> BatchDrafter:
        from nodes.llama_batch_drafter import LlamaBatchDrafter

        if self._drafter is None:
            self._drafter = LlamaBatchDrafter(
                self.setup.draft,
                max_tasks=problem.size,
                n_ctx=self.n_ctx,
                threads=self.sc.models.draft_threads,
            )
        d = self._drafter
        d.reset()
        d.latency, d.prefill_latency = problem.draft_ms, problem.draft_prefill_ms
        return d  # type: ignore[no-any-return]

    def _target(self) -> Any:
        from nodes.hf_verifier import HFVerifier

        if self._hf is None:
            m = self.sc.models
            self._hf = HFVerifier(
                self.setup.target, device=self.setup.device, dtype=m.dtype or None,
                threads=m.verify_threads or None,
            )  # fmt: skip
        return self._hf

    def verifier(self, problem: HetnetProblem, streams: Streams) -> BatchVerifier:
        from nodes.hf_verifier import HFBatchVerifier

        hf = self._target()
        for k in list(hf.sessions):
            hf.drop(k)
        return HFBatchVerifier(
            hf,
            verify_time=lambda n, kv, ln, pre: problem.verify_ms(n, kv, ln, prefill=pre),
            prefill_time=problem.verify_prefill_ms,
        )

    def check(self, outcomes: Sequence[TaskOutcome]) -> dict[str, Any]:
        """``lossless``: each finished task's tokens are the target's own greedy decoding."""
        from emu.models.build import GreedyReference

        if self._reference is None:
            hf = self._target()
            self._reference = GreedyReference(hf.model, hf.device)
        bad = checked = 0
        finished = [o for o in outcomes if o.latency_ms is not None]
        for o in finished:
            checked += len(o.tokens)
            bad += self._reference(self.prompts[o.task], o.tokens) is not None
        return {
            "lossless": bad == 0 if checked else None,
            "lossless_checked": {"tasks": len(finished), "tokens": checked, "mismatches": bad},
        }

    def note(self) -> dict[str, Any]:
        return {
            "kind": self.sc.models.kind,
            "draft": str(self.setup.draft),
            "target": str(self.setup.target),
            "device": self.setup.device,
            "acceptance": "real (greedy)",
        }
