"""What the edge checks of a peer before trusting it: its claimed device, and its pace.

Layer: pure (no I/O, no clock: times are passed in). A Hello's device profile reaches the planner
only through ``check_device`` (messages are checked by ``nodes.protocol``, token ids against the
model's vocabulary by the edge); a value out of range is a RemoteProtocolError naming the field,
the value and the rule, which closes that peer's connection and nobody else's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from emu.errors import RemoteProtocolError
from nodes.protocol import ErrorCode

__all__ = ["DEVICE_RANGES", "Limits", "RateLimit", "check_device"]

# What a Hello's device profile may say, and the range of each: a joiner's prior is built from
# these (its acceptance, context, link time both ways per round, and drafting time per token).
DEVICE_RANGES: Mapping[str, tuple[float, float]] = {
    "alpha": (0.01, 0.99),
    "prefix_len": (0, 1 << 20),
    "comm_ms": (0.0, 60_000.0),
    "draft_ms_per_token": (0.0, 60_000.0),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one peer may cost the edge (``[limits]`` in the scenario; the defaults are its)."""

    handshake_timeout_s: float = 5.0  # from accept to a complete Hello
    idle_timeout_s: float = 5.0  # silence after which a peer is dropped (0: never)
    heartbeat_ms: float = 1000.0  # the edge tells a peer it is alive after this much silence
    max_frame_bytes: int = 1 << 16  # every message but SessionStart
    max_session_frame_bytes: int = 1 << 20  # SessionStart (a prompt of up to 32768 tokens)
    max_connections: int = 64  # open at once, handshake or not
    messages_per_s: float = 500.0  # per connection, with a burst of one second's worth
    allow_joins: bool = False  # accept user ids the scenario does not name
    max_known_ids: int = 1024  # joiners' priors kept, the oldest absent ones forgotten first


def check_device(device: Mapping[str, float]) -> dict[str, float]:
    """The device profile a Hello carries, every key known and every value in range."""
    out = {}
    for key, value in device.items():
        if key not in DEVICE_RANGES:
            raise RemoteProtocolError(
                f"Hello.device[{key!r}] is not one of {', '.join(DEVICE_RANGES)}",
                code=ErrorCode.MALFORMED,
            )
        lo, hi = DEVICE_RANGES[key]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise RemoteProtocolError(
                f"Hello.device[{key!r}] must be in [{lo:g}, {hi:g}], got {value!r}",
                code=ErrorCode.MALFORMED,
            )
        out[key] = float(value)
    return out


@dataclass(slots=True)
class RateLimit:
    """A token bucket: ``rate`` messages a second, bursts of one second's worth (at least one
    message)."""

    rate: float
    _tokens: float | None = field(default=None, init=False)
    _at: float = field(default=0.0, init=False)

    def allow(self, now: float) -> bool:
        """Take one message's token at time ``now`` [s]; False if the peer is over its rate."""
        if self.rate <= 0:
            return True
        if self._tokens is None:  # the first message: a full bucket
            self._tokens, self._at = max(self.rate, 1.0), now
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
