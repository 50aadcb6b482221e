"""Lab mode's DSD roles, each its own command on its own machine:

    draftnet router [SCENARIO] --listen HOST:PORT (--lab DIR | --insecure) [--out RUNDIR]
    draftnet verifier [SCENARIO] --id K --listen HOST:PORT --connect ROUTER (--lab | --insecure)
    draftnet user [SCENARIO] --id I --connect ROUTER --verifier v0=HOST:PORT ... (--lab | ...)

Layer: emu (processes, sockets, files). The node code is the emulation's (``nodes.dsd``, built
as ``emu.runners.dsd_node`` builds it); lab mode adds the door (``emu.lab.door``): every
connection opens with a Join the server checks against the node's certificate or token, and a
connection proved to be one node carries only that node's messages (``nodes.dsd.check_sender``).
The router is the run's collector: every verifier and drafter keeps a records channel to it,
measures its clock against the router's and streams its records, stamped on the router's clock,
into the router's run directory (``events-<node>.jsonl``); each sends its own account of the run
(``outcome``) as it leaves. A drafter serves its dealt conversations for ``sim.duration_s`` from
its own start and leaves; verifiers and the router serve until SIGTERM, SIGINT or
``--duration``. When the router stops it writes ``summary.json``: the ``run --json`` fields of
the policy, from the accounts it received (a node that sent none is named in
``invalid_reason``), and ``auth``, ``refused`` and ``clock_offset_ms``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from emu.errors import ConfigError, PeerGone
from emu.lab.door import Channel, Door, join, open_records_link, refuse, serve_records
from emu.lab.roles import FAREWELL_S, RunLog, collecting, lab_clock, node_log
from emu.lab.tls import Credentials, Gate, dial
from emu.planner import get_policy
from emu.planner.dsd.model import DsdProblem
from emu.runners.dsd_node import check_emulable, drafter_backend, verifier_backend
from emu.runners.emulate_dsd import dsd_result
from emu.runners.node import paced, until_signalled
from emu.runners.sim_dsd import deal, dsd_problem_of
from emu.scenario import Scenario
from nodes.dsd import DrafterNode, RouterNode, VerifierNode

__all__ = [
    "drafter_name",
    "dsd_problem_for_lab",
    "run_dsd_drafter",
    "run_router",
    "run_verifier",
    "verifier_name",
]

ROUTER = "router"  # the router's node name (its certificate's)


def verifier_name(problem: DsdProblem, index: int) -> str:
    """Verifier ``index``'s node name (a ConfigError naming --id if there is none)."""
    if not 0 <= index < len(problem.verifiers):
        raise ConfigError(
            f"--id must be in [0, {len(problem.verifiers) - 1}] (the scenario's verifiers), "
            f"got {index}"
        )
    return problem.verifiers[index].name


def drafter_name(problem: DsdProblem, index: int) -> str:
    """Drafter ``index``'s node name (a ConfigError naming --id if there is none)."""
    if not 0 <= index < len(problem.drafters):
        raise ConfigError(
            f"--id must be in [0, {len(problem.drafters) - 1}] (dsd.drafters), got {index}"
        )
    return problem.drafters[index].name


def dsd_problem_for_lab(sc: Scenario) -> DsdProblem:
    """The scenario's DSD deployment, if these roles can run it (a ConfigError if not)."""
    if sc.deployment.system != "dsd":
        raise ConfigError(
            "deployment.system must be dsd for draftnet router and verifier (dipsd's lab roles "
            f"are draftnet edge and user), got {sc.deployment.system!r}"
        )
    problem = dsd_problem_of(sc)
    check_emulable(sc, problem)
    return problem


