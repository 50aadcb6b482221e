"""The scenario's ``[faults]``: checked against the deployment, refused by the simulation, and
turned into a timeline the emulation's runner follows (``emu.runners.faults``)."""

from __future__ import annotations

from typing import Any

import pytest

from emu.errors import ConfigError
from emu.runners.faults import Injector, timeline
from emu.scenario import load_scenario


def _faults(**kw: Any) -> Any:
    return load_scenario(overrides={f"faults.{k}": v for k, v in kw.items()}).faults


def test_the_timeline_cuts_restores_kills_and_restarts_in_time_order() -> None:
    f = _faults(
        outages=[{"user": 1, "at_s": 2.0, "for_s": 3.0}],
        kills=[{"node": "edge", "at_s": 4.0, "restart_after_s": 0.5}, {"node": "u0", "at_s": 1.0}],
    )
    assert [(a.at_s, a.kind, a.target) for a in timeline(f)] == [
        (1.0, "kill", "u0"),
        (2.0, "cut", "u1"),
        (4.0, "kill", "edge"),
        (4.5, "restart", "edge"),
        (5.0, "restore", "u1"),
    ]
    acted: list[tuple[str, str]] = []
    inj = Injector(f, lambda kind, target: acted.append((kind, target)))
    inj.due(0.5)
    assert acted == [] and inj.next_at() == 1.0
    inj.due(4.2)
    assert acted == [("kill", "u0"), ("cut", "u1"), ("kill", "edge")]
    # The edge will be started again: no death; u0 will not: its death counts.
    assert inj.restarting == {"edge"} and inj.cut == {"u1"}
    inj.due(4.6)
    assert inj.restarting == set() and [d["kind"] for d in inj.done][-1] == "restart"
    inj.undo()  # the run ends with u1's link still cut: restored for the next policy
    assert acted[-1] == ("restore", "u1") and inj.cut == set()


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        ({"outages": [{"user": 9, "at_s": 1.0, "for_s": 1.0}]},
         "faults.outages[0].user must be < users.count (4), got 9"),
        ({"outages": [{"user": 0, "at_s": 1.0, "for_s": 0.0}]},
         "faults.outages[0].for_s must be > 0, got 0.0"),
        ({"kills": [{"node": "cloud", "at_s": 1.0}]},
         "faults.kills[0].node must be a node of the deployment (edge, u0, u1, u2, u3), "
         "got 'cloud'"),
        ({"kills": [{"node": "u1", "at_s": 1.0, "restart_after_s": 0.0}]},
         "faults.kills[0].restart_after_s must be > 0, or < 0 for never, got 0.0"),
    ],
)  # fmt: skip
def test_a_fault_that_cannot_happen_is_one_line(faults: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError) as info:
        _faults(**faults)
    assert str(info.value) == said


def test_the_simulation_refuses_faults_it_does_not_model() -> None:
    from emu.runners.sim import simulate

    sc = load_scenario(overrides={"faults.kills": [{"node": "u0", "at_s": 1.0}]})
    with pytest.raises(ConfigError, match="faults are injected by draftnet run only"):
        simulate(sc, ["dipsd"])
    outage = {"user": 0, "at_s": 1.0, "for_s": 2.0}
    dsd = load_scenario(preset="dsd", overrides={"faults.outages": [outage]})
    with pytest.raises(ConfigError, match="faults are injected by draftnet run only"):
        simulate(dsd, ["awc"])


def test_other_systems_take_outages_of_their_users_and_no_kills() -> None:
    """Outages cut hetnet's task users and dsd's drafters; a kill is dipsd's only (its nodes go
    on with their sessions when started again)."""
    outage = {"user": 7, "at_s": 1.0, "for_s": 2.0}
    n = load_scenario(preset="dsd").dsd.drafters  # not users.count
    late = {**outage, "user": n - 1}
    assert load_scenario(preset="dsd", overrides={"faults.outages": [late]}).faults.outages
    with pytest.raises(ConfigError) as info:
        load_scenario(preset="dsd", overrides={"faults.outages": [{**outage, "user": n}]})
    assert str(info.value) == f"faults.outages[0].user must be < dsd.drafters ({n}), got {n}"
    assert load_scenario(preset="hetnet", overrides={"faults.outages": [outage]}).faults.outages
    for preset in ("dsd", "hetnet"):
        kill = {"faults.kills": [{"node": "u0", "at_s": 1.0}]}
        with pytest.raises(ConfigError) as info:
            load_scenario(preset=preset, overrides=kill)
        assert str(info.value).startswith("faults.kills are injected into dipsd's deployments only")
