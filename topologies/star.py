"""A single-cell star: every user host links to the access point, which links to the edge.

Layer: topologies (Mininet, graph data only: ``build`` adds hosts and links; nothing runs).

Addresses: user i is 10.1.i.2/24 behind the access point's 10.1.i.1 (interface ``ap-u<i>``);
the edge is 10.0.0.2/24 behind 10.0.0.1 (``ap-edge``). The access point is a router; each user
link's shaping happens there (``emu.shaping``), both directions.
"""

from __future__ import annotations

from typing import Any

from mininet.topo import Topo

__all__ = ["EDGE_IP", "StarTopo", "user_ip", "user_subnet"]

EDGE_IP = "10.0.0.2"
MAX_USERS = 250


def user_ip(i: int) -> str:
    return f"10.1.{i}.2"


def user_subnet(i: int) -> str:
    return f"10.1.{i}.0/24"


class StarTopo(Topo):  # type: ignore[misc]
    """``users`` user hosts (u0, u1, ...), the access point ``ap`` and the ``edge``."""

    def build(self, users: int = 1, **_opts: Any) -> None:
        if not 1 <= users <= MAX_USERS:
            raise ValueError(f"a star has 1 to {MAX_USERS} users, got {users}")
        ap = self.addHost("ap", ip=None)
        edge = self.addHost("edge", ip=f"{EDGE_IP}/24", defaultRoute="via 10.0.0.1")
        self.addLink(ap, edge, intfName1="ap-edge", params1={"ip": "10.0.0.1/24"})
        for i in range(users):
            u = self.addHost(f"u{i}", ip=f"{user_ip(i)}/24", defaultRoute=f"via 10.1.{i}.1")
            self.addLink(u, ap, intfName2=f"ap-u{i}", params2={"ip": f"10.1.{i}.1/24"})
