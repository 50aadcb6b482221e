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

from emu.errors import ConfigError, RemoteProtocolError, check_in
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
    """What one peer may cost the edge, and how nodes tell a dead link: the scenario's
    ``[limits]``, one type for the file and the nodes."""

    handshake_timeout_s: float = 5.0  # from accept to a complete Hello
    idle_timeout_s: float = 5.0  # silence after which a peer is dropped (0: never)
    heartbeat_ms: float = 1000.0  # the edge tells a peer it is alive after this much silence
    max_frame_bytes: int = 1 << 16  # every message but SessionStart
    max_session_frame_bytes: int = 1 << 20  # SessionStart (a prompt of up to 32768 tokens)
    max_connections: int = 0  # open at once, handshake or not; 0: twice the users, plus 16
    messages_per_s: float = 500.0  # per connection, with a burst of one second's worth
    allow_joins: bool = False  # accept user ids the scenario does not name
    max_known_ids: int = 1024  # joiners' priors kept, the oldest absent ones forgotten first
    reconnect_give_up_s: float = 30.0  # a user without a working link this long stops

    def __post_init__(self) -> None:
        check_in(
            "limits.handshake_timeout_s", self.handshake_timeout_s, 0.01, 3600, "in [0.01, 3600]"
        )
        check_in("limits.idle_timeout_s", self.idle_timeout_s, 0, 3600, "in [0, 3600] (0: never)")
        check_in("limits.heartbeat_ms", self.heartbeat_ms, 0, 3.6e6, "in [0, 3.6e6] (0: never)")
        if self.idle_timeout_s and not 0 < self.heartbeat_ms < 1e3 * self.idle_timeout_s / 2:
            raise ConfigError(
                "limits.heartbeat_ms must be > 0 and under half of limits.idle_timeout_s "
                f"({500 * self.idle_timeout_s:g} ms) while the idle timeout is on, "
                f"got {self.heartbeat_ms!r}"
            )
        check_in("limits.max_frame_bytes", self.max_frame_bytes, 1024, 1 << 24, "in [1024, 2^24]")
        check_in(
            "limits.max_session_frame_bytes", self.max_session_frame_bytes,
            self.max_frame_bytes, 1 << 26, "in [limits.max_frame_bytes, 2^26]",
        )  # fmt: skip
        check_in("limits.max_connections", self.max_connections, 0, 1e6, "in [0, 1e6] (0: auto)")
        check_in("limits.messages_per_s", self.messages_per_s, 0, 1e7, ">= 0 (0: unlimited)")
        check_in("limits.max_known_ids", self.max_known_ids, 0, 1e7, "in [0, 1e7]")
        check_in("limits.reconnect_give_up_s", self.reconnect_give_up_s, 0, 1e6, "in [0, 1e6]")
        beats_per_s = 1e3 / self.heartbeat_ms if self.heartbeat_ms else 0.0
        if self.messages_per_s and 4 * beats_per_s > self.messages_per_s:
            raise ConfigError(
                f"limits.messages_per_s must allow four times the heartbeats (1000 / "
                f"limits.heartbeat_ms = {beats_per_s:g} a second), "
                f"got {self.messages_per_s!r}"
            )

    def connections(self, users: int) -> int:
        """The connections the edge keeps open at once for ``users`` users."""
        return self.max_connections or 2 * users + 16


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
