"""A scenario's deployment, assembled once: every node with its role and place, the node the
users dial, the router's choice of verifier per user, each verifier's planning instance, and
the links between servers.

Layer: emu (orchestration; pure over the scenario). ``assemble(scenario)`` is the one place
where roles, users and verifiers are put together; ``draftnet sim`` and ``draftnet run`` take
the Deployment it returns and choose only the clock, the transport and where each node runs
(see ../shared/ARCHITECTURE.md, "Deployments"). DiP-SD's single edge is the deployment with
one verifier that every user dials; with a router, users are split across verifiers by the
router's own rule (``nodes.core.route``), so each verifier's users, plan and prediction are
known before anything runs and the router node routes exactly so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.planner import Plan
from emu.planner.model import Edge, Problem, User
from emu.planner.stochastic import stochastic_evaluate
from emu.scenario import Scenario
from emu.shaping.spec import LinkSpec, ServerLink
from nodes.core.route import RouterCore
from nodes.core.schedule import BatchScheduler, LengthController
from nodes.core.systems import System, get_system

__all__ = ["Deployment", "Node", "assemble"]


@dataclass(frozen=True, slots=True)
class Node:
    """One node: a user (client and drafter on its device) or a server (verifier, router).
    ``address``: where it listens ("" for a user, which only dials; a server's name until a
    network places it)."""

    name: str
    role: str  # user | verifier | router
    site: str
    address: str
    user: int | None = None  # a user node's index in the scenario's users


@dataclass(frozen=True, slots=True)
class Deployment:
    system: System  # what supplies the policies, the verifiers' scheduler and length control
    scenario: Scenario
    problem: Problem  # every user's prior, as the verifiers' planners see them
    nodes: tuple[Node, ...]
    entry: str  # the node every user dials first
    groups: Mapping[str, tuple[int, ...]]  # each verifier's users (scenario indices)
    router: str | None = None
    router_policy: str = "round-robin"
    links: tuple[ServerLink, ...] = ()  # between servers, each direction its own
    edges: Mapping[str, Edge] = dataclasses.field(default_factory=dict)  # a verifier's own

    def edge(self, verifier: str) -> Edge:
        """``verifier``'s compute: its own where the scenario gives it one, else ``[edge]``'s."""
        return self.edges.get(verifier, self.problem.edge)

    @property
    def verifiers(self) -> tuple[str, ...]:
        return tuple(self.groups)

    @property
    def users(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "user")

    @property
    def servers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role != "user")

    def scheduler(self) -> BatchScheduler:
        """A verifier's batch scheduler, as the system makes it from the scenario's runtime."""
        assert self.system.scheduler is not None  # assemble() deploys runnable systems only
        return self.system.scheduler(self.scenario.runtime)

    def lengths(self) -> LengthController:
        """A verifier's length controller, as the system makes it."""
        assert self.system.lengths is not None
        return self.system.lengths(self.scenario.runtime)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"{name!r} is not a node of this deployment")

    def priors(self, verifier: str) -> dict[int, User]:
        """What ``verifier`` starts out believing of each of its users, by user id."""
        return {i: self.problem.users[i] for i in self.groups[verifier]}

    def on_compute_of(self, verifier: str) -> Problem:
        """Every user's prior (scenario indices) on ``verifier``'s compute: what its model
        backend is built from."""
        if verifier not in self.edges:
            return self.problem
        return dataclasses.replace(self.problem, edge=self.edges[verifier])

    def served(self, verifier: str) -> Problem:
        """The planning instance of ``verifier``: its users' priors, in index order."""
        users = tuple(self.problem.users[i] for i in self.groups[verifier])
        if len(users) == self.problem.size and verifier not in self.edges:
            return self.problem
        return dataclasses.replace(self.problem, users=users, edge=self.edge(verifier))

    def router_core(self) -> RouterCore:
        """The router's rule (the one that made ``groups``), for the router node."""
        return RouterCore(self.verifiers, self.router_policy, self.scenario.sim.seed)

    def with_problem(self, problem: Problem) -> Deployment:
        """The same deployment with the users' priors replaced (radio links' or real models'
        priors, which the runners measure before they plan)."""
        if problem.size != self.problem.size:
            raise ValueError(f"{problem.size} users for a deployment of {self.problem.size}")
        return dataclasses.replace(self, problem=problem)

    def describe(self) -> dict[str, object]:
        """The run JSON's ``deployment``: the system, each verifier's users, the router."""
        return {
            "system": self.system.name,
            "verifiers": {v: list(us) for v, us in self.groups.items()},
            "router": self.router,
            "router_policy": self.router_policy if self.router is not None else None,
            "links": [link.name for link in self.links],
        }

    def predicted_tok_s(self, planner: Callable[[Problem, Plan | None], Plan]) -> float:
        """The throughput the verifiers' first plans predict, all together: the stochastic
        model's expectation with the links' noise, the published model's without."""
        total = 0.0
        for v, users in self.groups.items():
            if users:
                problem = self.served(v)
                total += stochastic_evaluate(problem, planner(problem, None)).throughput_tok_s
        return total


def assemble(sc: Scenario) -> Deployment:
    """The deployment ``sc`` describes (its rules were checked when it was loaded)."""
    d = sc.deployment
    system = get_system(d.system)
    if not system.runs:
        raise ConfigError(
            f"deployment.system = {d.system!r} runs nodes of its own in `draftnet sim` and "
            "`draftnet run`, not a deployment of verifiers and routers"
        )
    problem = sc.problem()
    users = tuple(
        Node(name=f"u{i}", role="user", site="device", address="", user=i)
        for i in range(problem.size)
    )
    servers = tuple(
        Node(name=n.name, role=n.role, site=n.site, address=n.address or n.name) for n in d.nodes
    )
    entry = d.entry
    router = next((n for n in d.nodes if n.role == "router"), None)
    if router is not None and entry == router.name:
        core = RouterCore(d.routed, router.policy, sc.sim.seed)
        groups = core.groups(range(problem.size))
        policy = router.policy
    else:
        groups = {v: (tuple(range(problem.size)) if v == entry else ()) for v in d.verifiers}
        policy = "round-robin"
    return Deployment(
        system=system,
        scenario=sc,
        problem=problem,
        nodes=(*users, *servers),
        entry=entry,
        groups=groups,
        router=router.name if router is not None and entry == router.name else None,
        router_policy=policy,
        edges={
            n.name: sc.verifier_edge(n.name)
            for n in d.nodes
            if n.memory_bytes is not None or n.latency is not None
        },
        links=tuple(
            ServerLink(
                src,
                dst,
                LinkSpec.fixed(
                    delay_ms=link.delay_ms,
                    jitter_ms=link.jitter_ms,
                    rate_bps=link.rate_bps,
                    loss=link.loss,
                ),
            )
            for link in d.links
            for src, dst in link.directions
        ),
    )
