"""The scenario's ``[faults]`` injected into a running emulation: a timeline of actions (a
user's link cut and restored, a node killed and started again) done as the workload's clock
passes each, and a record of what was done when.

Layer: emu (processes; the runner hands in how to act on its network and nodes). A link is
cut by a blackhole route in the user's host towards every server: what it sends goes nowhere,
so its TCP connection sees an outage, as when a phone walks out of range (taking its interface
down would take its routes with it for good). A node is killed with SIGKILL and started again
with its command as first given; the edge journals each verdict (``emu.runners.journal``), so an
edge started again hands every user its session back.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emu.scenario.faults import FaultsConfig
from nodes.core.verifier import user_node

__all__ = ["SERVERS_PREFIX", "FaultAction", "Injector", "cut_paths", "outage_injector", "timeline"]

SERVERS_PREFIX = "10.0.0.0/16"  # every server's subnet (topologies.star.server_subnet)


@dataclass(frozen=True, slots=True, order=True)
class FaultAction:
    at_s: float  # modelled seconds from the workload's start
    kind: str = field(compare=False)  # cut, restore, kill, restart
    target: str = field(compare=False)  # a node name (u<i> for a user's link)
    restarts: bool = field(default=False, compare=False)  # a kill whose node is started again


def timeline(faults: FaultsConfig) -> list[FaultAction]:
    """Every action, in time order."""
    out = []
    for o in faults.outages:
        out.append(FaultAction(o.at_s, "cut", user_node(o.user)))
        out.append(FaultAction(o.at_s + o.for_s, "restore", user_node(o.user)))
    for k in faults.kills:
        out.append(FaultAction(k.at_s, "kill", k.node, restarts=k.restart_after_s > 0))
        if k.restart_after_s > 0:
            out.append(FaultAction(k.at_s + k.restart_after_s, "restart", k.node))
    return sorted(out)


class Injector:
    """Does each action once its time has come (``due``), through ``act(kind, target)``, and
    keeps what it did (``done``: kind, target, at_s as planned, t_s as done)."""

    def __init__(self, faults: FaultsConfig, act: Callable[[str, str], None]) -> None:
        self._todo = timeline(faults)
        heapq.heapify(self._todo)
        self.act = act
        self.done: list[dict[str, Any]] = []
        self.restarting: set[str] = set()  # nodes killed that will be started again
        self.cut: set[str] = set()  # users whose link is cut now

    def next_at(self) -> float | None:
        return self._todo[0].at_s if self._todo else None

    def due(self, t_s: float) -> None:
        while self._todo and self._todo[0].at_s <= t_s:
            a = heapq.heappop(self._todo)
            if a.kind == "kill" and a.restarts:
                self.restarting.add(a.target)
            self.act(a.kind, a.target)
            if a.kind == "restart":
                self.restarting.discard(a.target)
            elif a.kind == "cut":
                self.cut.add(a.target)
            elif a.kind == "restore":
                self.cut.discard(a.target)
            self.done.append({"kind": a.kind, "target": a.target, "at_s": a.at_s, "t_s": t_s})

    def undo(self) -> None:
        """Restore every link still cut (the next policy runs on the same network)."""
        for target in sorted(self.cut):
            self.act("restore", target)
        self.cut.clear()


def cut_paths(host: Any, cut: bool) -> None:
    """Cut (or restore) a Mininet host's paths to every server: a blackhole route for the
    servers' subnet (the host's own subnet, more specific, still reaches its access point)."""
    host.cmd(f"ip route {'add' if cut else 'del'} blackhole {SERVERS_PREFIX}")


def outage_injector(faults: FaultsConfig, host_of: Callable[[int], Any]) -> Injector:
    """An Injector of ``faults``'s outages, each on the host of the user it names
    (``host_of(i)``): the runners of the systems whose nodes do not resume a session on a node
    started again, for which the scenario allows no kills."""

    def act(kind: str, target: str) -> None:
        if kind not in ("cut", "restore"):
            raise AssertionError(f"{kind} {target}: only outages here (FaultsConfig.check)")
        cut_paths(host_of(int(target.removeprefix("u"))), kind == "cut")

    return Injector(faults, act)