async def _serve_router(
    sc: Scenario, problem: DsdProblem, listen: tuple[str, int], cred: Credentials,
    *, log: RunLog, duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    node = RouterNode(problem, seed=sc.sim.seed, sink=log.for_node(ROUTER))
    drafters = {d.name: i for i, d in enumerate(problem.drafters)}
    verifiers = {v.name: k for k, v in enumerate(problem.verifiers)}

    async def route(stream: trio.abc.Stream, who: str) -> None:
        if who not in drafters:
            refuse(log, f"{who} is not a drafter of the scenario ({', '.join(drafters)})", who)
            await trio.aclose_forcefully(stream)
            return
        await node.serve(stream, drafter=drafters[who])

    async def queues(stream: trio.abc.Stream, who: str) -> None:
        if who not in verifiers:
            refuse(log, f"{who} is not a verifier of the scenario ({', '.join(verifiers)})", who)
            await trio.aclose_forcefully(stream)
            return
        await node.serve(stream, verifier=verifiers[who])

    channels: dict[str, Channel] = {
        "records": functools.partial(serve_records, file=log), "route": route, "queues": queues,
    }  # fmt: skip
    gate = Gate(cred, Door(cred, channels, log), log,
                handshake_timeout_s=sc.limits.handshake_timeout_s)  # fmt: skip
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        serve = functools.partial(trio.serve_tcp, host=listen[0] or None)
        await nursery.start(serve, gate, listen[1])
        print(f"ready: {ROUTER} on {listen[0]}:{listen[1]} ({cred.auth})", flush=True)
        with signalled, trio.move_on_after(duration_s if duration_s > 0 else math.inf):
            await trio.sleep_forever()
        t_end = trio.current_time()
        await trio.sleep(FAREWELL_S)  # the last records and accounts on their way
        nursery.cancel_scope.cancel()
    docs: dict[str, dict[str, Any] | None] = {
        ROUTER: {"routed": node.routed, "faults": node.faults},
        **{n: log.outcomes.get(n) for n in (*verifiers, *drafters)},
    }
    result = dsd_result(sc, problem, docs, {}, None)
    return {
        "system": "dsd",
        "auth": cred.auth,
        "listen": f"{listen[0]}:{listen[1]}",
        "policy": sc.planner.policy,
        "duration_s": t_end - t0,
        "refused": log.refused,
        "clock_offset_ms": dict(sorted(log.clocks.items())),
        "untallied_records": log.untallied,
        "results": {sc.planner.policy: result},
    }


def run_router(
    sc: Scenario, *, listen: tuple[str, int], cred: Credentials, out_dir: Path | None,
    duration_s: float = 0.0, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Route the scenario's drafters' conversations and collect every node's records until
    signalled or ``duration_s`` pass; the summary (``out_dir/summary.json`` as well)."""
    problem = dsd_problem_for_lab(sc)

    def serve(log: RunLog) -> dict[str, Any]:
        router = functools.partial(_serve_router, log=log, duration_s=duration_s)
        return trio.run(router, sc, problem, listen, cred, clock=lab_clock(sc, skew_ms))

    return collecting(sc, out_dir, serve)


async def _joined(
    at: tuple[str, int], cred: Credentials, server: str, channel: str, epoch: int
) -> trio.abc.Stream:
    stream = await dial(*at, cred, server=server)
    await join(stream, cred, channel=channel, epoch=epoch)
    return stream


async def _serve_verifier(
    sc: Scenario, problem: DsdProblem, *, k: int, listen: tuple[str, int],
    router: tuple[str, int], cred: Credentials, server: str, mine: RunLog, duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    spec = problem.verifiers[k]
    drafters = {d.name: i for i, d in enumerate(problem.drafters)}
    pacer = paced(sc)
    async with trio.open_nursery() as nursery:
        link = await open_records_link(
            nursery, router, cred, server=server, what="router", sink=mine.for_node(cred.node),
            wait_s=sc.limits.reconnect_give_up_s,
        )  # fmt: skip
        node = VerifierNode(
            k, spec, verifier_backend(sc, problem), compat=problem.compat,
            order=problem.batching, pacer=pacer, sink=link.emit,
        )  # fmt: skip

        async def verify(stream: trio.abc.Stream, who: str) -> None:
            if who not in drafters:
                refuse(link.emit, f"{who} is not a drafter of the scenario", who)
                await trio.aclose_forcefully(stream)
                return
            await node.serve_drafter(stream, drafter=drafters[who])

        to_router = await _joined(router, cred, server, "queues", link.queue.epoch)
        nursery.start_soon(node.work)
        nursery.start_soon(node.report_to, to_router)
        gate = Gate(cred, Door(cred, {"verify": verify}, link.emit), link.emit,
                    handshake_timeout_s=sc.limits.handshake_timeout_s)  # fmt: skip
        serve = functools.partial(trio.serve_tcp, host=listen[0] or None)
        await nursery.start(serve, gate, listen[1])
        print(f"ready: {spec.name} on {listen[0]}:{listen[1]} ({cred.auth})", flush=True)
        t0 = trio.current_time()
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        with signalled, trio.move_on_after(duration_s if duration_s > 0 else math.inf):
            await trio.sleep_forever()
        doc = node.outcome(max(1e-9, trio.current_time() - t0))
        link.emit({"ev": "outcome", "t": trio.current_time(), "doc": doc})
        await link.close()
        nursery.cancel_scope.cancel()
    return doc


def run_verifier(
    sc: Scenario, *, index: int, listen: tuple[str, int], router: tuple[str, int],
    cred: Credentials, server: str = ROUTER, out_dir: Path | None = None,
    duration_s: float = 0.0, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Verifier ``index`` of the scenario, serving its drafters until signalled or
    ``duration_s`` pass; its account of the run (sent to the router as well)."""
    problem = dsd_problem_for_lab(sc)
    verifier_name(problem, index)
    mine = node_log(out_dir, sc.planner.policy)
    try:
        serve = functools.partial(
            _serve_verifier, k=index, listen=listen, router=router, cred=cred, server=server,
            mine=mine, duration_s=duration_s,
        )  # fmt: skip
        return trio.run(serve, sc, problem, clock=lab_clock(sc, skew_ms))
    finally:
        mine.close()


async def _serve_drafter(
    sc: Scenario, problem: DsdProblem, *, i: int, router: tuple[str, int],
    verifiers: Mapping[str, tuple[str, int]], cred: Credentials, server: str, mine: RunLog,
) -> dict[str, Any]:  # fmt: skip
    spec = problem.drafters[i]
    make = get_policy(sc.planner.policy).plan(problem)
    arrivals, rng = deal(problem, duration_s=sc.sim.duration_s, seed=sc.sim.seed)[spec.name]
    backend, prompt, answer_cap = drafter_backend(sc, problem, i)
    pacer = paced(sc)
    async with trio.open_nursery() as nursery:
        link = await open_records_link(
            nursery, router, cred, server=server, what="router", sink=mine.for_node(cred.node),
            wait_s=sc.limits.reconnect_give_up_s,
        )  # fmt: skip
        epoch = link.queue.epoch
        to_router = await _joined(router, cred, server, "route", epoch)
        streams = {
            v.verifier: await _joined(verifiers[v.verifier], cred, v.verifier, "verify", epoch)
            for v in problem.reachable(spec.name)
        }
        print(f"ready: {spec.name} to {router[0]}:{router[1]} ({cred.auth})", flush=True)
        t0 = trio.current_time()
        node = DrafterNode(
            i, problem, backend, policy=make(), arrivals=arrivals, rng=rng, prompt=prompt,
            pacer=pacer, sink=link.emit, t0=t0, answer_cap=answer_cap,
        )  # fmt: skip
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        with signalled:  # stopped early: what it has so far
            await node.run(to_router, streams, end_s=t0 + sc.sim.duration_s)
        doc = asdict(node.record) | {"t0": t0, "overruns": pacer.overruns, "faults": node.faults}
        link.emit({"ev": "outcome", "t": trio.current_time(), "doc": doc})
        await link.close()
        nursery.cancel_scope.cancel()
    return doc


def run_dsd_drafter(
    sc: Scenario, *, index: int, router: tuple[str, int],
    verifiers: Mapping[str, tuple[str, int]], cred: Credentials, server: str = ROUTER,
    out_dir: Path | None = None, skew_ms: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Drafter ``index`` of the scenario: its dealt conversations for ``sim.duration_s``,
    through the router at ``router`` and the verifiers at ``verifiers`` (by name); its
    account of the run (sent to the router as well)."""
    problem = dsd_problem_for_lab(sc)
    name = drafter_name(problem, index)
    need = [v.verifier for v in problem.reachable(name)]
    missing = [v for v in need if v not in verifiers]
    if missing:
        raise ConfigError(
            f"--verifier must give the address of every verifier {name} "
            f"reaches ({', '.join(need)}), got none for {', '.join(missing)}"
        )
    mine = node_log(out_dir, sc.planner.policy)
    try:
        serve = functools.partial(
            _serve_drafter, i=index, router=router, verifiers=verifiers, cred=cred,
            server=server, mine=mine,
        )  # fmt: skip
        return trio.run(serve, sc, problem, clock=lab_clock(sc, skew_ms))
    except PeerGone as exc:
        raise PeerGone(f"{name}: {exc}") from exc
    finally:
        mine.close()
