"""``draftnet sim`` of the heterogeneous-edge system: its users, small cell and macro cell in one
process on trio's virtual clock, the evaluator's prediction beside what they measured.

Layer: emu (orchestration). The nodes are ``nodes.hetnet``'s, the emulation's; only the links
(in-memory, ``emu.runners.simlink``) and the clock differ. Each user's uplink carries its share
of the band at its planner rate, b_k eta_k (the small cell's grant says when it may send); the
fronthaul has the deployment's rate, delay, jitter and loss both ways; the downlink is ideal
(hetnet.md 3.4: off). Backends are synthetic (``nodes.batched``): the compute model's times,
random tokens, and ``hetnet.acceptance`` sampled or expected.

The workload is offline: every task is there at t = 0, and a policy's run ends when every
task is done (or, should one never be, at ``sim.duration_s`` past the prediction's makespan).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing

from channel_models.link import LinkState
from emu.errors import ConfigError
from emu.files import write_atomic
from emu.planner import get_policy
from emu.planner.hetnet.bandwidth import allocation_hz, spectral_efficiency
from emu.planner.hetnet.evaluate import HetnetEvaluation, HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem
from emu.results.metrics import Recorder
from emu.runners.simlink import link_pair
from emu.scenario import Scenario, scenario_toml
from emu.scenario.streams import Streams
from nodes.batched import (
    BatchDrafter,
    BatchVerifier,
    SyntheticBatchDrafter,
    SyntheticBatchVerifier,
)
from nodes.core.hetnet import BatchStats, MacroCellCore, SmallCellCore
from nodes.core.systems import get_system
from nodes.hetnet import MacroCellNode, SmallCellNode, TaskUser
from nodes.pacing import Pacer
from nodes.protocol.hetnet import token_width

__all__ = ["simulate_hetnet"]

Progress = Callable[[str, float], None]


class _Synthetic:
    """Random prompts and tokens, the compute model's times (``nodes.batched``)."""

    kind = "synthetic"

    def __init__(self, sc: Scenario, problem: HetnetProblem) -> None:
        self.acceptance = sc.hetnet.acceptance
        width = token_width(problem.bits_per_token)
        top = min(problem.vocab, 1 << (8 * width))
        rng = Streams(sc.sim.seed).prompts(0)
        self.prompts = [
            tuple(int(t) for t in rng.integers(0, top, size=t.input_len)) for t in problem.tasks
        ]

    def backends(
        self, problem: HetnetProblem, streams: Streams
    ) -> tuple[BatchDrafter, BatchVerifier]:
        return (
            SyntheticBatchDrafter(problem, streams.drafter(0), vocab=problem.vocab),
            SyntheticBatchVerifier(
                problem, streams.acceptance(0), acceptance=self.acceptance, vocab=problem.vocab
            ),
        )

    def check(self, users: list[TaskUser]) -> dict[str, Any]:
        return {"lossless": None}  # synthetic tokens: nothing to compare


class _Real:
    """The embedded pair (or the scenario's model files): the small cell drafts with llama.cpp
    for a batch in one batched step, the macro cell verifies with transformers; the built-in
    prompts, in turn; each step's time the compute model's (virtual time: the simulation's
    clock does not move while a model computes). Loaded once for every policy."""

    kind = "real"

    def __init__(self, sc: Scenario, problem: HetnetProblem) -> None:
        from emu.deploy.runtime import model_setup
        from emu.models.build import GreedyReference
        from nodes.hf_verifier import HFVerifier
        from nodes.llama_batch_drafter import LlamaBatchDrafter

        setup = model_setup(sc)
        if setup.target_info.vocab > 1 << problem.bits_per_token:
            raise ConfigError(
                f"hetnet.bits_per_token must carry the target's {setup.target_info.vocab} token "
                f"ids, got {problem.bits_per_token}"
            )
        self.setup = setup
        self.prompts = [tuple(setup.prompts[k % len(setup.prompts)]) for k in range(problem.size)]
        n_ctx = max(
            len(p) + t.output_len + problem.max_draft_len + 2
            for p, t in zip(self.prompts, problem.tasks, strict=True)
        )
        for name, info in (("draft", setup.draft_info), ("target", setup.target_info)):
            if n_ctx > info.context:
                raise ConfigError(
                    f"hetnet.output_len: a task's prompt, output and draft need {n_ctx} tokens, "
                    f"over the {name}'s context of {info.context}"
                )
        m = sc.models
        self.drafter = LlamaBatchDrafter(
            setup.draft, max_tasks=problem.size, n_ctx=n_ctx, threads=m.draft_threads
        )
        self.hf = HFVerifier(
            setup.target, device=setup.device, dtype=m.dtype or None,
            threads=m.verify_threads or None,
        )  # fmt: skip
        self.reference = GreedyReference(self.hf.model, self.hf.device)

    def problem(self, problem: HetnetProblem) -> HetnetProblem:
        """The tasks with the real prompts' lengths and the pair's measured acceptance."""
        alpha = self.setup.acceptance
        tasks = tuple(
            dataclasses.replace(t, input_len=len(p), alpha=alpha or t.alpha)
            for t, p in zip(problem.tasks, self.prompts, strict=True)
        )
        return dataclasses.replace(problem, tasks=tasks)

    def backends(
        self, problem: HetnetProblem, streams: Streams
    ) -> tuple[BatchDrafter, BatchVerifier]:
        from nodes.hf_verifier import HFBatchVerifier

        self.drafter.reset()
        for k in list(self.hf.sessions):
            self.hf.drop(k)
        self.drafter.latency = problem.draft_ms
        self.drafter.prefill_latency = problem.draft_prefill_ms
        verifier = HFBatchVerifier(
            self.hf,
            verify_time=lambda n, kv, ln, pre: problem.verify_ms(n, kv, ln, prefill=pre),
            prefill_time=problem.verify_prefill_ms,
        )
        return self.drafter, verifier

    def check(self, users: list[TaskUser]) -> dict[str, Any]:
        """``lossless``: each finished task's tokens are the target's own greedy decoding."""
        bad = checked = 0
        for u in users:
            if u.latency_ms is None:
                continue
            checked += len(u.tokens)
            bad += u.tokens != self.reference(u.prompt, len(u.tokens))
        return {
            "lossless": bad == 0 if checked else None,
            "lossless_checked": {"tasks": sum(u.latency_ms is not None for u in users),
                                 "tokens": checked, "mismatches": bad},
        }  # fmt: skip


