"""Lab mode's door for the roles of the systems whose protocols have no handshake of their own
(the heterogeneous edge's, DSD's): the first message on every connection a lab node opens.

Layer: pure (nodes.protocol): no I/O, no clock, no randomness.

A node opens a connection (over TLS, ``emu.lab.tls``) and sends ``Join``: the node it is, its
token where the lab uses tokens, the channel it opens (what the server hands the stream to
next: ``records`` for the collector, or one of the server's own, e.g. DSD's ``route``), and
its process's ``epoch``. The server answers ``Joined`` and from then on the stream speaks the
channel's protocol; or it records why it refused and closes. On the ``records`` channel the
node measures its clock against the collector's (``ClockProbe``, ``ClockEcho``, as a DiP-SD
user does against its edge) and streams its records (``Report``), numbered per epoch
(``nodes.core.reports``), so the collector files each once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nodes.protocol.events import ClockEcho, ClockProbe, Event, Report, _fail, _int
from nodes.protocol.frames import TypedFrames

__all__ = ["CHANNELS", "LAB_TYPES", "Join", "Joined", "LabFrames"]

# What a Join may open: the collector's records, DSD's routing and verification, the
# heterogeneous edge's uplink and fronthaul.
CHANNELS = ("records", "route", "verify", "queues", "uplink", "fronthaul")
MAX_NAME = 64
MAX_TOKEN = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class Join(Event):
    """Node to server, first on every connection."""

    code: ClassVar[int] = 61
    node: str
    channel: str
    epoch: int
    token: str = ""

    def validate(self) -> None:
        if type(self.node) is not str or not 0 < len(self.node) <= MAX_NAME:
            _fail("node", self.node, f"a name of 1 to {MAX_NAME} characters")
        if self.channel not in CHANNELS:
            _fail("channel", self.channel, f"one of {', '.join(CHANNELS)}")
        _int("epoch", self.epoch, 0, 2**31 - 1)
        if type(self.token) is not str or len(self.token) > MAX_TOKEN:
            _fail("token", self.token, f"a string of <= {MAX_TOKEN} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined(Event):
    """Server to node: admitted as ``node`` (the name its certificate or token proved)."""

    code: ClassVar[int] = 62
    node: str

    def validate(self) -> None:
        if type(self.node) is not str or not 0 < len(self.node) <= MAX_NAME:
            _fail("node", self.node, f"a name of 1 to {MAX_NAME} characters")


LAB_TYPES: dict[int, type[Event]] = {
    cls.code: cls for cls in (Join, Joined, ClockProbe, ClockEcho, Report)
}


class LabFrames(TypedFrames[Event]):
    """Framing of the door's messages and the records channel's (``TypedFrames``)."""

    def __init__(self, *, max_frame: int = 1 << 20) -> None:
        super().__init__(LAB_TYPES, depth=1, max_frame=max_frame)
