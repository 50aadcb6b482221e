"""What the edge learns about each user from what it observes: acceptance, draft time, link.

Layer: pure (no I/O, no clock: callers pass the observations). Windows are bounded, so
memory stays flat however long a run lasts.

Acceptance is the maximum-likelihood per-token rate of the truncated geometric model: a round
that drafted l tokens and kept k < l is k successes and one failure; k = l is l successes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["UserEstimate"]

WINDOW = 64


@dataclass(slots=True)
class UserEstimate:
    """Sliding-window estimates for one user; ``None`` until there is a sample."""

    successes: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    trials: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    draft_ms_per_token: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    comm_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def observe_round(self, drafted: int, accepted: int) -> None:
        if drafted > 0:
            self.successes.append(accepted)
            self.trials.append(accepted + (1 if accepted < drafted else 0))

    def observe_draft(self, tokens: int, draft_ms: float, gap_ms: float) -> None:
        """A draft of ``tokens`` that took ``draft_ms`` on the device arrived ``gap_ms`` after
        the verdict that asked for it; the rest of the gap is the link, both ways."""
        if tokens > 0:
            self.draft_ms_per_token.append(draft_ms / tokens)
            self.comm_ms.append(max(0.0, gap_ms - draft_ms))

    @property
    def rounds(self) -> int:
        return len(self.trials)

    def alpha(self) -> float | None:
        t = sum(self.trials)
        return None if t == 0 else float(np.clip(sum(self.successes) / t, 0.01, 0.99))

    def draft_ms(self) -> float | None:
        return float(np.mean(self.draft_ms_per_token)) if self.draft_ms_per_token else None

    def comm(self, quantile: float | None = None) -> float | None:
        """Mean link time per round [ms], or the given quantile of it."""
        if not self.comm_ms:
            return None
        a = np.fromiter(self.comm_ms, dtype=np.float64)
        return float(a.mean() if quantile is None else np.quantile(a, quantile))
