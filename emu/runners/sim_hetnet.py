"""``draftnet sim`` of the heterogeneous-edge system: its users, small cell and macro cell in one
process on trio's virtual clock, the evaluator's prediction beside what they measured.

Layer: emu (orchestration). The nodes are ``nodes.hetnet``'s, the emulation's; only the links
(in-memory, ``emu.runners.simlink``) and the clock differ. Each user's uplink carries its share
of the band at its planner rate, b_k eta_k (the small cell's grant says when it may send); the
fronthaul has the deployment's rate, delay, jitter and loss both ways; the downlink is ideal
(hetnet.md 3.4: off). Backends are synthetic (``nodes.batched``): the compute model's times,
random tokens, and ``hetnet.acceptance`` sampled or expected.

Every task is there at t = 0 (the paper's offline batch), or its user arrives at its
``arrival_ms`` (``[hetnet.arrivals]``) and the small cell grants it when its window opens. A
policy's run ends when every task is done (or, should one never be, at ``sim.duration_s`` past
twice the prediction's makespan).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing

from channel_models.cell import LinkSeries
from channel_models.link import LinkState
from channel_models.two_tier import gain_series
from emu.errors import ConfigError
from emu.files import write_atomic
from emu.models.hetnet import HetnetModels, hetnet_models, predicting
from emu.planner import get_policy
from emu.planner.hetnet.adapt import next_length
from emu.planner.hetnet.bandwidth import allocation_hz, gain_db, uplink_bps
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

__all__ = [
    "checked_problem",
    "fronthaul_state",
    "simulate_hetnet",
    "small_cell_core",
    "uplink_series",
]

Progress = Callable[[str, float], None]


def small_cell_core(
    problem: HetnetProblem,
    plan: HetnetPlan,
    cell: int = 0,
    *,
    learn: bool = False,
) -> SmallCellCore:
    """Small cell ``cell``'s core running its batches of ``plan`` (numbered as the plan does):
    each task's band, the grants, the discipline, the uplink's token width, the fronthaul's
    distributions, when each batch's window opens (from the start: ``SmallCellCore.start``),
    the acceptance the planner was told and, with ``learn``, each round's length from the
    acceptance learned (``hetnet.learn_alpha``)."""
    mine = [m for m, b in enumerate(plan.batches) if problem.tasks[b[0]].cell == cell]
    band = allocation_hz(problem, plan.batches, plan.bandwidth, plan.opens_ms)
    return SmallCellCore(
        [plan.batches[m] for m in mine],
        [plan.spec_len[m] for m in mine],
        [float(b) for b in band],
        grant=plan.bandwidth,
        discipline=problem.discipline,
        width=token_width(problem.bits_per_token),
        prob_bytes_per_token=problem.vocab * problem.prob_bits // 8,
        ids=mine,
        opens_s=[plan.opens_ms[m] / 1e3 for m in mine] if plan.opens_ms else (),
        priors=[t.alpha for t in problem.believed().tasks],
        adapt=functools.partial(next_length, problem, cell) if learn else None,
    )


def fronthaul_state(problem: HetnetProblem, sc: Scenario, cell: int = 0) -> LinkState:
    """A small cell's fronthaul to the macro cell, each way: its rate and delay, and the
    deployment link's jitter and loss."""
    d = sc.deployment
    found = d.link(d.drafters[0], d.verifiers[0])
    assert found is not None  # hetnet_problem() checked it
    link = found[1]
    rate_bps, delay_ms = problem.fronthaul(cell)
    return LinkState(rate_bps=rate_bps, delay_ms=delay_ms, jitter_ms=link.jitter_ms, loss=link.loss)


UPLINK_TICK_MS = 1.0  # a faded uplink's rate is held this long


def uplink_series(
    sc: Scenario, problem: HetnetProblem, plan: HetnetPlan, horizon_s: float
) -> LinkSeries | None:
    """With ``hetnet.radio.fading``, each user's uplink rate b_k eta_k(t) from its faded gain
    every ``UPLINK_TICK_MS`` for ``horizon_s`` (the last tick holds after); None without."""
    radio = sc.hetnet.radio
    if radio is None or radio.fading == "none":
        return None
    rng = Streams(sc.sim.seed).radio()
    gains = gain_series(radio, gain_db(problem), horizon_s, UPLINK_TICK_MS, rng)
    rate = uplink_bps(problem, plan.batches, plan.bandwidth, plan.opens_ms, gains_db=gains)
    zeros = np.zeros_like(rate)
    return LinkSeries(
        tick_s=UPLINK_TICK_MS / 1e3, rate_bps=rate, delay_ms=zeros, jitter_ms=zeros, loss=zeros
    )


