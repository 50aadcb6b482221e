"""What every runner gives the nodes: the policy's planner, the edge's settings, real models'
priors. Shared by the simulation (``emu.runners.sim``) and the emulation's node processes
(``emu.runners.node``).

Layer: emu (orchestration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from emu.planner import Plan, plan_for
from emu.planner.lattice import Lattice, LinkNoise
from emu.planner.model import Problem
from emu.planner.stochastic import with_noise
from emu.scenario import Scenario
from emu.scenario.sections import UserOverride
from emu.scenario.streams import Streams
from nodes.backends import SyntheticVerifier
from nodes.edge import EdgeSettings
from nodes.router import RouterNode
from nodes.stream import Sink

if TYPE_CHECKING:
    from channel_models.cell import LinkSeries
    from emu.deploy.deployment import Deployment
    from emu.models.embedded import ModelSetup

__all__ = [
    "edge_settings",
    "memo_planner",
    "model_setup",
    "node_problem",
    "node_scenario",
    "radio_comm_ms",
    "router_node",
    "synthetic_verifier",
    "with_comm",
    "with_model_priors",
]


def memo_planner(policy: str) -> Callable[[Problem, Plan | None], Plan]:
    """The policy's planner for one run, remembering its plans: the edge's first plan (made
    from the scenario's users) is then the prediction's plan, not a second solve."""
    plans: dict[tuple[Problem, Plan | None], Plan] = {}

    def plan(problem: Problem, previous: Plan | None = None) -> Plan:
        key = (problem, previous)
        if key not in plans:
            plans[key] = plan_for(policy, problem, previous)
        return plans[key]

    return plan


def edge_settings(sc: Scenario, users: int) -> EdgeSettings:
    p = sc.planner
    return EdgeSettings(
        max_draft_len=p.max_draft_len,
        initial_draft_len=p.initial_draft_len,
        fixed_draft_len=p.fixed_draft_len,
        runtime=sc.runtime,
        expected_users=users,
        limits=sc.limits,  # the edge caps its connections at limits.connections(users)
    )


def router_node(dep: Deployment, where: Mapping[str, tuple[str, int]], sink: Sink) -> RouterNode:
    """The deployment's router, sending each user to its verifier at ``where`` (by name)."""
    assert dep.router is not None
    sc = dep.scenario
    return RouterNode(dep.router_core(), where, sink=sink, limits=sc.limits, users=dep.problem.size)


def radio_comm_ms(sc: Scenario, up: LinkSeries, down: LinkSeries) -> tuple[float, ...]:
    """Each user's communication time per round on its radio links, as the planner's prior:
    the mean one-way delays both ways plus sending a draft up and a verdict down at the mean
    rates. One function for every runner, so that they plan alike."""
    r = sc.radio
    return tuple(
        float(
            up.delay_ms[i].mean()
            + down.delay_ms[i].mean()
            + 8e3 * r.payload_up_bytes / up.rate_bps[i].mean()
            + 8e3 * r.payload_down_bytes / down.rate_bps[i].mean()
        )
        for i in range(up.delay_ms.shape[0])
    )


OUTAGE_MS = 2000.0  # the longest link time per round a radio tick stands for


def radio_comm_noise(
    sc: Scenario, up: LinkSeries, down: LinkSeries, comm_ms: Sequence[float]
) -> tuple[Lattice, ...]:
    """Each user's link time per round on its radio links beyond its prior ``comm_ms``
    (``radio_comm_ms``), as the stochastic model's noise: the link time of each tick of the
    series (both ways' delays, and a draft up and a verdict down at that tick's rates), every
    tick equally likely, plus each way's jitter and retransmissions at the series' mean jitter
    and loss. A tick whose rates would take longer than ``OUTAGE_MS`` counts as that long: the
    message of an outage waits for the link's return, not for a rate of nearly nothing."""
    r, rto = sc.radio, sc.network.rto_ms
    out = []
    for i, c in enumerate(comm_ms):
        per_tick = np.minimum(
            up.delay_ms[i]
            + down.delay_ms[i]
            + 8e3 * r.payload_up_bytes / up.rate_bps[i]
            + 8e3 * r.payload_down_bytes / down.rate_bps[i],
            OUTAGE_MS,
        )
        ways = [
            LinkNoise(float(s.jitter_ms[i].mean()), float(s.loss[i].mean()), rto).lattice()
            for s in (up, down)
        ]
        out.append(Lattice.empirical(per_tick).shift(-c) + ways[0] + ways[1])
    return tuple(out)


def with_comm(
    problem: Problem, comm_ms: Sequence[float], noise: Sequence[Lattice | None] | None = None
) -> Problem:
    """The problem with each user's communication time per round replaced (and its noise,
    where given)."""
    users = tuple(
        dataclasses.replace(u, comm_ms=c) for u, c in zip(problem.users, comm_ms, strict=True)
    )
    out = dataclasses.replace(problem, users=users)
    return out if noise is None else with_noise(out, noise)


def with_radio(problem: Problem, sc: Scenario, up: LinkSeries, down: LinkSeries) -> Problem:
    """The problem with each user's link time per round, and its noise, from its radio
    series: what every runner (and ``solve``) plans and predicts with on radio links."""
    comm = radio_comm_ms(sc, up, down)
    return with_comm(problem, comm, radio_comm_noise(sc, up, down, comm))


def node_scenario(
    sc: Scenario,
    *,
    policy: str,
    time_scale: float,
    comm_ms: Sequence[float] | None,
    comm_noise: Sequence[Lattice] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> Scenario:
    """What a node process of the emulation is given: the scenario with the policy it runs,
    the time scale the runner chose, (on radio links) each user's communication prior and its
    noise (``NOISE_VALUES`` quantiles), as ``[[users.each]]`` entries, so that its edge plans
    what the simulation plans, and the server nodes' ``addresses`` (by name) as the network
    placed them."""
    deployment = sc.deployment
    if addresses:
        nodes = tuple(
            dataclasses.replace(n, address=addresses.get(n.name, n.address))
            for n in deployment.nodes
        )
        deployment = dataclasses.replace(deployment, nodes=nodes)
    users = sc.users
    if comm_ms is not None:
        each = [*users.each, *[UserOverride()] * max(0, len(comm_ms) - len(users.each))]
        for i, c in enumerate(comm_ms):
            each[i] = dataclasses.replace(each[i], comm_ms=c)
        if comm_noise is not None:
            for i, (c, noise) in enumerate(zip(comm_ms, comm_noise, strict=True)):
                each[i] = dataclasses.replace(each[i], comm_ms=c, comm_noise_ms=_quantiles(noise))
        users = dataclasses.replace(users, each=tuple(each))
    return dataclasses.replace(
        sc,
        profiles=(),  # merged in already; a path relative to the user's file means nothing here
        deployment=deployment,
        users=users,
        planner=dataclasses.replace(sc.planner, policy=policy),
        emu=dataclasses.replace(sc.emu, time_scale=time_scale),
    )


# How many equally likely values carry a user's link noise to its edge: its midpoint
# quantiles (the expected maximum over a batch moves by well under 1% against the full series).
NOISE_VALUES = 64


def _quantiles(noise: Lattice) -> tuple[float, ...]:
    qs = (np.arange(NOISE_VALUES) + 0.5) / NOISE_VALUES
    return tuple(round(noise.quantile(float(q)), 3) for q in qs)


def with_model_priors(problem: Problem, acceptance: float | None, prefix: int) -> Problem:
    """What the planner assumes of real models before it has measured anything: the pair's
    acceptance on the built-in prompts (where known) and the mean context of a session."""
    users = tuple(
        dataclasses.replace(
            u, prefix_len=prefix, alpha=u.alpha if acceptance is None else acceptance
        )
        for u in problem.users
    )
    return dataclasses.replace(problem, users=users)


def node_problem(sc: Scenario) -> Problem:
    """The planning instance, with real models' priors as ``sim`` makes them."""
    problem = sc.problem()
    if sc.models.kind == "synthetic":
        return problem
    setup = model_setup(sc)
    return with_model_priors(problem, setup.acceptance, setup.prior_prefix())


def model_setup(sc: Scenario) -> ModelSetup:
    from emu.models.embedded import resolve_models

    m = sc.models
    return resolve_models(
        m.kind,
        draft=m.draft,
        target=m.target,
        device=m.device,
        max_new_tokens=sc.sim.max_new_tokens,
        max_draft_len=sc.planner.max_draft_len,
    )


def synthetic_verifier(
    problem: Problem, streams: Streams, *, warm_start: bool
) -> SyntheticVerifier:
    """The synthetic verifier every runner builds: each user's acceptances from its own stream."""
    return SyntheticVerifier(
        edge=problem.edge,
        alpha={i: u.alpha for i, u in enumerate(problem.users)},
        prefix_len={i: u.prefix_len for i, u in enumerate(problem.users)},
        prefill_free=warm_start,
        user_rng=streams.acceptance,
    )
