"""How a node turns a backend's compute time into time on its clock.

Layer: nodes (trio). A backend reports ``compute_ms``, the time its work stands for (from the
cost model or a profile); ``wall_ms`` is what the call really took on this host.

- ``virtual``: sleep the modelled time (the simulation's clock does not move while code runs).
- ``profile``: pad the step to the modelled time; a step that took longer is an overrun.
- ``real``: compute takes what it takes.

A time scale ``s`` >= 1 gives a slow host headroom: the emulation's nodes run on a clock that
ticks ``s`` times slower than the wall (``emu.runners.node.SharedClock``), so every modelled
time, and every result read off that clock, is in modelled units while each takes ``s`` times as
long on the wall. The pacer is told ``scale = s`` so that it can put a step's wall time (what
the host really took) on that clock: ``wall_ms / s``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

__all__ = ["REAL_CLOCK_LEAD_S", "Pacer", "sleep_until"]

# trio's timers on a real clock wake up to 1 ms late (epoll counts whole milliseconds).
REAL_CLOCK_LEAD_S = 0.001


async def sleep_until(deadline: float, *, lead_s: float = 0.0) -> None:
    """``trio.sleep_until``, woken ``lead_s`` early and the rest slept precisely (nanosleep):
    on a real clock, ``lead_s = REAL_CLOCK_LEAD_S`` meets the deadline to well under a
    millisecond at the cost of a sub-millisecond stall of the event loop."""
    await trio.sleep_until(deadline - lead_s)
    late = deadline - trio.current_time()
    if late > 0:  # in the clock's seconds; a scaled clock's are longer on the wall
        time.sleep(late * getattr(trio.lowlevel.current_clock(), "scale", 1.0))


_MODES = ("virtual", "profile", "real")


@dataclass(slots=True)
class Pacer:
    mode: str = "virtual"
    scale: float = 1.0
    overruns: int = 0
    busy_ms: float = 0.0
    lead_s: float = 0.0  # see sleep_until: REAL_CLOCK_LEAD_S on a real clock, 0 on a virtual one

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"timing must be one of {', '.join(_MODES)}, got {self.mode!r}")
        if not self.scale > 0:
            raise ValueError(f"time scale must be > 0, got {self.scale!r}")

    async def pace(self, compute_ms: float, wall_ms: float = 0.0) -> None:
        """Let the step's time pass on this node's clock (``wall_ms``: what it took here)."""
        target = compute_ms
        wall_ms = wall_ms / self.scale  # on this node's clock
        self.busy_ms += target if self.mode != "real" else wall_ms
        if self.mode == "virtual":
            await trio.sleep(target / 1000.0)
        elif self.mode == "profile":
            # A step the model says is free (a warm-start prefill) pads nothing and is no
            # overrun; any other step that took longer than its profile is one.
            if target > 0 and wall_ms > target:
                self.overruns += 1
            pad = max(0.0, target - wall_ms) / 1000.0
            await sleep_until(trio.current_time() + pad, lead_s=self.lead_s)
        else:
            await trio.lowlevel.checkpoint()
