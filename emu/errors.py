"""Error hierarchy shared by every layer.

A leaf module: it imports nothing, so every layer (the pure packages included) may import it.
Each subclass says whose fault the error is; messages name the value and the rule.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DraftnetError",
    "Infeasible",
    "LocalProtocolError",
    "PeerGone",
    "RemoteProtocolError",
    "ShapingError",
    "check_in",
]


class DraftnetError(Exception):
    """Base of every error draftnet raises on purpose."""


class ConfigError(DraftnetError):
    """The user's input (scenario file, flag, argument) breaks a rule. Exit status 2."""


class Infeasible(DraftnetError):
    """The problem as posed has no solution (e.g. no user fits in the edge's memory)."""


class LocalProtocolError(DraftnetError):
    """We tried to do something the protocol forbids: a bug on our side."""


class RemoteProtocolError(DraftnetError):
    """The peer sent something the protocol forbids: its fault, not ours.

    ``code`` is the protocol's error code to send back before closing (1: malformed).
    """

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = int(code)


class PeerGone(DraftnetError):
    """The peer disconnected or stopped answering."""


class ShapingError(DraftnetError):
    """A link could not be shaped as configured."""


def check_in(where: str, value: float, lo: float, hi: float, rule: str) -> None:
    """ConfigError naming the field ``where``, the value and the rule, unless lo <= value <= hi."""
    if not lo <= value <= hi:
        raise ConfigError(f"{where} must be {rule}, got {value!r}")
