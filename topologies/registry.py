"""The registry of topologies by name (``draftnet run``'s ``topology`` field, scripts/topo.py).

Layer: topologies.
"""

from __future__ import annotations

from typing import Any

from emu.errors import ConfigError

__all__ = ["TOPOLOGIES", "topology"]

TOPOLOGIES = ("star",)


def topology(name: str, **params: Any) -> Any:
    """The named ``Topo``, built with ``params``; ConfigError for a name that does not exist."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {name!r}")
    from topologies.star import StarTopo

    return StarTopo(**params)
