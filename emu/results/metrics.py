"""Run records: events.jsonl as they happen, and the summary metrics computed from them.

Layer: emu (orchestration); writes files. Every record is one JSON line, flushed when written,
so a crash loses nothing already measured. Metric names follow the speculative-decoding metrics
of common serving engines: draft tokens, accepted tokens, acceptance rate (accepted / drafted),
mean accepted length (1 + accepted / rounds with a draft: tokens committed per verified draft),
per-position acceptance (position j: the share of drafts reaching j whose token j was kept).

The verifier's side, from its ``batch`` and ``prefill`` records, over the same steady window:
``edge_utilisation`` is the share of the window the verifier spent in verify and prefill steps
(on the node's clock, so a step that overran its profile counts for what it took), the mean
over the verifiers where there are several; ``replans`` counts every verifier's plans after
its first;
``pipeline_bubbles`` counts the batches that waited for a draft before they closed (a slot whose
members were all late, so that nothing was verified, included), and ``bubble_s`` is how long
they waited in all. The simulation and the emulation compute them alike.

Throughput is measured in steady state: from the moment every user has its first token
(``t_start``) to the end of the run; ``users_started`` says how many ever got one (a user whose
link never delivered its prompt is left out of the window, not allowed to empty it).
``faults`` counts each connection fault by kind: protocol errors and connection errors the edge
caught, users refused, links lost and redialled, users that gave up, users dropped for silence,
and the warnings of a node's runtime (an accept that failed for want of file descriptors).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from emu.results.types import Measured, Percentiles

__all__ = ["Recorder", "percentiles"]


def percentiles(xs: list[float]) -> Percentiles:
    if not xs:
        return Percentiles(p50=None, p95=None, p99=None)
    a = np.asarray(xs, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return Percentiles(p50=float(p50), p95=float(p95), p99=float(p99))


@dataclass(slots=True)
class _Tally:
    rounds: list[tuple[float, int, int, int, int, float]] = field(default_factory=list)
    first_token: dict[int, float] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0
    late: int = 0
    busy: list[tuple[float, float]] = field(default_factory=list)  # (t, ms) per verifier step
    waits: list[tuple[float, float]] = field(default_factory=list)  # (t, ms) per batch
    faults: dict[str, int] = field(default_factory=dict)  # connection faults, by kind


# Records of a connection's faults, counted in the summary's ``faults``.
FAULTS = (
    "protocol_error",
    "connection_error",
    "refused",
    "link_lost",
    "reconnected",
    "gave_up",
    "node_warning",
)


class Recorder:
    """A sink for node records: appends them to ``events.jsonl`` and keeps what the summary
    needs. ``path=None`` keeps records in memory only."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None
        self._tally: dict[str, _Tally] = defaultdict(_Tally)
        self.policy = ""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def for_node(self, name: str) -> Callable[[Mapping[str, Any]], None]:
        """A sink for server node ``name``'s records: each carries ``"node": name``."""
        return lambda rec: self({**rec, "node": name})

    def __call__(self, rec: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"policy": self.policy, **rec}, default=float) + "\n")
            self._file.flush()
        t = self._tally[self.policy]
        kind = rec.get("ev")
        if kind == "round":
            t.rounds.append(
                (
                    rec["t"],
                    rec["user"],
                    rec["drafted"],
                    rec["accepted"],
                    rec["committed"],
                    rec["round_ms"],
                )
            )
        elif kind == "first_token":
            t.first_token.setdefault(rec["user"], rec["t"])
            t.ttft_ms.append(rec["ttft_ms"])
        elif kind == "plan":
            t.plans.append(dict(rec))
        elif kind == "batch":
            t.batches += 1
            t.late += len(rec["late"])
            t.busy.append((rec["t"], float(rec.get("busy_ms", 0.0))))
            t.waits.append((rec["t"], float(rec.get("waited_ms", 0.0))))
        elif kind == "empty_slot":  # every member late: nothing verified, all waited
            t.late += len(rec["late"])
            t.waits.append((rec["t"], float(rec["waited_ms"])))
        elif kind == "prefill":
            t.busy.append((rec["t"], float(rec.get("busy_ms", 0.0))))
        elif kind in FAULTS:
            t.faults[kind] = t.faults.get(kind, 0) + 1
        elif kind == "leave" and "silent" in str(rec.get("why", "")):
            t.faults["dropped_silent"] = t.faults.get("dropped_silent", 0) + 1

    def summary(self, policy: str, *, t_end: float, users: int, verifiers: int = 1) -> Measured:
        """The result of one policy's run (see the module docstring for the definitions);
        ``verifiers``: how many verify, each planning and stepping on its own."""
        t = self._tally[policy]
        # Steady state starts when every user that ever started has its first token: a user
        # whose link never carried its prompt must not zero everyone else's throughput.
        t_start = max(t.first_token.values()) if t.first_token else t_end
        window = max(t_end - t_start, 1e-9)
        R = np.asarray(t.rounds, dtype=np.float64).reshape(-1, 6)
        steady = R[R[:, 0] >= t_start]
        per_user: dict[int, float] = defaultdict(float)
        for uid, c in zip(steady[:, 1].astype(int), steady[:, 4], strict=True):
            per_user[int(uid)] += float(c)
        drafted = R[:, 2]
        accepted = R[:, 3]
        with_draft = drafted > 0
        n_drafts = int(with_draft.sum())
        max_len = int(drafted.max()) if drafted.size else 0
        positions = np.arange(max_len)
        reach = (drafted[:, None] > positions[None, :]).sum(axis=0)
        kept = (accepted[:, None] > positions[None, :]).sum(axis=0)
        tpot = (R[:, 5] / R[:, 4]).tolist() if R.size else []
        busy_ms = sum(ms for at, ms in t.busy if t_start <= at <= t_end)
        waits = [ms for at, ms in t.waits if t_start <= at <= t_end and ms > 0]
        return Measured(
            throughput_tok_s=float(steady[:, 4].sum()) / window,
            per_user_tok_s={str(u): v / window for u, v in sorted(per_user.items())},
            tokens=int(R[:, 4].sum()) + len(t.ttft_ms),
            rounds=len(t.rounds),
            draft_tokens=int(drafted.sum()),
            accepted_tokens=int(accepted.sum()),
            acceptance_rate=float(accepted.sum() / drafted.sum()) if drafted.sum() else None,
            mean_accepted_len=1.0 + float(accepted[with_draft].sum()) / n_drafts
            if n_drafts
            else None,
            per_position_acceptance=tuple(
                float(k / r) if r else None for k, r in zip(kept, reach, strict=True)
            ),
            ttft_ms=percentiles(t.ttft_ms),
            tpot_ms=percentiles(tpot),
            batches=t.batches,
            late_drafts=t.late,
            edge_utilisation=min(1.0, busy_ms / 1e3 / window / verifiers),
            pipeline_bubbles=len(waits),
            bubble_s=sum(waits) / 1e3,
            replans=max(0, len(t.plans) - len({p.get("node") for p in t.plans})),
            steady_window_s=(t_start, t_end),
            users_started=min(len(t.first_token), users),
            faults=dict(sorted(t.faults.items())),
        )
