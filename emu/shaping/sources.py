"""What a shaped link follows over time: a fixed state, or a user's radio series read back from
``linkstates.npz``. Shared by both shaping backends' processes.

Layer: emu (reads files). A link spec is ``{"state": {LinkState fields}}`` or ``{"series":
{"npz": path, "prefix": "up"|"down", "user": i}}``; the userspace shaper also takes ``trace``
(Mahimahi) and ``gilbert_elliott`` (burst loss), which ``tc`` cannot give. ``time_scale``
(default 1) stretches a state or series for a run on a slowed clock (``nodes.pacing``): at wall
time t the link is in its modelled state at t / s, with s times the delay and jitter and 1/s
of the rate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from channel_models.cell import LinkSeries
from channel_models.link import LinkState

__all__ = ["load_series", "needs_netem", "state_source", "stretch", "tc_refusal"]


def state_source(spec: dict[str, Any]) -> Callable[[float], LinkState]:
    """The link's state at ``t`` wall seconds after the shaper started."""
    s = float(spec.get("time_scale", 1.0))
    if "state" in spec:
        state = stretch(LinkState(**spec["state"]), s)
        return lambda _t: state
    timeline = _series(spec).timeline(int(spec["series"]["user"]))
    if s == 1.0:
        return timeline
    return lambda t: stretch(timeline(t / s), s)


def stretch(state: LinkState, s: float) -> LinkState:
    """A modelled state as it runs on a clock ``s`` times slower than the wall."""
    if s == 1.0:
        return state
    return LinkState(
        rate_bps=state.rate_bps / s,
        delay_ms=state.delay_ms * s,
        jitter_ms=state.jitter_ms * s,
        loss=state.loss,
    )


def _series(spec: dict[str, Any]) -> LinkSeries:
    return load_series(str(spec["series"]["npz"]), str(spec["series"]["prefix"]))


@functools.cache
def load_series(npz: str, pre: str) -> LinkSeries:
    """One direction of every user's series, read once per process (every link of a run, and
    both the netem check and the state source of each, read the same file)."""
    data = np.load(npz)
    tick = float(data["t_s"][1] - data["t_s"][0]) if data["t_s"].size > 1 else 1.0
    return LinkSeries(
        tick_s=tick,
        rate_bps=data[f"{pre}_rate_bps"],
        delay_ms=data[f"{pre}_delay_ms"],
        jitter_ms=data[f"{pre}_jitter_ms"],
        loss=np.minimum(data[f"{pre}_loss"], 0.999),  # a LinkState's loss is below 1
    )


def needs_netem(spec: dict[str, Any]) -> bool:
    """Whether the link ever has delay, jitter or loss (what HTB alone cannot give)."""
    if "state" in spec:
        st = LinkState(**spec["state"])
        return bool(st.delay_ms or st.jitter_ms or st.loss)
    s = _series(spec)
    u = int(spec["series"]["user"])
    return bool(np.any(s.delay_ms[u]) or np.any(s.jitter_ms[u]) or np.any(s.loss[u]))


def tc_refusal(spec: dict[str, Any], netem: bool) -> str | None:
    """Why the ``tc`` backend cannot shape this link (None when it can)."""
    if spec.get("trace"):
        return "trace-driven delivery (a Mahimahi trace) needs the userspace shaper"
    if spec.get("gilbert_elliott"):
        return "Gilbert-Elliott burst loss needs the userspace shaper"
    if not netem and needs_netem(spec):
        return (
            "its delay, jitter or loss needs netem, which this kernel lacks (Mininet would run "
            "such a link unshaped): use --shaping userspace"
        )
    return None
