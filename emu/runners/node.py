"""A node as its own process, over real sockets:
``python -m emu.runners.node SCENARIO.toml edge [--name NAME] --port P`` (a verifier),
``python -m emu.runners.node SCENARIO.toml router [--name NAME] --port P``, or
``python -m emu.runners.node SCENARIO.toml user I (--edge | --router) HOST:PORT``.

Layer: emu (a process; sockets, files). The emulation starts one of these per Mininet host, with
the project's interpreter: the edge listens on TCP, each user connects to it. The node code is
the simulation's (``nodes.edge``, ``nodes.user``); only the clock (real), the streams (TCP) and
the pacing differ. ``timing = "profile"`` pads each step to the time the scenario's cost model
gives it (an overrun is counted); ``"real"`` lets compute take what it takes.

The scenario is the runner's resolved one, read by the same loader as every scenario: the edge
plans with its ``planner.policy``, and ``emu.timing`` and ``emu.time_scale`` (the runner's
choice, never 0 here) set the pacing; the addresses are the only other settings. A verifier
plans for the users its deployment gives it (``emu.deploy.deployment``); a router sends each
user to its verifier at the address in ``deployment.nodes`` and ``deployment.port``. The run
directory is the scenario file's. Each node appends its records to ``events-<node>.jsonl``
in the run directory as they happen (times on the machine's monotonic clock, shared by every
namespace, divided by the time scale), and its counters to ``node-<node>.json`` when it stops
(on SIGTERM, SIGINT or SIGHUP). A user whose link breaks redials the edge and resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import resource
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from emu.deploy.deployment import assemble
from emu.deploy.runtime import (
    edge_settings,
    memo_planner,
    model_setup,
    node_problem,
    router_node,
    synthetic_verifier,
)
from emu.errors import ConfigError, PeerGone
from emu.models.build import RecordingDrafter
from emu.models.timing import (
    draft_time,
    synthetic_prompts,
    user_prompts,
    verify_threads,
    verify_time,
)
from emu.planner.model import Problem
from emu.results.metrics import Recorder
from emu.runners.journal import Journal, read_journal
from emu.scenario import Scenario, load_scenario
from emu.scenario.streams import Streams
from nodes.backends import DraftBackend, SyntheticDrafter, VerifyBackend
from nodes.core.ledger import SessionLedger
from nodes.edge import EdgeNode
from nodes.pacing import REAL_CLOCK_LEAD_S, Pacer
from nodes.protocol import Redirect
from nodes.router import via_router
from nodes.stream import Sink
from nodes.user import EdgeRefused, UserNode

__all__ = [
    "START_FILE",
    "SharedClock",
    "address",
    "connect",
    "drafter_for",
    "edge_node",
    "main",
    "paced",
    "start_at",
    "until_signalled",
    "verifier_for",
]

CONNECT_TRIES = 100
START_FILE = "start_at"  # the hetnet and dsd runners write their nodes' common start here


async def start_at(run_dir: Path) -> float:
    """The runner's start, once it has written it (a time on the shared clock)."""
    path = run_dir / START_FILE
    while not path.exists():
        await trio.sleep(0.002)
    return float(path.read_text())


async def connect(host: str, port: int, *, tries: int = 2 * CONNECT_TRIES) -> trio.SocketStream:
    """A TCP stream to a node that may not listen yet (tried every 50 ms; PeerGone after
    ``tries``)."""
    for _ in range(tries):
        try:
            return await trio.open_tcp_stream(host, port)
        except OSError:
            await trio.sleep(0.05)
    raise PeerGone(f"no answer from {host}:{port}")


def paced(sc: Scenario) -> Pacer:
    """The pacer of a node of the hetnet and dsd runners: the scenario's timing and scale."""
    return Pacer(sc.emu.timing, sc.emu.time_scale or 1.0, lead_s=REAL_CLOCK_LEAD_S)


def verifier_for(sc: Scenario, problem: Problem, profiled: bool) -> VerifyBackend:
    if sc.models.kind == "synthetic":
        return synthetic_verifier(problem, Streams(sc.sim.seed), warm_start=sc.sim.warm_start)
    from nodes.hf_verifier import HFVerifier

    setup = model_setup(sc)
    return HFVerifier(
        setup.target,
        device=setup.device,
        threads=verify_threads(sc, users_on_host=problem.size),
        dtype=sc.models.dtype or None,
        temperature=sc.models.temperature,
        seed=sc.sim.seed,
        prefill_free=sc.sim.warm_start,
        latency=verify_time(problem.edge) if profiled else None,
    )


def drafter_for(
    sc: Scenario, problem: Problem, i: int, profiled: bool
) -> tuple[DraftBackend, Iterator[Sequence[int]], int]:
    """The user's drafter, its prompts, and the tokens a session decodes."""
    user = problem.users[i]
    if sc.models.kind == "synthetic":
        streams = Streams(sc.sim.seed)
        prompts = synthetic_prompts(streams.prompts(i), user.prefix_len)
        synthetic = SyntheticDrafter.for_user(user, streams.drafter(i))
        return synthetic, prompts, sc.sim.max_new_tokens
    from nodes.llama_drafter import LlamaDrafter

    setup = model_setup(sc)
    drafter = LlamaDrafter(
        setup.draft,
        n_ctx=setup.n_ctx,
        threads=sc.models.draft_threads,
        temperature=sc.models.temperature,
        top_k=sc.models.top_k,
        seed=sc.sim.seed + i,
        latency=draft_time(user) if profiled else None,
    )
    return drafter, user_prompts(setup.prompts, i, problem.size), setup.session_tokens


