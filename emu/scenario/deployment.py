"""The scenario's ``[deployment]``: the system, its server nodes with their roles, and the node
the users dial; the rules that make roles work together.

Layer: emu (orchestration; typed configuration, no I/O). The users' nodes (each a client and a
drafter on its device, as in DiP-SD) come from ``[users]``, and their links from ``[network]``
and ``[radio]``; the nodes listed here are the servers (verifiers and at most one router), and
``links`` the links between servers (a fronthaul, a WAN), each a fixed state each way.
``emu.deploy.deployment.assemble`` turns a scenario into the typed ``Deployment`` every runner
takes. Each rule's violation is one ConfigError naming the field, the value and the rule,
before anything starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from emu.errors import ConfigError, check_in
from emu.scenario.compute import LatencyOverride
from nodes.core.route import ROUTER_POLICIES
from nodes.core.systems import get_system

__all__ = ["SITES", "DeploymentConfig", "LinkConfig", "NodeConfig"]

SITES = ("device", "small-cell", "macro-cell", "edge", "cloud")
# A node is a Mininet host, and its link at the access point the interface "ap-<name>" (at most
# 15 characters); "ap" is the access point and u<N> the users' hosts.
_NAME = re.compile(r"[a-z][a-z0-9]{0,9}")
_RESERVED = re.compile(r"ap|u[0-9]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """One server node. ``address``: where it listens in a lab ("" in the emulation, where
    the topology gives every node its address, and in the simulation, where a node's name is
    its address)."""

    name: str
    role: str
    site: str = "edge"
    address: str = ""
    policy: str = "round-robin"  # a router's: how it picks each user's verifier
    verifiers: tuple[str, ...] = ()  # a router's: the verifiers it routes to; (): every one
    memory_bytes: float | None = None  # a verifier's own compute; None: [edge]'s
    latency: LatencyOverride | None = None  # each field unset: [edge.latency]'s


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """A link between two server nodes, ``ends[0]`` to ``ends[1]`` and (unless ``one_way``)
    back with the same state. Traffic between two servers with no link between them crosses
    the access point unshaped."""

    ends: tuple[str, ...] = ()
    delay_ms: float = 0.0  # one way
    jitter_ms: float = 0.0
    rate_bps: float = 0.0  # 0: unlimited
    loss: float = 0.0
    one_way: bool = False  # only ends[0] -> ends[1]; the other way is another entry (or none)

    def check(self, where: str) -> None:
        check_in(f"{where}.delay_ms", self.delay_ms, 0, 1e5, "in [0, 1e5]")
        check_in(f"{where}.jitter_ms", self.jitter_ms, 0, 1e5, "in [0, 1e5]")
        check_in(f"{where}.rate_bps", self.rate_bps, 0, math.inf, ">= 0 (0: unlimited)")
        check_in(f"{where}.loss", self.loss, 0, 0.5, "in [0, 0.5]")
        if len(self.ends) != 2 or self.ends[0] == self.ends[1]:
            raise ConfigError(f"{where}.ends must name two different nodes, got {list(self.ends)}")

    @property
    def directions(self) -> tuple[tuple[str, str], ...]:
        a, b = self.ends
        return ((a, b),) if self.one_way else ((a, b), (b, a))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentConfig:
    system: str = "dipsd"
    nodes: tuple[NodeConfig, ...] = (NodeConfig(name="edge", role="verifier"),)
    links: tuple[LinkConfig, ...] = ()
    attach: str = ""  # the node every user dials: "" = the router if any, else the verifier
    port: int = 7000  # every server node's TCP port (emulation and lab)

    def __post_init__(self) -> None:
        roles = get_system(self.system).roles
        check_in("deployment.port", self.port, 1, 65535, "in [1, 65535]")
        seen: dict[str, int] = {}
        at: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            where = f"deployment.nodes[{i}]"
            if not _NAME.fullmatch(n.name) or _RESERVED.fullmatch(n.name):
                raise ConfigError(
                    f"{where}.name must be a lowercase letter then up to 9 letters or digits, "
                    f"and not ap or u<N> (the access point's and the users'), got {n.name!r}"
                )
            if n.name in seen:
                raise ConfigError(
                    f"{where}.name {n.name!r} is deployment.nodes[{seen[n.name]}]'s too: "
                    "each node needs a name of its own"
                )
            seen[n.name] = i
            if n.role not in roles:
                raise ConfigError(
                    f"{where}.role must be one of {', '.join(roles)} (the roles of "
                    f"{self.system}'s servers), got {n.role!r}"
                )
            if n.site not in SITES:
                raise ConfigError(f"{where}.site must be one of {', '.join(SITES)}, got {n.site!r}")
            if n.address:
                if n.address in at:
                    raise ConfigError(
                        f"{where}.address {n.address!r} is deployment.nodes[{at[n.address]}]'s "
                        "too: two nodes cannot listen on one address"
                    )
                at[n.address] = i
            if n.role != "verifier":
                compute = {
                    "memory_bytes": n.memory_bytes,
                    "latency": None if n.latency is None else n.latency.given(),
                }
                for field_name, set_to in compute.items():
                    if set_to is not None:
                        raise ConfigError(
                            f"{where}.{field_name} is a verifier's field, and {n.name} is a "
                            f"{n.role}, got {set_to!r}"
                        )
            if n.role == "router":
                if n.policy not in ROUTER_POLICIES:
                    raise ConfigError(
                        f"{where}.policy must be one of {', '.join(ROUTER_POLICIES)}, "
                        f"got {n.policy!r}"
                    )
            else:
                for name, value, default in (
                    ("verifiers", n.verifiers, ()),
                    ("policy", n.policy, "round-robin"),
                ):
                    if value != default:
                        raise ConfigError(
                            f"{where}.{name} is a router's field, and {n.name} is a {n.role}, "
                            f"got {value!r}"
                        )
        verifiers = [n.name for n in self.nodes if n.role == "verifier"]
        routers = [n for n in self.nodes if n.role == "router"]
        if not verifiers:
            raise ConfigError(
                "deployment.nodes must include a verifier: the users' drafts would reach none"
            )
        for role, many in (("router", routers), ("drafter", self.drafters)):
            if len(many) > 1:
                names = ", ".join(r if isinstance(r, str) else r.name for r in many)
                raise ConfigError(
                    f"deployment.nodes has {len(many)} {role}s ({names}); at most one is supported"
                )
        for router in routers:
            i = seen[router.name]
            if len(set(router.verifiers)) != len(router.verifiers):
                raise ConfigError(
                    f"deployment.nodes[{i}].verifiers must name each verifier once, "
                    f"got {list(router.verifiers)}"
                )
            for v in router.verifiers:
                if v not in seen:
                    raise ConfigError(
                        f"deployment.nodes[{i}].verifiers names {v!r}, which is not a node of "
                        f"the deployment (nodes: {', '.join(seen)})"
                    )
                if v not in verifiers:
                    raise ConfigError(
                        f"deployment.nodes[{i}].verifiers names {v!r}, which is a "
                        f"{self.nodes[seen[v]].role}, not a verifier: a router routes to verifiers"
                    )
        if self.attach and self.attach not in seen:
            raise ConfigError(
                f"deployment.attach names {self.attach!r}, which is not a node of the deployment "
                f"(nodes: {', '.join(seen)}): the users could reach no verifier"
            )
        self._check_links(seen)
        entry = self.entry
        for r in routers:
            if r.name != entry:
                raise ConfigError(
                    f"deployment.nodes[{seen[r.name]}] ({r.name}): no user dials this router "
                    f"(deployment.attach is {entry!r}); leave attach empty to dial it"
                )
        if entry in self.routers:
            reached = set(self.routed)
        elif entry in self.drafters:
            reached = {v for v in verifiers if self.link(entry, v) is not None}
        else:
            reached = {entry}
        for v in verifiers:
            if v not in reached:
                how, fix = "", "set deployment.attach to a router that routes to every verifier"
                if entry in self.routers:
                    how = " and it does not route to it"
                elif entry in self.drafters:
                    how = " and it has no link to it"
                    fix = f"link {entry} to it in deployment.links (the fronthaul)"
                raise ConfigError(
                    f"deployment.nodes[{seen[v]}] ({v}): no user reaches this verifier (users "
                    f"dial {entry}{how}); {fix}"
                )

    def _check_links(self, seen: dict[str, int]) -> None:
        made: dict[tuple[str, str], int] = {}
        for j, link in enumerate(self.links):
            where = f"deployment.links[{j}]"
            link.check(where)
            for end in link.ends:
                if end not in seen:
                    users = (
                        " (a user's link is [network]'s or [radio]'s)"
                        if re.fullmatch(r"u[0-9]+", end)
                        else ""
                    )
                    raise ConfigError(
                        f"{where}.ends names {end!r}, which is not a server node of the "
                        f"deployment (nodes: {', '.join(seen)}){users}"
                    )
            for a, b in link.directions:
                if (a, b) in made:
                    raise ConfigError(
                        f"{where} links {a} to {b}, and so does deployment.links[{made[a, b]}]: "
                        "each direction between two nodes is one link"
                    )
                made[a, b] = j

    @property
    def verifiers(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if n.role == "verifier")

    @property
    def routers(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if n.role == "router")

    @property
    def drafters(self) -> tuple[str, ...]:
        """Server nodes that draft for the users (a small cell's; hetnet)."""
        return tuple(n.name for n in self.nodes if n.role == "drafter")

    def link(self, src: str, dst: str) -> tuple[int, LinkConfig] | None:
        """The link (its index and entry) carrying traffic from ``src`` to ``dst``, if any."""
        for j, link in enumerate(self.links):
            if (src, dst) in link.directions:
                return j, link
        return None

    @property
    def entry(self) -> str:
        """The node every user dials first."""
        if self.attach:
            return self.attach
        if self.routers:
            return self.routers[0]
        if self.drafters:
            return self.drafters[0]
        if len(self.verifiers) > 1:
            raise ConfigError(
                f"deployment.nodes has {len(self.verifiers)} verifiers "
                f"({', '.join(self.verifiers)}) and no router: every user dials one node, so "
                'several verifiers need a router (a node with role = "router")'
            )
        return self.verifiers[0]

    @property
    def routed(self) -> tuple[str, ...]:
        """The verifiers the router routes to (every verifier, unless it names some)."""
        router = next((n for n in self.nodes if n.role == "router"), None)
        if router is None:
            return ()
        return router.verifiers or self.verifiers

    def node(self, name: str) -> NodeConfig:
        return next(n for n in self.nodes if n.name == name)
