"""The registry of topologies by name (``draftnet run``'s ``topology`` field, scripts/topo.py).

Layer: topologies. A topology places the deployment's nodes: it builds a host for every user
and every server node, and gives each server its address (read back from the built network,
``emu.runners.network.Network.addresses``).
"""

from __future__ import annotations

from typing import Any

from emu.errors import ConfigError

__all__ = ["TOPOLOGIES", "check", "topology"]

TOPOLOGIES = ("star",)


def check(name: str, *, users: int, servers: int = 1) -> None:
    """ConfigError, before anything is built, for a topology that does not exist or that
    cannot address ``users`` and ``servers``."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {name!r}")
    from topologies.star import check_users

    check_users(users, servers)


def topology(name: str, **params: Any) -> Any:
    """The named ``Topo``, built with ``params`` (``users``, ``servers``); ConfigError for a
    name that does not exist or a size it cannot address."""
    check(name, users=int(params.get("users", 1)), servers=len(params.get("servers", ("edge",))))
    from topologies.star import StarTopo

    return StarTopo(**params)
