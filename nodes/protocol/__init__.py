"""The user-edge protocol, sans I/O: messages, msgpack framing, one state machine per role.

Layer: pure (nodes.protocol): no sockets, no clock, no randomness; the trio shells in
``nodes/`` feed it bytes and write the bytes it returns.
"""

from nodes.protocol.connection import DEFAULT_MAX_FRAME, NEED_DATA, Connection, Role, State
from nodes.protocol.events import (
    MAX_DRAFT_TOKENS,
    MAX_PROMPT_TOKENS,
    PROTOCOL_VERSION,
    Bye,
    ClockEcho,
    ClockProbe,
    Closed,
    Draft,
    Error,
    ErrorCode,
    Event,
    Heartbeat,
    Hello,
    PlanUpdate,
    Redirect,
    Report,
    Resume,
    SessionStart,
    Verdict,
    Welcome,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_DRAFT_TOKENS",
    "MAX_PROMPT_TOKENS",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Bye",
    "ClockEcho",
    "ClockProbe",
    "Closed",
    "Connection",
    "Draft",
    "Error",
    "ErrorCode",
    "Event",
    "Heartbeat",
    "Hello",
    "PlanUpdate",
    "Redirect",
    "Report",
    "Resume",
    "Role",
    "SessionStart",
    "State",
    "Verdict",
    "Welcome",
]
