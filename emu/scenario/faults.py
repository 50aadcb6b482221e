"""The scenario's ``[faults]``: what ``draftnet run`` does to a running deployment, and when
(modelled seconds from the workload's start), so that a study can measure a planner under
faults. The emulation's runner injects them (``emu.runners.faults``); the simulation does not
model them and refuses a scenario that has any.

    [faults]
    outages = [{user = 0, at_s = 5.0, for_s = 3.0}]         # the user's link carries nothing
                                                            # (hetnet: task 0; dsd: drafter 0)
    kills = [{node = "u1", at_s = 8.0, restart_after_s = 1.0},  # SIGKILL, then started again
             {node = "edge", at_s = 12.0}]                  # no restart_after_s: stays dead
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emu.errors import ConfigError

__all__ = ["FaultsConfig", "Kill", "Outage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outage:
    user: int
    at_s: float
    for_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    node: str
    at_s: float
    restart_after_s: float = -1.0  # < 0: the node stays dead


def _time(where: str, v: float, rule: str, ok: bool) -> None:
    if not (math.isfinite(v) and ok):
        raise ConfigError(f"{where} must be {rule}, got {v!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultsConfig:
    outages: tuple[Outage, ...] = ()
    kills: tuple[Kill, ...] = ()

    def __post_init__(self) -> None:
        for i, o in enumerate(self.outages):
            _time(f"faults.outages[{i}].at_s", o.at_s, ">= 0", o.at_s >= 0)
            _time(f"faults.outages[{i}].for_s", o.for_s, "> 0", o.for_s > 0)
            if o.user < 0:
                raise ConfigError(f"faults.outages[{i}].user must be >= 0, got {o.user}")
        for i, k in enumerate(self.kills):
            _time(f"faults.kills[{i}].at_s", k.at_s, ">= 0", k.at_s >= 0)
            _time(f"faults.kills[{i}].restart_after_s", k.restart_after_s, "> 0, or < 0 for never",
                  k.restart_after_s != 0)  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.outages or self.kills)

    def check(
        self, *, users: int, nodes: tuple[str, ...], system: str, users_are: str = "users.count"
    ) -> None:
        """Against the scenario: users (hetnet's tasks, dsd's drafters) and nodes that exist,
        and kills only where a node started again goes on."""
        if not self:
            return
        if self.kills and system != "dipsd":
            raise ConfigError(
                f"faults.kills are injected into dipsd's deployments only (a node started "
                f"again goes on with its sessions there; {system}'s nodes do not yet), got "
                f"{len(self.kills)} kills"
            )
        for i, o in enumerate(self.outages):
            if o.user >= users:
                raise ConfigError(
                    f"faults.outages[{i}].user must be < {users_are} ({users}), got {o.user}"
                )
        for i, k in enumerate(self.kills):
            if k.node not in nodes:
                raise ConfigError(
                    f"faults.kills[{i}].node must be a node of the deployment "
                    f"({', '.join(nodes)}), got {k.node!r}"
                )
