"""``draftnet sim``: every node in one process, on trio's virtual clock.

Layer: emu (orchestration). There is no separate simulator: the user and edge nodes are the
emulation's nodes; only the links (in-memory, delayed per message) and the clock
(``trio.testing.MockClock`` with autojump: time jumps whenever every task waits) differ.
Backends are synthetic (see ``nodes.backends``) or real models with profiled time (see
``emu.models.build``); each policy runs on the same seed and, with real models, the same prompts.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import trio
import trio.testing

from channel_models.cell import RadioTrace, generate
from channel_models.link import LinkState
from emu.deploy.deployment import Deployment, assemble
from emu.deploy.runtime import (
    edge_settings,
    memo_planner,
    router_node,
    synthetic_verifier,
    with_model_priors,
    with_radio,
)
from emu.errors import ConfigError, DraftnetError
from emu.files import write_atomic
from emu.models.timing import synthetic_prompts
from emu.planner import Plan
from emu.planner.model import Problem, User
from emu.results.metrics import Recorder
from emu.results.types import SimResult, SimSummary
from emu.runners.simlink import link_pair, traced
from emu.scenario import Scenario, scenario_toml
from emu.scenario.streams import Streams
from nodes.backends import DraftBackend, SyntheticDrafter, VerifyBackend
from nodes.edge import EdgeNode
from nodes.pacing import Pacer
from nodes.protocol import Redirect
from nodes.router import via_router
from nodes.user import Dial, UserNode

if TYPE_CHECKING:
    from emu.models.build import RealModels
    from emu.models.embedded import ModelSetup

__all__ = ["simulate"]

Progress = Callable[[str, float], None]


class _Backends(Protocol):
    """Where a policy's run gets its models: synthetic, or real ones (``emu.models.embedded``)."""

    def verifier(self, problem: Problem, streams: Streams) -> VerifyBackend: ...
    def drafter(self, i: int, user: User, rng: np.random.Generator) -> DraftBackend: ...
    def prompts(self, i: int, user: User, rng: np.random.Generator) -> Iterator[Sequence[int]]: ...
    def results(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Synthetic:
    """Bernoulli acceptance and cost-model time (see ``nodes.backends``)."""

    warm_start: bool

    def verifier(self, problem: Problem, streams: Streams) -> VerifyBackend:
        return synthetic_verifier(problem, streams, warm_start=self.warm_start)

    def drafter(self, i: int, user: User, rng: np.random.Generator) -> DraftBackend:
        return SyntheticDrafter.for_user(user, rng)

    def prompts(self, i: int, user: User, rng: np.random.Generator) -> Iterator[Sequence[int]]:
        return synthetic_prompts(rng, user.prefix_len)

    def results(self) -> dict[str, Any]:
        return {"lossless": None}


async def _run_policy(
    dep: Deployment,
    planner: Callable[[Problem, Plan | None], Plan],
    rec: Recorder,
    tick: Callable[[float], None] | None,
    *,
    backends: _Backends,
    session_tokens: int,
    radio: RadioTrace | None = None,
) -> tuple[float, int, int]:
    """Run one policy's deployment; when it ended, and its verifiers' cycles and protocol
    errors."""
    sc, problem = dep.scenario, dep.problem
    streams = Streams(sc.sim.seed)
    # One backend keyed by user for every verifier on [edge]'s compute (a real target model is
    # loaded once), and one on its own compute for each verifier that has one (synthetic); a
    # user's draws are its own stream's (``Streams.acceptance``), whichever verifier serves it.
    shared = backends.verifier(problem, streams)
    servers: dict[str, Callable[[trio.abc.Stream], Awaitable[None]]] = {}
    edges: list[EdgeNode] = []
    for v, uids in dep.groups.items():
        edge = EdgeNode(
            edge=dep.edge(v),
            verifier=backends.verifier(dep.on_compute_of(v), streams) if v in dep.edges else shared,
            planner=planner,
            priors=dep.priors(v),
            settings=edge_settings(sc, len(uids)),
            sink=rec.for_node(v),
            pacer=Pacer("virtual"),
            scheduler=dep.scheduler(),
            lengths=dep.lengths(),
        )
        edges.append(edge)
        servers[v] = edge.serve_stream
    if dep.router is not None:
        in_memory = {v: (v, 0) for v in dep.verifiers}  # a node's name is its address
        router = router_node(dep, in_memory, rec.for_node(dep.router))
        servers[dep.router] = router.serve_stream
    net = sc.network
    trace_up, trace_down = net.trace("trace_up"), net.trace("trace_down")
    duration = sc.sim.duration_s
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for edge in edges:
            nursery.start_soon(edge.run)
        for i, u in enumerate(problem.users):
            if radio is None:
                noise = sc.link_noise(i)
                steady = LinkState(
                    rate_bps=net.rate_bps,
                    delay_ms=u.comm_ms / 2,
                    jitter_ms=noise.jitter_ms,
                    loss=noise.loss,
                )
                up, down = traced(trace_up, steady), traced(trace_down, steady)
            else:
                up, down = radio.up.timeline(i), radio.down.timeline(i)
            node = UserNode(
                i,
                backends.drafter(i, u, streams.drafter(i)),
                backends.prompts(i, u, streams.prompts(i)),
                sink=rec,
                max_new_tokens=session_tokens,
                silence_s=sc.limits.idle_timeout_s,
            )
            to = _dialler(
                nursery, servers, up=up, down=down, rng=streams.link(i), rto_ms=net.rto_ms
            )
            if dep.router is not None:
                dial = via_router(i, to(dep.router), functools.partial(_dial_named, to))
            else:
                dial = to(dep.entry)
            nursery.start_soon(
                functools.partial(
                    _serve_user,
                    node,
                    dial,
                    give_up_s=sc.limits.reconnect_give_up_s,
                    rng=streams.redial(i),
                )
            )
        if tick is not None:
            for k in itertools.count(1):
                step = min(1.0, duration - (k - 1))
                if step <= 0:
                    break
                await trio.sleep(step)
                tick(trio.current_time() - t0)
        else:
            await trio.sleep(duration)
        t_end = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    cycles = sum(e.stats.cycles for e in edges)
    return t_end, cycles, sum(e.stats.protocol_errors for e in edges)


async def _serve_user(
    node: UserNode, dial: Dial, *, give_up_s: float, rng: np.random.Generator
) -> None:
    """A user until it stops: one that gives up (no link for ``give_up_s``, or refused for
    good) is recorded and stops alone, as its process would; the others go on."""
    try:
        await node.serve(dial, give_up_s=give_up_s, rng=rng)
    except DraftnetError as exc:
        node.sink(
            {"ev": "gave_up", "t": trio.current_time(), "user": node.user_id, "why": str(exc)}
        )


async def _dial_named(to: Callable[[str], Dial], redirect: Redirect) -> trio.abc.Stream:
    return await to(redirect.node)()


def _dialler(
    nursery: trio.Nursery,
    servers: Mapping[str, Callable[[trio.abc.Stream], Awaitable[None]]],
    *,
    up: Callable[[float], LinkState],
    down: Callable[[float], LinkState],
    rng: np.random.Generator,
    rto_ms: float,
) -> Callable[[str], Dial]:
    """A user's way to each server node: each call of ``to(name)()`` a new link over the
    user's channel, the node serving its end (a user that lost its link redials through
    this, as over TCP in emulation)."""

    def to(name: str) -> Dial:
        async def dial() -> trio.abc.Stream:
            user_end, server_end = link_pair(up, down, rng, rto_ms=rto_ms)
            nursery.start_soon(servers[name], server_end)
            return user_end

        return dial

    return to


def simulate(
    sc: Scenario,
    policies: list[str],
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run each policy for ``sc.sim.duration_s`` virtual seconds; the ``sim --json`` object.
    A system with a simulation of its own (the heterogeneous edge's offline workload) runs
    there."""
    if sc.faults:
        raise ConfigError(
            "faults are injected by draftnet run only: the simulation does not model them, got "
            f"{len(sc.faults.outages)} outages and {len(sc.faults.kills)} kills in [faults]"
        )
    own = _OWN_SIMULATIONS.get(sc.deployment.system)
    if own is not None:
        return own(sc, policies, out_dir=out_dir, progress=progress)
    dep = assemble(sc)
    for p in policies:
        dep.system.check_policy(p, where="--policy")
    problem = dep.problem
    t_wall = time.perf_counter()
    backends: _Backends = _Synthetic(warm_start=sc.sim.warm_start)
    session_tokens = sc.sim.max_new_tokens
    real: RealModels | None = None
    if sc.models.kind != "synthetic":
        if dep.edges:
            raise ConfigError(
                f"models.kind = {sc.models.kind} in the simulation loads one target model for "
                "every verifier, and deployment.nodes give a verifier compute of its own: use "
                "models.kind = synthetic, or draftnet run (a process per verifier)"
            )
        real = _real_models(sc, problem.size)
        backends, session_tokens = real, real.session_tokens
        problem = with_model_priors(problem, real.setup.acceptance, real.setup.prior_prefix())
    radio = None
    if sc.network.model == "radio":
        # One radio trace for every policy: each meets the same links.
        radio = generate(sc.radio, problem.size, sc.sim.duration_s, Streams(sc.sim.seed).radio())
        problem = with_radio(problem, sc, radio.up, radio.down)
    dep = dep.with_problem(problem)
    rec = Recorder(out_dir / "events.jsonl" if out_dir else None)
    if out_dir is not None:
        (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    results: dict[str, SimResult] = {}
    models = _models_note(sc, None if real is None else real.setup)

    def summary() -> SimSummary:
        return SimSummary(
            scenario=sc.name,
            models=models,
            users=problem.size,
            deployment=dep.describe(),
            duration_s=sc.sim.duration_s,
            seed=sc.sim.seed,
            results=dict(results),
            wall_s=time.perf_counter() - t_wall,
            handovers=None if radio is None else tuple(int(h) for h in radio.handovers),
        )

    try:
        for policy in policies:
            rec.policy = policy
            planner = memo_planner(policy)
            predicted = dep.predicted_tok_s(planner)
            t_policy = time.perf_counter()
            t_end, cycles, protocol_errors = trio.run(
                functools.partial(
                    _run_policy,
                    dep,
                    planner,
                    rec,
                    None if progress is None else functools.partial(progress, policy),
                    backends=backends,
                    session_tokens=session_tokens,
                    radio=radio,
                ),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            measured = rec.summary(
                policy, t_end=t_end, users=problem.size, verifiers=len(dep.verifiers)
            )
            results[policy] = SimResult(
                measured=measured,
                predicted_tok_s=predicted,
                cycles=cycles,
                protocol_errors=protocol_errors,
                **backends.results(),
                wall_s=time.perf_counter() - t_policy,
            )
            if out_dir is not None:  # as each policy ends: nothing measured is lost
                doc = json.dumps(summary().to_json(), indent=2, default=float)
                write_atomic(out_dir / "summary.json", doc)
    finally:
        rec.close()
    return summary().to_json()


def _simulate_hetnet(
    sc: Scenario, policies: list[str], *, out_dir: Path | None, progress: Progress | None
) -> dict[str, Any]:
    from emu.runners.sim_hetnet import simulate_hetnet

    return simulate_hetnet(sc, policies, out_dir=out_dir, progress=progress)


def _simulate_dsd(
    sc: Scenario, policies: list[str], *, out_dir: Path | None, progress: Progress | None
) -> dict[str, Any]:
    from emu.runners.sim_dsd import simulate_dsd

    return simulate_dsd(sc, policies, out_dir=out_dir, progress=progress)


_OWN_SIMULATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "hetnet": _simulate_hetnet,
    "dsd": _simulate_dsd,
}


def _real_models(sc: Scenario, users: int) -> RealModels:
    """Check the models (one-line errors before anything starts), then load them."""
    from emu.deploy.runtime import model_setup
    from emu.models.build import RealModels

    m = sc.models
    setup = model_setup(sc)
    return RealModels(
        setup,
        users=users,
        temperature=m.temperature,
        top_k=m.top_k,
        draft_threads=m.draft_threads,
        verify_threads=m.verify_threads,
        dtype=m.dtype,
        warm_start=sc.sim.warm_start,
        seed=sc.sim.seed,
    )


def _models_note(sc: Scenario, setup: ModelSetup | None) -> dict[str, Any]:
    if setup is None:
        return {"kind": "synthetic"}
    return {
        "kind": sc.models.kind,
        "draft": str(setup.draft),
        "target": str(setup.target),
        "device": setup.device,
        "temperature": sc.models.temperature,
        "session_tokens": setup.session_tokens,
    }
