"""A single-cell star: every user host links to the access point, which links to the edge.

Layer: topologies (Mininet, graph data only: ``build`` adds hosts and links; nothing runs).

Addresses: user i is 10.1.i.2/24 behind the access point's 10.1.i.1 (interface ``ap-u<i>``);
the edge is 10.0.0.2/24 behind 10.0.0.1 (``ap-edge``). The access point is a router; each user
link's shaping happens there (``emu.shaping``), both directions.
"""

from __future__ import annotations

from typing import Any

from mininet.topo import Topo

from emu.errors import ConfigError

__all__ = ["EDGE_IP", "MAX_USERS", "StarTopo", "check_users", "user_ip", "user_subnet"]

EDGE_IP = "10.0.0.2"
MAX_USERS = 250


def check_users(users: int) -> None:
    """ConfigError unless the star can address ``users``: one /24 per user in 10.1.0.0/16."""
    if users < 1:
        raise ConfigError(f"users.count must be >= 1 for the star topology, got {users}")
    if users > MAX_USERS:
        raise ConfigError(
            f"users.count must be <= {MAX_USERS} for the star topology (one /24 per user in "
            f"10.1.0.0/16), got {users}"
        )


def user_ip(i: int) -> str:
    return f"10.1.{i}.2"


def user_subnet(i: int) -> str:
    return f"10.1.{i}.0/24"


class StarTopo(Topo):  # type: ignore[misc]
    """``users`` user hosts (u0, u1, ...), the access point ``ap`` and the ``edge``."""

    def build(self, users: int = 1, **_opts: Any) -> None:
        check_users(users)
        ap = self.addHost("ap", ip=None)
        edge = self.addHost("edge", ip=f"{EDGE_IP}/24", defaultRoute="via 10.0.0.1")
        self.addLink(ap, edge, intfName1="ap-edge", params1={"ip": "10.0.0.1/24"})
        for i in range(users):
            u = self.addHost(f"u{i}", ip=f"{user_ip(i)}/24", defaultRoute=f"via 10.1.{i}.1")
            self.addLink(u, ap, intfName2=f"ap-u{i}", params2={"ip": f"10.1.{i}.1/24"})
