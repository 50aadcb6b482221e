"""draftnet topologies: Mininet ``Topo`` classes and their registry (see ARCHITECTURE.md).

Only ``emu/`` and ``topologies/`` import Mininet.
"""

from __future__ import annotations

from topologies.registry import TOPOLOGIES, topology

__all__ = ["TOPOLOGIES", "topology"]
