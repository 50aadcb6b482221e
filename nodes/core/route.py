"""Which verifier serves each user: the router's choice, sticky per user.

Layer: pure (nodes.core): no I/O, no clock. The choice depends only on the user's id, the
verifiers and the seed, so the deployment (``emu.deploy.deployment``) knows before anything
runs which users each verifier will plan for, and the router node (``nodes.router``) routes
exactly that way. A redialling user gets the verifier it had. Policies that read the verifiers'
queues (join-the-shortest-queue and the others of ../shared/systems/dsd.md) route per
conversation at run time; they come with that system.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ROUTER_POLICIES", "RouterCore"]

ROUTER_POLICIES = ("round-robin", "random")


@dataclass(slots=True)
class RouterCore:
    """``round-robin``: user ``u`` to ``verifiers[u mod n]``; ``random``: uniform, drawn once
    per user from ``(seed, u)``."""

    verifiers: Sequence[str]
    policy: str = "round-robin"
    seed: int = 0
    _routes: dict[int, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not self.verifiers:
            raise ValueError("a router needs at least one verifier")
        if self.policy not in ROUTER_POLICIES:
            raise ValueError(
                f"router policy must be one of {', '.join(ROUTER_POLICIES)}, got {self.policy!r}"
            )
        self.verifiers = tuple(self.verifiers)

    def route(self, uid: int) -> str:
        """The verifier for user ``uid`` (the same one every time it asks)."""
        if uid not in self._routes:
            n = len(self.verifiers)
            if self.policy == "round-robin":
                k = uid % n
            else:
                k = int(np.random.default_rng([self.seed, uid]).integers(n))
            self._routes[uid] = self.verifiers[k]
        return self._routes[uid]

    def groups(self, uids: Iterable[int]) -> dict[str, tuple[int, ...]]:
        """Each verifier's users among ``uids`` (every verifier listed, in order)."""
        out: dict[str, list[int]] = {v: [] for v in self.verifiers}
        for u in uids:
            out[self.route(u)].append(u)
        return {v: tuple(us) for v, us in out.items()}