def uplink_links(
    sc: Scenario, problem: HetnetProblem, plan: HetnetPlan, horizon_s: float
) -> list[Callable[[float], LinkState]]:
    """Each user's uplink over time: its share of the band at its planner rate b_k eta_k, or,
    with ``hetnet.radio.fading``, its faded rate (``uplink_series``; the planner plans with the
    mean gain, so the fading's cost shows as error)."""
    series = uplink_series(sc, problem, plan, horizon_s)
    if series is None:
        rates = uplink_bps(problem, plan.batches, plan.bandwidth, plan.opens_ms)
        return [_steady(LinkState(rate_bps=float(r))) for r in rates]
    return [series.timeline(k) for k in range(problem.size)]


async def _run_policy(
    sc: Scenario,
    problem: HetnetProblem,
    plan: HetnetPlan,
    horizon_s: float,
    rec: Recorder,
    *,
    models: HetnetModels,
    uplinks: list[Callable[[float], LinkState]],
) -> tuple[list[TaskUser], list[SmallCellNode], float, float]:
    """The nodes running ``plan`` until every task is done or ``horizon_s`` has passed; the
    users, the small cells, when they started on the clock, and how long it took."""
    streams = Streams(sc.sim.seed)
    drafter, verifier = models.drafter(problem, streams), models.verifier(problem, streams)
    width = token_width(problem.bits_per_token)
    t0 = trio.current_time()
    cells = [
        SmallCellNode(
            small_cell_core(problem, plan, c, learn=sc.hetnet.learn_alpha),
            drafter,
            pacer=Pacer("virtual"),
            sink=rec.for_node("sbs" + problem.cell_suffix(c)),
        )
        for c in range(problem.cells)
    ]
    for sbs in cells:
        sbs.core.start(t0)
    mbs = MacroCellNode(
        MacroCellCore(discipline=problem.discipline),
        verifier,
        pacer=Pacer("virtual"),
        sink=rec.for_node("mbs"),
    )
    prompts = models.prompts
    users = [  # each one's latency from its arrival
        TaskUser(k, prompts[k], t.output_len, width=width, sink=rec, t0=t0 + t.arrival_ms / 1e3)
        for k, t in enumerate(problem.tasks)
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mbs.work)
        for c, sbs in enumerate(cells):
            fronthaul = _steady(fronthaul_state(problem, sc, c))
            to_mbs, at_mbs = link_pair(fronthaul, fronthaul, streams.link(problem.size + c))
            nursery.start_soon(mbs.serve_stream, at_mbs)
            nursery.start_soon(sbs.run, to_mbs)
        for k, user in enumerate(users):
            ideal = LinkState()  # the downlink: hetnet.md 3.4 leaves it out
            mine, theirs = link_pair(uplinks[k], _steady(ideal), streams.link(k))
            nursery.start_soon(cells[problem.tasks[k].cell].serve_user, theirs)
            nursery.start_soon(_serve_task, user, mine)
        with trio.move_on_after(horizon_s):
            for sbs in cells:
                await sbs.done.wait()
            for user in users:  # the last verdicts on their way down
                while user.latency_ms is None:
                    await trio.sleep(0.001)
        t_end = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    return users, cells, t0, t_end


def _steady(state: LinkState) -> Callable[[float], LinkState]:
    return lambda _t: state


async def _serve_task(user: TaskUser, stream: trio.abc.Stream) -> None:
    """A user until its task is done; one that fails is recorded and stops alone."""
    try:
        await trio.sleep_until(user.t0)  # it arrives
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
            # The uploads' fading, long enough for the last upload however slow it gets.
            uplinks = uplink_links(sc, problem, plan, 4.0 * max(ev.release_ms) / 1e3 + 1.0)
            run = functools.partial(
                _run_policy, sc, problem, plan, horizon_s, rec, models=models, uplinks=uplinks
            )
            users, cells, t0, t_end = trio.run(
                run,
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            measured = hetnet_result(
                problem,
                plan=plan,
                ev=ev,
                outcomes=[u.outcome() for u in users],
                stats=[st for sbs in cells for st in sbs.core.stats],
                t0=t0,
                t_end=t_end,
                user_faults=sum(sbs.faults for sbs in cells),
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
