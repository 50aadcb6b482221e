"""A DSD deployment as its simulation reads it (dsd.md sections 2, 3 and 6): the drafters and
their compute, the verifiers in tiers and theirs, the links between them, the workload, and the
rules (router, batching, windows, the authors' switches).

Layer: pure (emu.planner). ``emu.scenario.dsd`` builds one from a scenario's ``[dsd]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.planner.dsd.acceptance import PositionCurve
from emu.planner.dsd.awc import AwcNetwork
from emu.planner.dsd.compute import Compat, Compute
from emu.planner.dsd.links import PairLink
from emu.planner.dsd.workload import Request, ThinkTime

__all__ = ["MODES", "DrafterSpec", "DsdProblem", "VerifierSpec"]

MODES = ("distributed", "fused", "hybrid")


@dataclass(frozen=True, slots=True, kw_only=True)
class DrafterSpec:
    name: str
    capability: float  # its share of the arrivals (and AWC's feature); not its speed
    compute: Compute  # its draft model on its device


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierSpec:
    name: str
    tier: str
    compute: Compute  # its target model on its GPU
    batch_size: int
    window_ms: float
    weight: float = 1.0
    fused_draft: Compute | None = None  # a draft model on its GPU (fused execution)
    kv_tokens: int = 1_000_000  # its KV cache, as the lanes reserve it


@dataclass(frozen=True, slots=True, kw_only=True)
class DsdProblem:
    drafters: tuple[DrafterSpec, ...]
    verifiers: tuple[VerifierSpec, ...]
    links: tuple[PairLink, ...]  # each drafter's reachable verifiers
    trace: tuple[Request, ...]
    think: ThinkTime = field(default_factory=ThinkTime)
    curve: PositionCurve = field(default_factory=PositionCurve)
    router: str = "jsq"
    batching: str = "fifo"
    lanes: bool = True  # the global phase lanes before the verifiers' queues
    lane_depth: int = 24  # a lane holding more defers what comes ...
    lane_poll_ms: float = 0.08  # ... which asks again this often
    kv_retries: int = 3  # a dispatch the KV cache refused is tried again this often ...
    kv_retry_ms: float = 1.0  # ... after this x its refusals; then the conversation fails
    mode: str = "distributed"  # distributed | fused | hybrid (dsd.md 4.4)
    compat: Compat = field(default_factory=Compat)
    gamma_default: int = 4
    max_gamma: int = 8
    awc: AwcNetwork = field(default_factory=AwcNetwork.hand_set)

    @classmethod
    def defaults(cls) -> DsdProblem:
        """No deployment, only the rules' defaults (for a policy made outside a run)."""
        return cls(drafters=(), verifiers=(), links=(), trace=())

    def reachable(self, drafter: str) -> tuple[PairLink, ...]:
        return tuple(link for link in self.links if link.drafter == drafter)
