"""Parity of the runners: the same scenario and seed give the simulation, the emulation and
``solve`` the same plan, the same radio links and the same acceptance draws (ARCHITECTURE.md,
"One code path, three fidelity levels"). Checked on the code each runner runs, without
Mininet: the emulation's radio priors and the scenario its node processes load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from channel_models.cell import generate
from emu.deploy.runtime import (
    memo_planner,
    node_problem,
    node_scenario,
    synthetic_verifier,
    with_comm,
)
from emu.planner.stochastic import stochastic_evaluate
from emu.runners.emulate import radio_priors
from emu.runners.sim import simulate
from emu.runners.solve import solve
from emu.scenario import load_scenario, scenario_toml
from emu.scenario.streams import Streams
from emu.shaping.sources import load_series
from nodes.backends import VerifyItem


def _first_plan(events: Path) -> dict[str, object]:
    for line in events.read_text().splitlines():
        r = json.loads(line)
        if r.get("ev") == "plan":
            return dict(r)
    raise AssertionError("no plan recorded")


def test_sim_and_run_plan_the_default_scenario_identically(tmp_path: Path) -> None:
    sc = load_scenario(overrides={"models.kind": "synthetic", "sim.duration_s": 2.0})
    assert sc.network.model == "radio"  # the default: links from the radio model
    (tmp_path / "sim").mkdir()
    sim = simulate(sc, ["dipsd"], out_dir=tmp_path / "sim")["results"]["dipsd"]
    sim_plan = _first_plan(tmp_path / "sim" / "events.jsonl")

    # What `run` does before it starts a host: the radio series and the users' priors, then the
    # scenario each node process loads.
    (tmp_path / "run").mkdir()
    npz, comm, noise = radio_priors(sc, tmp_path / "run")
    assert npz is not None and comm is not None
    assert min(comm) > 2 * sc.users.comm_ms  # the radio's priors, not the file's 3 ms
    node_file = tmp_path / "run" / "scenario.toml"
    mine = node_scenario(sc, policy="dipsd", time_scale=1.0, comm_ms=comm, comm_noise=noise)
    node_file.write_text(scenario_toml(mine))
    edge_problem = node_problem(load_scenario(node_file))
    run_problem = with_comm(sc.problem(), comm, noise)  # the run's prediction
    assert edge_problem == run_problem

    plan = memo_planner("dipsd")(edge_problem, None)
    assert [list(b) for b in plan.batches] == sim_plan["batches"]
    assert list(plan.draft_len) == sim_plan["draft_len"]
    predicted = stochastic_evaluate(run_problem, plan).throughput_tok_s
    assert predicted == sim["predicted_tok_s"]
    assert solve(sc)["expected_tok_s"] == predicted  # solve plans on the same radio series
    # The edge's first plan knows the radio's noise too: its quantiles, not the mean alone.
    assert all(u.comm_noise is not None for u in edge_problem.users)
    edge_expects = stochastic_evaluate(edge_problem, plan).throughput_tok_s
    assert abs(edge_expects / predicted - 1) < 0.01
    means_only = stochastic_evaluate(with_comm(sc.problem(), comm), plan).throughput_tok_s
    assert abs(means_only / predicted - 1) > 0.01  # so the noise is worth carrying

    # The same radio links: the series the shaper follows is the trace the simulation draws.
    trace = generate(sc.radio, sc.users.count, sc.sim.duration_s, Streams(sc.sim.seed).radio())
    for d in ("up", "down"):
        series = load_series(npz, d)
        for field in ("rate_bps", "delay_ms", "jitter_ms", "loss"):
            np.testing.assert_array_equal(getattr(series, field), getattr(getattr(trace, d), field))


def test_a_users_acceptances_do_not_depend_on_who_shares_its_batches() -> None:
    """Each user draws from its own stream, so the simulation and the emulation (whose batches
    can differ in membership and order under real jitter) draw the same acceptances."""
    sc = load_scenario(overrides={"models.kind": "synthetic", "users.count": 3})
    problem = sc.problem()

    def accepted(batches: list[list[int]]) -> dict[int, list[tuple[int, int]]]:
        v = synthetic_verifier(problem, Streams(sc.sim.seed), warm_start=True)
        got: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
        for batch in batches:
            items = [VerifyItem(user=u, base_len=512, tokens=(1,) * 8) for u in batch]
            outs, _ = v.verify(items)
            for u, o in zip(batch, outs, strict=True):
                got[u].append((o.accepted, o.token))
        return got

    together = accepted([[0, 1, 2]] * 20)
    apart = accepted([[2], [1, 0]] * 20)
    assert together == apart
    assert len({k for k, _ in together[0]}) > 1  # real draws, not a constant
    assert together[0] != together[1]  # and each user its own
