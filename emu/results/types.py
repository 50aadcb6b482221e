"""Typed results: what one policy's run measured, and the entry ``sim`` and ``run`` report for it.

Layer: emu (orchestration; no I/O). The records of a run (``emu.results.metrics``) are summed up
into one ``Measured`` with the same definitions in the simulation and the emulation; a runner
adds the planners' prediction and what only it knows (``SimResult``, ``RunResult``). ``to_json``
gives the documented JSON (../shared/ARCHITECTURE.md, "Interfaces users rely on"): one flat
object per policy, ``throughput_tok_s`` and ``predicted_tok_s`` first; a field a runner does
not have is left out, never written as null unless null is its value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LinkCheck",
    "Measured",
    "Percentiles",
    "PolicyResult",
    "RunResult",
    "RunSummary",
    "SimResult",
    "SimSummary",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """One policy's run as its records tell it (see ``emu.results.metrics``)."""

    throughput_tok_s: float  # committed tokens per second in the steady window, all users
    per_user_tok_s: Mapping[str, float]
    tokens: int
    rounds: int
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None  # accepted / drafted
    mean_accepted_len: float | None  # 1 + accepted per verified draft
    per_position_acceptance: tuple[float | None, ...]
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    batches: int
    late_drafts: int
    edge_utilisation: float  # the verifiers' mean busy share of the window
    pipeline_bubbles: int
    bubble_s: float
    replans: int
    steady_window_s: tuple[float, float]
    users_started: int
    faults: Mapping[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyResult:
    """A policy's entry in ``results``: what it measured against what its plans predicted."""

    measured: Measured
    predicted_tok_s: float
    protocol_errors: int = 0
    lossless: bool | None = None  # greedy runs with real models: matches the target alone
    lossless_checked: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        m = _plain(self.measured)
        out = {
            "throughput_tok_s": m.pop("throughput_tok_s"),
            "predicted_tok_s": self.predicted_tok_s,
        }
        out.update(m)
        for f in dataclasses.fields(self):
            if f.name in ("measured", "predicted_tok_s"):
                continue
            value = getattr(self, f.name)
            if value is not None or f.name == "lossless":
                out[f.name] = _plain(value)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult(PolicyResult):
    cycles: int = 0  # every verifier's cycles of its plan
    wall_s: float = 0.0  # this policy's simulation on the wall


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult(PolicyResult):
    overruns: Mapping[str, int] = field(default_factory=dict)  # steps past their profile, by node
    deaths: tuple[Mapping[str, Any], ...] = ()  # node processes that exited mid-run
    faults_injected: tuple[Mapping[str, Any], ...] = ()  # what [faults] did, and when
    stalls: tuple[Mapping[str, Any], ...] = ()  # live nodes whose records stopped
    valid: bool = True  # False: a server died, and the throughput is no measure
    invalid_reason: str | None = None
    span_s: float | None = None  # the workload on the wall
    partial: bool | None = None  # True: the run was stopped during this policy


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSummary:
    """``sim --json``."""

    scenario: str
    models: Mapping[str, Any]
    users: int
    deployment: Mapping[str, Any]
    duration_s: float
    seed: int
    results: Mapping[str, SimResult]
    wall_s: float
    handovers: tuple[int, ...] | None = None  # on radio links: each user's, the same trace
    mode: str = "sim"

    def to_json(self) -> dict[str, Any]:
        out = {
            "mode": self.mode,
            "scenario": self.scenario,
            "models": dict(self.models),
            "users": self.users,
            "deployment": dict(self.deployment),
            "duration_s": self.duration_s,
            "seed": self.seed,
            "results": {p: r.to_json() for p, r in self.results.items()},
            "wall_s": self.wall_s,
        }
        if self.handovers is not None:
            out["handovers"] = list(self.handovers)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkCheck:
    """One link probed before a run: what it is configured to give and what it gave."""

    link: str  # "u<i><->SERVER" (a user's), "A->B" (between servers)
    configured: Mapping[str, float]  # rtt_ms, up_rate_bps, up_loss
    measured: Mapping[str, float | None]  # rtt_ms, up_ms, down_ms, up_rate_bps
    ok: bool  # within the tolerance (emu.strict fails the run otherwise)
    tries: int = 1  # probes made: one out of tolerance is repeated (a busy host's hiccup)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """``run --json`` (and ``summary.json``, rewritten as each policy ends). ``valid``: no
    policy's result is void (a server died); ``partial`` and ``stopped``: a signal stopped the
    run, where, and which policies did not run."""

    scenario: str
    users: int
    deployment: Mapping[str, Any]
    duration_s: float
    shaping: str
    shaping_why: str
    timing: str
    time_scale: float
    time_scale_why: str
    models: str
    fidelity: tuple[LinkCheck, ...] = ()
    results: Mapping[str, RunResult] = field(default_factory=dict)
    partial: bool = False
    stopped: Mapping[str, Any] | None = None
    wall_s: float = 0.0
    mode: str = "emu"

    @property
    def valid(self) -> bool:
        return all(r.valid for r in self.results.values())

    def with_result(self, policy: str, result: RunResult) -> RunSummary:
        return dataclasses.replace(self, results={**self.results, policy: result})

    def to_json(self) -> dict[str, Any]:
        out = {
            "mode": self.mode,
            "scenario": self.scenario,
            "users": self.users,
            "deployment": _plain(self.deployment),
            "duration_s": self.duration_s,
            "shaping": self.shaping,
            "shaping_why": self.shaping_why,
            "timing": self.timing,
            "time_scale": self.time_scale,
            "time_scale_why": self.time_scale_why,
            "models": self.models,
            "valid": self.valid,
            "partial": self.partial,
            "fidelity": _plain(self.fidelity),
            "results": {p: r.to_json() for p, r in self.results.items()},
        }
        if self.stopped is not None:
            out["stopped"] = _plain(self.stopped)
        out["wall_s"] = self.wall_s
        return out


def _plain(x: Any) -> Any:
    """JSON-ready data: dataclasses as objects, tuples as lists, mappings as dicts."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    return x
