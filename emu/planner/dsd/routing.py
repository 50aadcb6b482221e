"""Which verifier serves a conversation: DSD's routers (dsd.md section 4.1), sticky per
conversation, each choosing among the drafter's allowed verifiers from what they report.

Layer: pure (emu.planner). The router's randomness is its own generator, seeded from the run's
seed and the cluster (``seed + 9973 * cluster``, as the authors' simulator does), so a
router's draws never move anyone else's. DiP-SD's static per-user routing is
``nodes.core.route``; these routers read the verifiers' queues, so they choose at run time.

- ``random``: uniform.
- ``round-robin``: each drafter's own counter over its allowed verifiers.
- ``jsq``: the shortest queue (jobs enqueued, plus 1 if busy), ties drawn at random.
- ``jiq``: the verifier idle longest (a FIFO of the verifiers that became idle), else random.
- ``jsq2``: two drawn uniformly without replacement, the one with less work left.
- ``wjsq2``: two drawn without replacement, each with weight w by the key u^(1/w), the one with
  less work left.
- ``semi-clairvoyant``: the least queue x (2 - the drafter's progress); the progress is the
  drafter's own, the same for every candidate, so it is JSQ with the first of equals.
- ``weighted-cluster``: the least work left over the verifier's cluster weight.

Work left = (the busy batch's time left + ceil(enqueued / batch size) x the mean of the last 20
batches' times) / weight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ROUTERS", "DsdRouter", "VerifierState"]

ROUTERS = (
    "random",
    "round-robin",
    "jsq",
    "jiq",
    "jsq2",
    "wjsq2",
    "semi-clairvoyant",
    "weighted-cluster",
)
CLUSTER_SEED_STRIDE = 9973


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierState:
    """What a verifier reports to the router."""

    name: str
    enqueued: int = 0
    busy: bool = False
    busy_left_ms: float = 0.0
    batch_size: int = 1
    mean_batch_ms: float = 37.0  # of its last 20 batches (37 ms before any)
    weight: float = 1.0
    cluster_weight: float = 1.0

    @property
    def queue_len(self) -> int:
        return self.enqueued + int(self.busy)

    @property
    def work_left_ms(self) -> float:
        waiting = math.ceil(self.enqueued / self.batch_size) * self.mean_batch_ms
        return (self.busy_left_ms + waiting) / self.weight


@dataclass(slots=True)
class DsdRouter:
    policy: str
    seed: int = 0
    cluster: int = 0
    _routes: dict[str, str] = field(default_factory=dict)
    _turn: dict[str, int] = field(default_factory=dict)  # round-robin: each drafter's counter
    _idle: deque[str] = field(default_factory=deque)  # jiq: verifiers in the order they idled
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.policy not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {self.policy!r}")
        self._rng = np.random.default_rng(self.seed + CLUSTER_SEED_STRIDE * self.cluster)

    def became_idle(self, verifier: str) -> None:
        """A verifier finished its work and has nothing queued (``jiq`` keeps their order)."""
        if verifier not in self._idle:
            self._idle.append(verifier)

    def route(self, conversation: str, drafter: str, allowed: Sequence[VerifierState]) -> str:
        """The verifier for ``conversation`` (the one it had, if it has been routed), chosen
        among ``allowed``, the drafter's verifiers, from their reports."""
        if not allowed:
            raise ValueError(f"drafter {drafter} has no verifier to route to")
        if conversation not in self._routes:
            self._routes[conversation] = self._choose(drafter, allowed)
        return self._routes[conversation]

    def forget(self, conversation: str) -> None:
        """The conversation ended: its route is no longer kept."""
        self._routes.pop(conversation, None)

    def _choose(self, drafter: str, allowed: Sequence[VerifierState]) -> str:
        if len(allowed) == 1:
            return allowed[0].name
        match self.policy:
            case "random":
                return allowed[int(self._rng.integers(len(allowed)))].name
            case "round-robin":
                k = self._turn.get(drafter, 0)
                self._turn[drafter] = k + 1
                return allowed[k % len(allowed)].name
            case "jsq":
                return self._least(allowed, [v.queue_len for v in allowed])
            case "semi-clairvoyant":
                lengths = [v.queue_len for v in allowed]
                return allowed[lengths.index(min(lengths))].name
            case "jiq":
                names = {v.name: v for v in allowed}
                while self._idle:
                    idle = self._idle.popleft()
                    if idle in names and names[idle].queue_len == 0:
                        return idle
                return allowed[int(self._rng.integers(len(allowed)))].name
            case "jsq2":
                pair = self._rng.choice(len(allowed), size=2, replace=False)
                two = [allowed[int(i)] for i in pair]
                return min(two, key=lambda v: v.work_left_ms).name
            case "wjsq2":
                w = np.array([v.weight for v in allowed])
                keys = self._rng.random(len(allowed)) ** (1.0 / w)
                two = [allowed[int(i)] for i in np.argsort(-keys)[:2]]
                return min(two, key=lambda v: v.work_left_ms).name
            case _:  # weighted-cluster
                return self._least(allowed, [v.work_left_ms / v.cluster_weight for v in allowed])

    def _least(self, allowed: Sequence[VerifierState], score: Sequence[float]) -> str:
        best = min(score)
        ties = [v for v, s in zip(allowed, score, strict=True) if s == best]
        return ties[int(self._rng.integers(len(ties)))].name if len(ties) > 1 else ties[0].name
