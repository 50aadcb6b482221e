"""Lab mode's heterogeneous-edge roles, each its own command on its own machine:

    draftnet macro-cell [SCENARIO] --listen HOST:PORT --connect SMALL_CELL (--lab DIR | ...)
    draftnet small-cell [SCENARIO] --listen HOST:PORT --connect MACRO_CELL (--lab | ...) [--out]
    draftnet user [SCENARIO] --id K --connect SMALL_CELL (--lab DIR | --insecure)

Layer: emu (processes, sockets, files). The node code is the emulation's (``nodes.hetnet``, as
``emu.runners.hetnet_node`` builds it); lab mode adds the door (``emu.lab.door``): every
connection opens with a Join checked against the node's certificate or token, and a user's
connection carries only its own task. The small cell plans (hetnet.md: the planner runs
there), serves its users, and is the run's collector: the macro cell and every user keep a
records channel to it, measure their clocks against its clock and stream their records,
stamped on it. The workload is the paper's offline one: the small cell starts once every task's
user has attached (or ``--wait`` has passed: a task whose user never came is not done), and
each task's latency is from that start to its last tokens' arrival at its user, on the small
cell's clock. It stops when every task is done and writes ``summary.json``: the ``run --json``
fields of the policy, and ``auth``, ``refused`` and ``clock_offset_ms``. One small cell:
``hetnet.radio.small_cells`` > 1 is the emulation's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from emu.errors import ConfigError
from emu.lab.door import Channel, Door, join, open_records_link, refuse, serve_records
from emu.lab.roles import FAREWELL_S, RunLog, collecting, lab_clock, node_log
from emu.lab.tls import Credentials, Gate, dial
from emu.models.hetnet import HetnetModels, hetnet_models, predicting
from emu.planner import get_policy
from emu.planner.hetnet.evaluate import evaluate
from emu.planner.hetnet.model import HetnetProblem
from emu.results.hetnet import hetnet_result
from emu.runners.node import paced, until_signalled
from emu.runners.sim_hetnet import checked_problem, small_cell_core
from emu.scenario import Scenario
from emu.scenario.streams import Streams
from nodes.core.hetnet import MacroCellCore, TaskOutcome
from nodes.core.verifier import user_node
from nodes.hetnet import MacroCellNode, SmallCellNode, TaskUser
from nodes.protocol.hetnet import token_width

__all__ = ["MACRO", "SMALL", "hetnet_for_lab", "run_macro_cell", "run_small_cell", "run_task_user"]

SMALL, MACRO = "sbs", "mbs"  # the cells' node names (their certificates')


def hetnet_for_lab(sc: Scenario) -> HetnetModels:
    """The scenario's models and tasks, if these roles can run them (a ConfigError if not)."""
    if sc.deployment.system != "hetnet":
        raise ConfigError(
            "deployment.system must be hetnet for draftnet small-cell and macro-cell, got "
            f"{sc.deployment.system!r}"
        )
    problem = checked_problem(sc, [sc.planner.policy])
    if problem.cells != 1:
        raise ConfigError(
            f"hetnet.radio.small_cells must be 1 in lab mode (the small cell collects the run), "
            f"got {problem.cells}"
        )
    if problem.online:
        raise ConfigError(
            "hetnet.arrivals must have every task there at the start in lab mode (the paper's "
            "offline workload), got tasks that arrive later"
        )
    return hetnet_models(sc, problem)


