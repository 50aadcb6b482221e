"""What the edge's plans predicted for a measured window: each plan's prediction, weighted by
the time it was in force within the window. A window's throughput is the mix of the plans that
ran in it; the last plan alone is not what was measured when it came late in the window (a
re-plan 3.6 s into a 4 s window, for 3 ms links measured at 4.5, predicted 4% more than the
plan that ran the window)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def predicted_in(plans: Sequence[dict[str, Any]], window: Sequence[float]) -> float:
    """The time-weighted prediction [tok/s] of the edge's ``plan`` records (``t``,
    ``predicted_tok_s``, in time order) over ``window`` (start, end), on the records' clock."""
    start, end = window
    assert plans and plans[0]["t"] <= end, "no plan in force in the window"
    total = weight = 0.0
    for k, plan in enumerate(plans):
        since = max(float(plan["t"]), start)
        until = min(float(plans[k + 1]["t"]), end) if k + 1 < len(plans) else end
        if until > since:
            total += float(plan["predicted_tok_s"]) * (until - since)
            weight += until - since
    return total / weight