class SharedClock(trio.abc.Clock):
    """trio's time as the machine's monotonic clock, which every namespace shares: records
    from different node processes line up (trio's own clock starts at a random offset).

    With a time scale ``s`` it reads ``monotonic() / s``: modelled seconds, each ``s`` wall
    seconds long (``nodes.pacing``); every process divides the same clock by the same ``s``.
    ``skew_s`` (wall seconds) is added to the reading: a lab node's clock, as if its machine's
    were that far off (the lab tests inject it; the nodes measure it, ``nodes.core.clock``)."""

    def __init__(self, scale: float = 1.0, skew_s: float = 0.0) -> None:
        self.scale = scale
        self.skew_s = skew_s

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return (time.monotonic() + self.skew_s) / self.scale

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return max(0.0, deadline * self.scale - self.skew_s - time.monotonic())


async def until_signalled(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            cancel.cancel()
            return


def edge_node(
    sc: Scenario,
    name: str,
    sink: Sink,
    pacer: Pacer,
    *,
    tokens: Mapping[str, str] | None = None,
    reports: Sink | None = None,
    ledger: SessionLedger | None = None,
    journal: Sink | None = None,
) -> EdgeNode:
    """Verifier ``name`` of the scenario's deployment, on a real clock: its planner solves in
    a thread. Lab mode's: ``tokens``, each user's pre-shared token; ``reports``, where the
    users' Reports go; ``ledger`` and ``journal``, the sessions it holds and where it writes
    each verdict's entry before sending it."""
    # The planner's thread and the event loop share the GIL: hand it over every 0.5 ms, not
    # Python's default 5, so a message that arrives during a solve waits no longer than that.
    sys.setswitchinterval(0.0005)
    dep = assemble(sc).with_problem(node_problem(sc))
    settings = edge_settings(sc, len(dep.groups[name]))
    if tokens:
        settings = dataclasses.replace(settings, tokens=dict(tokens))
    _open_files_for(settings.limits.connections(settings.expected_users))
    return EdgeNode(
        edge=dep.edge(name),
        verifier=verifier_for(sc, dep.on_compute_of(name), sc.emu.timing == "profile"),
        planner=memo_planner(sc.planner.policy),
        priors=dep.priors(name),
        settings=settings,
        sink=sink,
        pacer=pacer,
        solve_in_thread=True,  # a real clock: the connections go on while it plans
        scheduler=dep.scheduler(),
        lengths=dep.lengths(),
        reports=reports,
        ledger=ledger,
        journal=journal,
    )


async def _edge(
    port: int, sc: Scenario, rec: Recorder, pacer: Pacer, *, name: str, run_dir: Path
) -> dict[str, Any]:
    # Each verdict journalled before it is sent: an edge started again ([faults]) goes on.
    path = run_dir / f"sessions-{name}.jsonl"
    ledger = read_journal(path)
    journal = Journal(path)
    try:
        edge = edge_node(sc, name, rec.for_node(name), pacer, ledger=ledger, journal=journal)
        return await _serve_edge(edge, port)
    finally:
        journal.close()


async def _serve_edge(edge: EdgeNode, port: int) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        nursery.start_soon(edge.run)
        await nursery.start(trio.serve_tcp, edge.serve_stream, port)
        print("ready", flush=True)
    s = edge.stats
    return {
        "batches": s.batches,
        "cycles": s.cycles,
        "protocol_errors": s.protocol_errors,
        "connection_errors": s.connection_errors,
        "refused": s.refused,
    }


async def _router(port: int, sc: Scenario, rec: Recorder, *, name: str) -> dict[str, Any]:
    dep = assemble(sc)
    where = {v: (dep.node(v).address, sc.deployment.port) for v in dep.verifiers}
    router = router_node(dep, where, rec.for_node(name))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        await nursery.start(trio.serve_tcp, router.serve_stream, port)
        print("ready", flush=True)
    return {"routed": router.routed, "refused": router.refused}


def _open_files_for(connections: int) -> None:
    """Raise this process's open-file limit to what ``connections`` need (plus the models'
    and records' files), as far as the hard limit allows: running out of descriptors would
    stop new users without a word."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


async def _user(
    to: tuple[str, tuple[str, int]],
    sc: Scenario,
    i: int,
    rec: Recorder,
    pacer: Pacer,
    *,
    run_dir: Path,
) -> dict[str, Any]:
    """User ``i``, dialling ``to``: ("edge", its address) or ("router", its address)."""
    kind, first = to
    problem = node_problem(sc)
    drafter, prompts, session_tokens = drafter_for(sc, problem, i, sc.emu.timing == "profile")
    with contextlib.ExitStack() as stack:
        # Every committed token, for the lossless check and for sessions across restarts;
        # appended: a user started again by [faults] goes on with the same sessions.
        log = stack.enter_context((run_dir / f"tokens-u{i}.jsonl").open("a"))
        drafter = RecordingDrafter(drafter, [], log)
        node = UserNode(
            i,
            drafter,
            prompts,
            sink=rec,
            pacer=pacer,
            max_new_tokens=session_tokens,
            silence_s=sc.limits.idle_timeout_s,
        )

        async def dial_edge() -> trio.abc.Stream:
            return await trio.open_tcp_stream(*first)

        async def dial_verifier(r: Redirect) -> trio.abc.Stream:
            return await trio.open_tcp_stream(r.host, r.port)

        dial = via_router(i, dial_edge, dial_verifier) if kind == "router" else dial_edge
        stream: trio.abc.Stream | None = None
        for _ in range(CONNECT_TRIES):
            try:
                stream = await dial()
                break
            except (OSError, PeerGone) as exc:
                if isinstance(exc, EdgeRefused):
                    raise
                await trio.sleep(0.1)
        if stream is None:
            raise ConnectionError(f"user {i}: the {kind} at {first[0]}:{first[1]} never answered")
        print("ready", flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_signalled, nursery.cancel_scope)
            await node.serve(
                dial,
                first=stream,
                give_up_s=sc.limits.reconnect_give_up_s,
                rng=Streams(sc.sim.seed).redial(i),
            )
            nursery.cancel_scope.cancel()
    st = node.stats
    return {
        "rounds": st.rounds,
        "committed_tokens": st.committed_tokens,
        "sessions": st.sessions,
        "reconnects": st.reconnects,
    }


class _WarningsToRecords(logging.Handler):
    """trio's own warnings as ``node_warning`` records, beside the node's log: an accept that
    fails for want of file descriptors ("accept returned EMFILE") must not go unseen."""

    def __init__(self, rec: Recorder, scale: float) -> None:
        super().__init__(logging.WARNING)
        self.rec, self.scale = rec, scale

    def emit(self, record: logging.LogRecord) -> None:
        self.rec(
            {
                "ev": "node_warning",
                "t": time.monotonic() / self.scale,  # the SharedClock's reading
                "logger": record.name,
                "message": record.getMessage()[:1000],
            }
        )
        sys.stderr.write(self.format(record) + "\n")


def address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, got {text!r}")
    return host, int(port)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m emu.runners.node")
    ap.add_argument("scenario", type=Path, help="the runner's resolved scenario (TOML)")
    roles = ap.add_subparsers(dest="role", required=True)
    edge = roles.add_parser("edge", help="a verifier: listen for its users")
    edge.add_argument("--name", default="", help="its node name (default: the first verifier)")
    edge.add_argument("--port", type=int, required=True)
    router = roles.add_parser("router", help="tell each user which verifier to dial")
    router.add_argument("--name", default="", help="its node name (default: the router)")
    router.add_argument("--port", type=int, required=True)
    user = roles.add_parser("user", help="user I: dial its edge, or the router")
    user.add_argument("index", type=int)
    to = user.add_mutually_exclusive_group(required=True)
    to.add_argument("--edge", type=address, metavar="HOST:PORT")
    to.add_argument("--router", type=address, metavar="HOST:PORT")
    return ap.parse_args(argv)


def _node_name(args: argparse.Namespace, sc: Scenario) -> str:
    """The node this process is; ConfigError for a name that is no node of that role."""
    if args.role == "user":
        return f"u{args.index}"
    dep = assemble(sc)
    role = "verifier" if args.role == "edge" else "router"
    names = [n.name for n in dep.servers if n.role == role]
    name = args.name or (names[0] if names else "")
    if name not in names:
        raise ConfigError(
            f"--name must name a {role} of the scenario's deployment "
            f"({', '.join(names) or 'none'}), got {args.name!r}"
        )
    return name


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        sc = load_scenario(args.scenario)
        name = _node_name(args, sc)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.scenario.parent
    rec = Recorder(run_dir / f"events-{name}.jsonl")
    rec.policy = sc.planner.policy
    scale = sc.emu.time_scale or 1.0
    pacer = Pacer(sc.emu.timing, scale, lead_s=REAL_CLOCK_LEAD_S)  # the nodes' clock is real
    logging.getLogger("trio").addHandler(_WarningsToRecords(rec, scale))
    clock = SharedClock(scale)
    try:
        if args.role == "edge":
            edge = functools.partial(_edge, name=name, run_dir=run_dir)
            out = trio.run(edge, args.port, sc, rec, pacer, clock=clock)
        elif args.role == "router":
            router = functools.partial(_router, name=name)
            out = trio.run(router, args.port, sc, rec, clock=clock)
        else:
            user = functools.partial(_user, run_dir=run_dir)
            to = ("router", args.router) if args.router else ("edge", args.edge)
            out = trio.run(user, to, sc, args.index, rec, pacer, clock=clock)
    finally:
        rec.close()
    out["overruns"] = pacer.overruns
    (run_dir / f"node-{name}.json").write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
