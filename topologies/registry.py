"""The registry of topologies by name (``draftnet run``'s ``topology`` field, scripts/topo.py).

Layer: topologies.
"""

from __future__ import annotations

from typing import Any

from emu.errors import ConfigError

__all__ = ["TOPOLOGIES", "check", "topology"]

TOPOLOGIES = ("star",)


def check(name: str, *, users: int) -> None:
    """ConfigError, before anything is built, for a topology that does not exist or that
    cannot address ``users``."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {name!r}")
    from topologies.star import check_users

    check_users(users)


def topology(name: str, **params: Any) -> Any:
    """The named ``Topo``, built with ``params``; ConfigError for a name that does not exist
    or a user count it cannot address."""
    check(name, users=int(params.get("users", 1)))
    from topologies.star import StarTopo

    return StarTopo(**params)
