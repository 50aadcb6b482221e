"""What a shaped link is told to follow, as a type: ``LinkSpec`` for one direction, ``LinkPair``
for a user's two, ``ServerLink`` for one direction between two server nodes. The shaper
processes read it as JSON (``config``), the form documented in ``emu.shaping.sources``.

Layer: emu (shaping); no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from channel_models.link import LinkState

__all__ = ["LinkPair", "LinkSpec", "SeriesRef", "ServerLink"]


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """One user's series in one direction of a ``linkstates.npz`` (``draftnet channel``)."""

    npz: str
    prefix: str  # "up" or "down"
    user: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSpec:
    """One direction of a link: a fixed state or a radio series (exactly one), stretched by
    ``time_scale`` for a run on a slowed clock. The userspace shaper also takes a Mahimahi
    ``trace`` (delivery opportunities) and Gilbert-Elliott burst loss, which ``tc`` cannot
    give."""

    state: LinkState | None = None
    series: SeriesRef | None = None
    trace: str = ""
    gilbert_elliott: Mapping[str, float] | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if (self.state is None) == (self.series is None):
            raise ValueError("a link follows a state or a series, exactly one of them")
        if self.time_scale < 1.0:
            raise ValueError(f"time_scale must be >= 1, got {self.time_scale!r}")

    @classmethod
    def fixed(cls, **state: float) -> LinkSpec:
        return cls(state=LinkState(**state))

    def scaled(self, time_scale: float) -> LinkSpec:
        return replace(self, time_scale=time_scale)

    def config(self) -> dict[str, Any]:
        """The shaper processes' form: ``{"state": {...}} | {"series": {...}}`` and options."""
        out: dict[str, Any] = {}
        if self.state is not None:
            out["state"] = {k: v for k, v in asdict(self.state).items() if v}
        if self.series is not None:
            out["series"] = asdict(self.series)
        if self.trace:
            out["trace"] = self.trace
        if self.gilbert_elliott:
            out["gilbert_elliott"] = dict(self.gilbert_elliott)
        if self.time_scale != 1.0:
            out["time_scale"] = self.time_scale
        return out


@dataclass(frozen=True, slots=True)
class LinkPair:
    """A user's link both ways."""

    up: LinkSpec
    down: LinkSpec

    @classmethod
    def both(cls, spec: LinkSpec) -> LinkPair:
        return cls(spec, spec)

    def scaled(self, time_scale: float) -> LinkPair:
        return LinkPair(self.up.scaled(time_scale), self.down.scaled(time_scale))

    def config(self) -> dict[str, dict[str, Any]]:
        return {"up": self.up.config(), "down": self.down.config()}


@dataclass(frozen=True, slots=True)
class ServerLink:
    """One direction of a link between two server nodes (a fronthaul, a WAN): what leaves
    ``src`` for ``dst`` follows ``spec``."""

    src: str
    dst: str
    spec: LinkSpec

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"

    def scaled(self, time_scale: float) -> ServerLink:
        return ServerLink(self.src, self.dst, self.spec.scaled(time_scale))
