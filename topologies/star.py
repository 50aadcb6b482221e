"""A single-cell star: every user host links to the access point, which links to each server.

Layer: topologies (Mininet, graph data only: ``build`` adds hosts and links; nothing runs).

Addresses: user i is 10.1.i.2/24 behind the access point's 10.1.i.1 (interface ``ap-u<i>``);
server k (the deployment's verifiers and router, in order; DiP-SD's one edge is ``edge``) is
10.0.k.2/24 behind 10.0.k.1 (``ap-<name>``). The access point is a router; each user link's
shaping happens there (``emu.shaping``), both directions, whichever server the user talks to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mininet.topo import Topo

from emu.errors import ConfigError

__all__ = [
    "MAX_SERVERS",
    "MAX_USERS",
    "StarTopo",
    "check_users",
    "server_ip",
    "server_subnet",
    "user_ip",
    "user_subnet",
]

MAX_USERS = 250
MAX_SERVERS = 250


def server_ip(k: int) -> str:
    return f"10.0.{k}.2"


def server_subnet(k: int) -> str:
    return f"10.0.{k}.0/24"


def check_users(users: int, servers: int = 1) -> None:
    """ConfigError unless the star can address ``users`` and ``servers``: one /24 per user in
    10.1.0.0/16, one per server in 10.0.0.0/16."""
    if users < 1:
        raise ConfigError(f"users.count must be >= 1 for the star topology, got {users}")
    if users > MAX_USERS:
        raise ConfigError(
            f"users.count must be <= {MAX_USERS} for the star topology (one /24 per user in "
            f"10.1.0.0/16), got {users}"
        )
    if not 1 <= servers <= MAX_SERVERS:
        raise ConfigError(
            f"the deployment's server nodes must number 1 to {MAX_SERVERS} for the star "
            f"topology (one /24 each in 10.0.0.0/16), got {servers}"
        )


def user_ip(i: int) -> str:
    return f"10.1.{i}.2"


def user_subnet(i: int) -> str:
    return f"10.1.{i}.0/24"


class StarTopo(Topo):  # type: ignore[misc]
    """``users`` user hosts (u0, u1, ...), the access point ``ap`` and one host per server."""

    def build(self, users: int = 1, servers: Sequence[str] = ("edge",), **_opts: Any) -> None:
        check_users(users, len(servers))
        ap = self.addHost("ap", ip=None)
        for k, name in enumerate(servers):
            host = self.addHost(name, ip=f"{server_ip(k)}/24", defaultRoute=f"via 10.0.{k}.1")
            self.addLink(ap, host, intfName1=f"ap-{name}", params1={"ip": f"10.0.{k}.1/24"})
        for i in range(users):
            u = self.addHost(f"u{i}", ip=f"{user_ip(i)}/24", defaultRoute=f"via 10.1.{i}.1")
            self.addLink(u, ap, intfName2=f"ap-u{i}", params2={"ip": f"10.1.{i}.1/24"})
