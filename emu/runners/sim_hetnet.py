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

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from channel_models.link import LinkState
from emu.errors import ConfigError
from emu.files import write_atomic
from emu.models.hetnet import HetnetModels, hetnet_models, predicting
from emu.planner import get_policy
from emu.planner.hetnet.bandwidth import allocation_hz, uplink_bps
from emu.planner.hetnet.evaluate import HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem
from emu.results.hetnet import hetnet_result
from emu.results.metrics import Recorder
from emu.runners.simlink import link_pair
from emu.scenario import Scenario, scenario_toml
from emu.scenario.streams import Streams
from nodes.core.hetnet import MacroCellCore, SmallCellCore
from nodes.core.systems import get_system
from nodes.hetnet import MacroCellNode, SmallCellNode, TaskUser
from nodes.pacing import Pacer
from nodes.protocol.hetnet import token_width

__all__ = ["checked_problem", "fronthaul_state", "simulate_hetnet", "small_cell_core"]

Progress = Callable[[str, float], None]


def small_cell_core(problem: HetnetProblem, plan: HetnetPlan) -> SmallCellCore:
    """The small cell's core running ``plan``: each task's band, the grants, the discipline,
    the uplink's token width and the fronthaul's distributions."""
    return SmallCellCore(
        plan.batches,
        plan.spec_len,
        [float(b) for b in allocation_hz(problem, plan.batches, plan.bandwidth)],
        grant=plan.bandwidth,
        discipline=problem.discipline,
        width=token_width(problem.bits_per_token),
        prob_bytes_per_token=problem.vocab * problem.prob_bits // 8,
    )


def fronthaul_state(sc: Scenario) -> LinkState:
    """The deployment's link from the small cell to the macro cell, each way."""
    d = sc.deployment
    found = d.link(d.drafters[0], d.verifiers[0])
    assert found is not None  # hetnet_problem() checked it
    link = found[1]
    return LinkState(
        rate_bps=link.rate_bps, delay_ms=link.delay_ms, jitter_ms=link.jitter_ms, loss=link.loss
    )


async def _run_policy(
    sc: Scenario,
    problem: HetnetProblem,
    plan: HetnetPlan,
    horizon_s: float,
    rec: Recorder,
    *,
    models: HetnetModels,
) -> tuple[list[TaskUser], SmallCellNode, float, float]:
    """The nodes running ``plan`` until every task is done or ``horizon_s`` has passed; the
    users, the small cell, when it started on the clock, and how long it took."""
    streams = Streams(sc.sim.seed)
    drafter, verifier = models.drafter(problem, streams), models.verifier(problem, streams)
    width = token_width(problem.bits_per_token)
    rates = uplink_bps(problem, plan.batches, plan.bandwidth)
    sbs = SmallCellNode(
        small_cell_core(problem, plan),
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
    fronthaul = fronthaul_state(sc)
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
            up = LinkState(rate_bps=float(rates[k]))  # its planner rate, b_k eta_k
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
    return users, sbs, t0, t_end


def _steady(state: LinkState) -> Callable[[float], LinkState]:
    return lambda _t: state


async def _serve_task(user: TaskUser, stream: trio.abc.Stream) -> None:
    """A user until its task is done; one that fails is recorded and stops alone."""
    try:
        await user.run(stream)
    except Exception as exc:  # its fault is its own: the other users and the servers go on
        user.sink({"ev": "gave_up", "t": trio.current_time(), "user": user.task, "why": str(exc)})


def checked_problem(sc: Scenario, policies: list[str]) -> HetnetProblem:
    """The scenario's tasks, once every policy is one of the system's and plans that many
    (ConfigError in one line otherwise)."""
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
    return problem


def simulate_hetnet(
    sc: Scenario,
    policies: list[str],
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run each policy's plan on the nodes; the ``sim --json`` object."""
    problem = checked_problem(sc, policies)
    t_wall = time.perf_counter()
    models = hetnet_models(sc, problem)
    problem = models.problem
    rec = Recorder(out_dir / "events.jsonl" if out_dir else None)
    if out_dir is not None:
        (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    results: dict[str, Any] = {}

    def summary() -> dict[str, Any]:
        return {
            "mode": "sim",
            "system": "hetnet",
            "scenario": sc.name,
            "models": models.note(),
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
            ev = evaluate(predicting(problem, models), plan)
            horizon_s = 2.0 * ev.makespan_ms / 1e3 + sc.sim.duration_s
            users, sbs, t0, t_end = trio.run(
                functools.partial(_run_policy, sc, problem, plan, horizon_s, rec, models=models),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            measured = hetnet_result(
                problem,
                plan=plan,
                ev=ev,
                outcomes=[u.outcome() for u in users],
                stats=sbs.core.stats,
                t0=t0,
                t_end=t_end,
                user_faults=sbs.faults,
            )
            checked = models.check([u.outcome() for u in users])
            results[policy] = measured | checked | {"wall_s": time.perf_counter() - t_policy}
            if progress is not None:
                progress(policy, sc.sim.duration_s)
            if out_dir is not None:  # as each policy ends: nothing measured is lost
                doc = json.dumps(summary(), indent=2, default=float)
                write_atomic(out_dir / "summary.json", doc)
    finally:
        rec.close()
    return summary()