async def _run_policy(
    sc: Scenario,
    problem: HetnetProblem,
    plan: HetnetPlan,
    horizon_s: float,
    rec: Recorder,
    *,
    models: _Synthetic | _Real,
) -> tuple[list[TaskUser], SmallCellNode, float]:
    """The nodes running ``plan`` until every task is done or ``horizon_s`` has passed; the
    users, the small cell, and when it ended."""
    streams = Streams(sc.sim.seed)
    drafter, verifier = models.backends(problem, streams)
    width = token_width(problem.bits_per_token)
    band = allocation_hz(problem, plan.batches, plan.bandwidth)
    eta = spectral_efficiency(problem)
    sbs = SmallCellNode(
        SmallCellCore(
            plan.batches,
            plan.spec_len,
            [float(b) for b in band],
            grant=plan.bandwidth,
            discipline=problem.discipline,
            width=width,
            prob_bytes_per_token=problem.vocab * problem.prob_bits // 8,
        ),
        drafter,
        pacer=Pacer("virtual"),
        sink=rec.for_node("sbs"),
    )
    mbs = MacroCellNode(
        MacroCellCore(discipline=problem.discipline),
        verifier,
        pacer=Pacer("virtual"),
        sink=rec.for_node("mbs"),
    )
    d = sc.deployment
    _, link = d.link(d.drafters[0], d.verifiers[0]) or (0, None)
    assert link is not None
    fronthaul = LinkState(
        rate_bps=problem.fronthaul_bps,
        delay_ms=problem.fronthaul_latency_ms,
        jitter_ms=link.jitter_ms,
        loss=link.loss,
    )
    prompts = models.prompts
    t0 = trio.current_time()
    users = [
        TaskUser(k, prompts[k], t.output_len, width=width, sink=rec, t0=t0)
        for k, t in enumerate(problem.tasks)
    ]
    async with trio.open_nursery() as nursery:
        to_mbs, at_mbs = link_pair(
            _steady(fronthaul), _steady(fronthaul), streams.link(problem.size)
        )
        nursery.start_soon(mbs.serve_stream, at_mbs)
        nursery.start_soon(sbs.run, to_mbs)
        for k, user in enumerate(users):
            up = LinkState(rate_bps=float(band[k] * eta[k]))  # its planner rate, b_k eta_k
            ideal = LinkState()  # the downlink: hetnet.md 3.4 leaves it out
            mine, theirs = link_pair(_steady(up), _steady(ideal), streams.link(k))
            nursery.start_soon(sbs.serve_user, theirs)
            nursery.start_soon(_serve_task, user, mine)
        with trio.move_on_after(horizon_s):
            await sbs.done.wait()
            for user in users:  # the last verdicts on their way down
                while user.latency_ms is None:
                    await trio.sleep(0.001)
        t_end = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    return users, sbs, t_end


def _steady(state: LinkState) -> Callable[[float], LinkState]:
    return lambda _t: state


async def _serve_task(user: TaskUser, stream: trio.abc.Stream) -> None:
    """A user until its task is done; one that fails is recorded and stops alone."""
    try:
        await user.run(stream)
    except Exception as exc:  # its fault is its own: the other users and the servers go on
        user.sink({"ev": "gave_up", "t": trio.current_time(), "user": user.task, "why": str(exc)})


def _summary_ms(latency: list[float]) -> dict[str, float]:
    lat = np.array(latency)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
        "total": float(lat.sum()),
        "mean": float(lat.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "makespan": float(lat.max()),
    }


