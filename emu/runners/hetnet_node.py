"""A heterogeneous-edge node as its own process, over real sockets:
``python -m emu.runners.hetnet_node RUN/scenario.toml mbs --port P`` (the macro cell),
``... sbs --port P --macro HOST:PORT`` (the small cell) or ``... user K --sbs HOST:PORT``.

Layer: emu (a process; sockets, files). The emulation (``emu.runners.emulate_hetnet``) starts one
per Mininet host. The node code is the simulation's (``nodes.hetnet``); only the clock (the
machine's monotonic clock over the time scale, ``emu.runners.node.SharedClock``), the streams
(TCP) and the pacing (``emu.timing``) differ. The run directory is the scenario file's: the
small cell reads its plan from ``plan.json``, a user its prompt from ``tasks.json``; every
node waits for the runner's ``start_at`` (a time on the shared clock) and appends its records
to ``events-<node>.jsonl`` as they happen; on its way out it writes ``node-<node>.json``
(a user: what it received; the small cell: each batch's costs).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

import trio

from emu.errors import ConfigError
from emu.models.hetnet import hetnet_models
from emu.planner.hetnet.evaluate import HetnetPlan
from emu.results.metrics import Recorder
from emu.runners.node import (
    SharedClock,
    address,
    connect,
    paced,
    start_at,
    until_signalled,
)
from emu.runners.sim_hetnet import small_cell_core
from emu.scenario import Scenario, load_scenario
from emu.scenario.streams import Streams
from nodes.core.hetnet import MacroCellCore
from nodes.hetnet import MacroCellNode, SmallCellNode, TaskUser
from nodes.protocol.hetnet import token_width

__all__ = ["main", "read_plan", "write_plan"]


def write_plan(run_dir: Path, plan: HetnetPlan) -> None:
    (run_dir / "plan.json").write_text(json.dumps(dataclasses.asdict(plan)))


def read_plan(run_dir: Path) -> HetnetPlan:
    doc = json.loads((run_dir / "plan.json").read_text())
    return HetnetPlan(
        batches=tuple(tuple(b) for b in doc["batches"]),
        spec_len=tuple(doc["spec_len"]),
        bandwidth=doc["bandwidth"],
        opens_ms=tuple(doc["opens_ms"]),
    )


async def _macro(sc: Scenario, port: int, rec: Recorder) -> dict[str, Any]:
    models = hetnet_models(sc, sc.hetnet_problem())
    problem = models.problem
    pacer = paced(sc)
    mbs = MacroCellNode(
        MacroCellCore(discipline=problem.discipline),
        models.verifier(problem, Streams(sc.sim.seed)),
        pacer=pacer,
        sink=rec.for_node("mbs"),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        nursery.start_soon(mbs.work)
        await nursery.start(trio.serve_tcp, mbs.serve_stream, port)
        print("ready", flush=True)
    return {"overruns": pacer.overruns}


async def _small(
    sc: Scenario, port: int, macro: tuple[str, int], run_dir: Path, rec: Recorder, *, cell: int
) -> dict[str, Any]:
    models = hetnet_models(sc, sc.hetnet_problem())
    problem = models.problem
    plan = read_plan(run_dir)
    core = small_cell_core(problem, plan, cell, learn=sc.hetnet.learn_alpha)
    pacer = paced(sc)
    name = "sbs" + problem.cell_suffix(cell)
    sbs = SmallCellNode(
        core, models.drafter(problem, Streams(sc.sim.seed)), pacer=pacer, sink=rec.for_node(name)
    )
    fronthaul = await connect(*macro)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        await nursery.start(trio.serve_tcp, sbs.serve_user, port)
        print("ready", flush=True)
        t0 = await start_at(run_dir)
        core.start(t0)
        await sbs.run(fronthaul)
        await trio.sleep(0.5)  # the last tokens on their way to their users
        nursery.cancel_scope.cancel()
    return {
        "t0": t0,
        "stats": [dataclasses.asdict(s) for s in core.stats],
        "faults": sbs.faults,
        "overruns": pacer.overruns,
    }


async def _user(
    sc: Scenario, k: int, sbs: tuple[str, int], run_dir: Path, rec: Recorder
) -> dict[str, Any]:
    task = json.loads((run_dir / "tasks.json").read_text())[k]
    stream = await connect(*sbs)
    print("ready", flush=True)
    arrives = await start_at(run_dir) + sc.hetnet_problem().tasks[k].arrival_ms / 1e3
    await trio.sleep_until(arrives)
    user = TaskUser(  # its latency from its arrival
        k,
        tuple(task["prompt"]),
        task["max_new_tokens"],
        width=token_width(sc.hetnet.bits_per_token),
        sink=rec,
        t0=arrives,
    )
    with trio.move_on_after(sc.sim.duration_s + 3600):
        await user.run(stream)
    return dataclasses.asdict(user.outcome())


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m emu.runners.hetnet_node")
    ap.add_argument("scenario", type=Path, help="the runner's resolved scenario (TOML)")
    roles = ap.add_subparsers(dest="role", required=True)
    mbs = roles.add_parser("mbs", help="the macro cell: verify the small cell's rounds")
    mbs.add_argument("--port", type=int, required=True)
    sbs = roles.add_parser("sbs", help="the small cell: serve the users, draft for batches")
    sbs.add_argument("--port", type=int, required=True)
    sbs.add_argument("--macro", type=address, required=True, metavar="HOST:PORT")
    sbs.add_argument("--cell", type=int, default=0, help="which small cell (0..)")
    user = roles.add_parser("user", help="task K's user")
    user.add_argument("index", type=int)
    user.add_argument("--sbs", type=address, required=True, metavar="HOST:PORT")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        sc = load_scenario(args.scenario)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.scenario.parent
    name = f"u{args.index}" if args.role == "user" else args.role
    if args.role == "sbs":
        name += sc.hetnet_problem().cell_suffix(args.cell)
    rec = Recorder(run_dir / f"events-{name}.jsonl")
    rec.policy = sc.planner.policy
    clock = SharedClock(sc.emu.time_scale or 1.0)
    try:
        if args.role == "mbs":
            out = trio.run(_macro, sc, args.port, rec, clock=clock)
        elif args.role == "sbs":
            small = functools.partial(_small, cell=args.cell)
            out = trio.run(small, sc, args.port, args.macro, run_dir, rec, clock=clock)
        else:
            out = trio.run(_user, sc, args.index, args.sbs, run_dir, rec, clock=clock)
    finally:
        rec.close()
    (run_dir / f"node-{name}.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
