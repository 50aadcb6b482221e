"""The systems draftnet reproduces, in one registry: what each supplies to a deployment of it.

Layer: pure (nodes.core). A system names the server roles its deployments may have, its
verifier's batch scheduler and its length controller (each made from the scenario's
``[runtime]``), and its planning policies (those of the planner's registry that say they are
its own; ``emu.planner.policies``). A deployment (``emu.deploy.deployment``) takes all of it
from its system, and no runner or node treats a system by its name. The heterogeneous-edge
system's nodes (``nodes.hetnet``) run an offline workload of their own, simulated by
``emu.runners.sim_hetnet`` and emulated by ``emu.runners.emulate_hetnet``; they do not deploy
through a Deployment, so it has no scheduler here. DSD will register beside them (issue 18).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.planner.policies import policy_names
from nodes.core.runtime import RuntimeConfig
from nodes.core.schedule import BatchScheduler, LengthController, PlanLengths

__all__ = ["System", "get_system", "register_system", "system_names"]


@dataclass(frozen=True, slots=True)
class System:
    name: str
    about: str
    roles: tuple[str, ...]  # the server nodes' roles a deployment of it may have
    # Its verifier's batch scheduler and length controller; None while its nodes are not
    # built (it is planned by ``draftnet solve`` alone).
    scheduler: Callable[[RuntimeConfig], BatchScheduler] | None = None
    lengths: Callable[[RuntimeConfig], LengthController] | None = None

    @property
    def runs(self) -> bool:
        """Whether its nodes deploy through a Deployment, so ``draftnet sim`` and ``run`` can
        deploy it that way."""
        return self.scheduler is not None and self.lengths is not None

    @property
    def policies(self) -> tuple[str, ...]:
        """Its planning policies, the default first."""
        return policy_names(self.name)

    def check_policy(self, policy: str, *, where: str) -> None:
        """ConfigError unless ``policy`` is one of this system's."""
        if policy not in self.policies:
            raise ConfigError(
                f"{where} must be one of {self.name}'s policies ({', '.join(self.policies)}), "
                f"got {policy!r}"
            )


_REGISTRY: dict[str, System] = {}


def register_system(system: System) -> System:
    if system.name in _REGISTRY:
        raise ValueError(f"system {system.name!r} is registered already")
    _REGISTRY[system.name] = system
    return system


def system_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_system(name: str, *, where: str = "deployment.system") -> System:
    """The named system; ConfigError naming ``where`` and the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"{where} must be one of {', '.join(_REGISTRY)}, got {name!r}") from None


def _staged_pipeline(runtime: RuntimeConfig) -> BatchScheduler:
    return runtime.pipeline


def _plan_lengths(_runtime: RuntimeConfig) -> LengthController:
    return PlanLengths()


register_system(
    System(
        name="dipsd",
        about="DiP-SD: users draft on their devices; one verifier per edge runs a staged "
        "pipeline of batches with deadlines, drafting the plan's lengths",
        roles=("verifier", "router"),
        scheduler=_staged_pipeline,
        lengths=_plan_lengths,
    )
)

register_system(
    System(
        name="hetnet",
        about="heterogeneous edge: users upload prompts over a shared band to a small cell "
        "that drafts for batches of them; a macro cell verifies over the fronthaul",
        roles=("drafter", "verifier"),
    )
)

register_system(
    System(
        name="dsd",
        about="distributed speculative decoding for edge-cloud serving: many drafters, a "
        "router, many verifiers that batch their drafts; the window policies choose each "
        "draft's length",
        roles=("drafter", "router", "verifier"),
    )
)