async def _serve_macro(
    sc: Scenario, *, listen: tuple[str, int], small: tuple[str, int], cred: Credentials,
    mine: RunLog, duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    models = hetnet_for_lab(sc)
    problem = models.problem
    pacer = paced(sc)
    async with trio.open_nursery() as nursery:
        # Its records reach the small cell once it is up (it dials this cell first).
        link = await open_records_link(nursery, small, cred, server=SMALL, what="small cell",
                                       sink=mine.for_node(MACRO), wait_s=0.0)  # fmt: skip
        mbs = MacroCellNode(MacroCellCore(discipline=problem.discipline),
                            models.verifier(problem, Streams(sc.sim.seed)), pacer=pacer,
                            sink=link.emit)  # fmt: skip

        async def fronthaul(stream: trio.abc.Stream, who: str) -> None:
            if who != SMALL:
                refuse(link.emit, f"only the small cell ({SMALL}) sends rounds, not {who}", who)
                await trio.aclose_forcefully(stream)
                return
            await mbs.serve_stream(stream)

        nursery.start_soon(mbs.work)
        gate = Gate(cred, Door(cred, {"fronthaul": fronthaul}, link.emit), link.emit,
                    handshake_timeout_s=sc.limits.handshake_timeout_s)  # fmt: skip
        await nursery.start(functools.partial(trio.serve_tcp, host=listen[0] or None),
                            gate, listen[1])  # fmt: skip
        print(f"ready: {MACRO} on {listen[0]}:{listen[1]} ({cred.auth})", flush=True)
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        with signalled, trio.move_on_after(duration_s if duration_s > 0 else math.inf):
            await trio.sleep_forever()
        doc = {"overruns": pacer.overruns}
        link.emit({"ev": "outcome", "t": trio.current_time(), "doc": doc})
        await link.close()
        nursery.cancel_scope.cancel()
    return doc


def run_macro_cell(
    sc: Scenario, *, listen: tuple[str, int], small: tuple[str, int], cred: Credentials,
    out_dir: Path | None = None, duration_s: float = 0.0, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """The macro cell: verify the small cell's rounds until signalled or ``duration_s``."""
    hetnet_for_lab(sc)
    mine = node_log(out_dir, sc.planner.policy)
    try:
        serve = functools.partial(_serve_macro, listen=listen, small=small, cred=cred,
                                  mine=mine, duration_s=duration_s)  # fmt: skip
        return trio.run(serve, sc, clock=lab_clock(sc, skew_ms))
    finally:
        mine.close()


def _outcomes(problem: HetnetProblem, log: RunLog, t0: float) -> list[TaskOutcome]:
    """Each task as its user reported it, its times from ``t0`` on the small cell's clock."""
    out = []
    for k in range(problem.size):
        doc = log.outcomes.get(user_node(k)) or {}
        seen = log.milestones.get(user_node(k), {})
        done, first = seen.get("done"), seen.get("first_token")
        out.append(TaskOutcome(
            k,
            None if done is None or doc.get("latency_ms") is None else (done - t0) * 1e3,
            None if first is None else (first - t0) * 1e3,
            tuple(doc.get("tokens", ())),
        ))  # fmt: skip
    return out


async def _serve_small(
    sc: Scenario, *, listen: tuple[str, int], macro: tuple[str, int], cred: Credentials,
    log: RunLog, wait_s: float,
) -> dict[str, Any]:  # fmt: skip
    models = hetnet_for_lab(sc)
    problem = models.problem
    plan = get_policy(sc.planner.policy).plan(problem)
    core = small_cell_core(problem, plan, 0, learn=sc.hetnet.learn_alpha)
    pacer = paced(sc)
    sbs = SmallCellNode(core, models.drafter(problem, Streams(sc.sim.seed)), pacer=pacer,
                        sink=log.for_node(SMALL))  # fmt: skip
    tasks = {user_node(k): k for k in range(problem.size)}

    async def uplink(stream: trio.abc.Stream, who: str) -> None:
        if who not in tasks:
            refuse(log, f"{who} is not a task's user of the scenario", who)
            await trio.aclose_forcefully(stream)
            return
        await sbs.serve_user(stream, task=tasks[who])

    channels: dict[str, Channel] = {
        "records": functools.partial(serve_records, file=log), "uplink": uplink,
    }  # fmt: skip
    async with trio.open_nursery() as nursery:
        fronthaul = await dial(*macro, cred, server=MACRO)
        await join(fronthaul, cred, channel="fronthaul", epoch=0)
        gate = Gate(cred, Door(cred, channels, log), log,
                    handshake_timeout_s=sc.limits.handshake_timeout_s)  # fmt: skip
        await nursery.start(functools.partial(trio.serve_tcp, host=listen[0] or None),
                            gate, listen[1])  # fmt: skip
        print(f"ready: {SMALL} on {listen[0]}:{listen[1]} ({cred.auth})", flush=True)
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        with signalled:
            with trio.move_on_after(wait_s):  # every task's user there, or the wait is over
                while len(sbs.users) < problem.size:
                    await trio.sleep(0.05)
            t0 = trio.current_time()
            log({"ev": "start", "t": t0, "node": SMALL, "attached": sorted(sbs.users)})
            core.start(t0)
            await sbs.run(fronthaul)
        t_end = trio.current_time()
        await trio.sleep(FAREWELL_S)  # the users' last records and accounts
        nursery.cancel_scope.cancel()
    outcomes = _outcomes(problem, log, t0)
    result = hetnet_result(
        problem, plan=plan, ev=evaluate(predicting(problem, models), plan), outcomes=outcomes,
        stats=core.stats, t0=t0, t_end=t_end - t0, user_faults=sbs.faults,
    ) | models.check(outcomes) | {"overruns": {SMALL: pacer.overruns}}  # fmt: skip
    missing = [user_node(o.task) for o in outcomes if o.latency_ms is None]
    result["valid"] = not missing
    result["invalid_reason"] = f"tasks not done: {', '.join(missing)}" if missing else None
    return {
        "system": "hetnet",
        "auth": cred.auth,
        "listen": f"{listen[0]}:{listen[1]}",
        "policy": sc.planner.policy,
        "refused": log.refused,
        "clock_offset_ms": dict(sorted(log.clocks.items())),
        "untallied_records": log.untallied,
        "results": {sc.planner.policy: result},
    }


def run_small_cell(
    sc: Scenario, *, listen: tuple[str, int], macro: tuple[str, int], cred: Credentials,
    out_dir: Path | None, wait_s: float = 60.0, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """The small cell: plan, wait for the tasks' users, run every batch through the macro
    cell at ``macro``; the summary (``out_dir/summary.json`` as well)."""
    hetnet_for_lab(sc)

    def serve(log: RunLog) -> dict[str, Any]:
        small = functools.partial(_serve_small, listen=listen, macro=macro, cred=cred, log=log,
                                  wait_s=wait_s)  # fmt: skip
        return trio.run(small, sc, clock=lab_clock(sc, skew_ms))

    return collecting(sc, out_dir, serve)


async def _serve_task_user(
    sc: Scenario, k: int, *, small: tuple[str, int], cred: Credentials, mine: RunLog
) -> dict[str, Any]:
    models = hetnet_for_lab(sc)
    problem = models.problem
    async with trio.open_nursery() as nursery:
        link = await open_records_link(
            nursery, small, cred, server=SMALL, what="small cell",
            sink=mine.for_node(cred.node), wait_s=sc.limits.reconnect_give_up_s,
        )  # fmt: skip
        stream = await dial(*small, cred, server=SMALL)
        await join(stream, cred, channel="uplink", epoch=link.queue.epoch)
        print(f"ready: {cred.node} to {small[0]}:{small[1]} ({cred.auth})", flush=True)
        user = TaskUser(
            k, tuple(models.prompts[k]), problem.tasks[k].output_len,
            width=token_width(problem.bits_per_token), sink=link.emit, t0=trio.current_time(),
        )  # fmt: skip
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        with signalled:
            await user.run(stream)
        doc = asdict(user.outcome())
        link.emit({"ev": "outcome", "t": trio.current_time(), "doc": doc})
        await link.close()
        nursery.cancel_scope.cancel()
    return doc


def run_task_user(
    sc: Scenario, *, index: int, small: tuple[str, int], cred: Credentials,
    out_dir: Path | None = None, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Task ``index``'s user: attach, upload its prompt when granted, take its tokens."""
    problem = hetnet_for_lab(sc).problem
    if not 0 <= index < problem.size:
        raise ConfigError(f"--id must be in [0, {problem.size - 1}] (users.count), got {index}")
    mine = node_log(out_dir, sc.planner.policy)
    try:
        serve = functools.partial(_serve_task_user, small=small, cred=cred, mine=mine)
        return trio.run(serve, sc, index, clock=lab_clock(sc, skew_ms))
    finally:
        mine.close()