def _breakdown_ms(stats: list[BatchStats], users: list[TaskUser]) -> dict[str, float]:
    """Where a finished task's latency went, the mean over them, as the small cell measured
    it: waiting for its batch's uploads, the small cell's steps, the fronthaul both ways, the
    macro cell's verifications, and queueing (the rest: waiting for a busy server)."""
    out = dict.fromkeys(("upload_wait", "draft", "fronthaul", "verify", "queue"), 0.0)
    done = {u.task: u.latency_ms for u in users if u.latency_ms is not None}
    for st in stats:
        for k in st.tasks:
            if k not in done or st.released_s is None:
                continue
            share = 1.0 / len(done)
            parts = {
                "upload_wait": st.released_s * 1e3,
                "draft": st.draft_ms,
                "fronthaul": st.fronthaul_ms,
                "verify": st.verify_ms,
            }
            for key, ms in parts.items():
                out[key] += share * ms
            out["queue"] += share * (done[k] - sum(parts.values()))
    return out


def _result(
    problem: HetnetProblem,
    *,
    plan: HetnetPlan,
    ev: HetnetEvaluation,
    users: list[TaskUser],
    sbs: SmallCellNode,
    t_end: float,
) -> dict[str, Any]:
    done = [u.latency_ms for u in users if u.latency_ms is not None]
    stats = sbs.core.stats
    drafted = sum(s.draft_tokens for s in stats)
    accepted = sum(s.accepted_tokens for s in stats)
    task_rounds = sum(s.rounds * len(s.tasks) for s in stats if s.spec_len > 0)
    tokens = sum(len(u.tokens) for u in users)
    ttft = [u.ttft_ms for u in users if u.ttft_ms is not None]
    predicted = ev.summary_ms()
    measured = _summary_ms(done) if done else None
    return {
        "tasks": problem.size,
        "finished": len(done),
        "latency_ms": measured,
        "predicted_latency_ms": predicted,
        "error_pct": None
        if measured is None
        else 100.0 * (measured["mean"] / predicted["mean"] - 1.0),
        "breakdown_ms": _breakdown_ms(stats, users),
        "predicted_breakdown_ms": ev.breakdown_ms(plan),
        "ttft_ms": None
        if not ttft
        else dict(zip(("p50", "p95"), map(float, np.percentile(ttft, [50, 95])), strict=True)),
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_len": (accepted + task_rounds) / task_rounds if task_rounds else None,
        "tokens": tokens,
        "rounds": sum(s.rounds for s in stats),
        "predicted_rounds": sum(ev.rounds),
        "throughput_tok_s": tokens / t_end if t_end > 0 else 0.0,
        "plan": {
            "batches": [list(b) for b in plan.batches],
            "spec_len": list(plan.spec_len),
            "bandwidth": plan.bandwidth,
        },
        "user_faults": sbs.faults,
        "duration_s": t_end,
    }


def _models_note(sc: Scenario, models: _Synthetic | _Real) -> dict[str, Any]:
    if isinstance(models, _Synthetic):
        return {"kind": "synthetic", "acceptance": models.acceptance}
    return {
        "kind": sc.models.kind,
        "draft": str(models.setup.draft),
        "target": str(models.setup.target),
        "device": models.setup.device,
        "acceptance": "real (greedy)",
    }


def simulate_hetnet(
    sc: Scenario,
    policies: list[str],
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run each policy's plan on the nodes; the ``sim --json`` object."""
    system = get_system(sc.deployment.system)
    problem = sc.hetnet_problem()
    for p in policies:
        system.check_policy(p, where="--policy")
        chosen = get_policy(p)
        if chosen.max_users is not None and problem.size > chosen.max_users:
            raise ConfigError(
                f"--policy {p!r} plans at most {chosen.max_users} tasks (users.count), "
                f"got {problem.size}"
            )
    t_wall = time.perf_counter()
    models: _Synthetic | _Real
    if sc.models.kind == "synthetic":
        models = _Synthetic(sc, problem)
    else:
        models = _Real(sc, problem)
        problem = models.problem(problem)
    rec = Recorder(out_dir / "events.jsonl" if out_dir else None)
    if out_dir is not None:
        (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    results: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        return {
            "mode": "sim",
            "system": "hetnet",
            "scenario": sc.name,
            "models": _models_note(sc, models),
            "tasks": problem.size,
            "seed": sc.sim.seed,
            "results": dict(results),
            "wall_s": time.perf_counter() - t_wall,
        }

    try:
        for policy in policies:
            rec.policy = policy
            t_policy = time.perf_counter()
            plan = get_policy(policy).plan(problem)
            ev = evaluate(problem, plan)
            horizon_s = 2.0 * ev.makespan_ms / 1e3 + sc.sim.duration_s
            users, sbs, t_end = trio.run(
                functools.partial(_run_policy, sc, problem, plan, horizon_s, rec, models=models),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            measured = _result(problem, plan=plan, ev=ev, users=users, sbs=sbs, t_end=t_end)
            checked = models.check(users)
            results[policy] = measured | checked | {"wall_s": time.perf_counter() - t_policy}
            if progress is not None:
                progress(policy, sc.sim.duration_s)
            if out_dir is not None:  # as each policy ends: nothing measured is lost
                doc = json.dumps(summary(), indent=2, default=float)
                write_atomic(out_dir / "summary.json", doc)
    finally:
        rec.close()
    return summary()
