"""The heterogeneous-edge system as a scenario: the preset, `draftnet solve`'s JSON, and bad
input refused in one line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from emu.errors import ConfigError
from emu.planner.hetnet.evaluate import HetnetPlan, evaluate
from emu.runners.solve import solve
from emu.scenario import load_scenario
from emu.sweep import InProcess, load_study, run_study
from emu.sweep.spec import expand
from tests.test_cli import ROOT, draftnet

LATENCY_KEYS = {"total", "mean", "p50", "p95", "p99", "makespan"}


def test_solve_json_has_the_documented_fields() -> None:
    r = draftnet("solve", "--preset", "hetnet", "--users", "24", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["system"], out["policy"], out["tasks"]) == ("hetnet", "hetnet", 24)
    assert set(out["latency_ms"]) >= LATENCY_KEYS
    assert set(out["baselines"]) == {"ad", "uniform_bandwidth", "max_batching", "fixed_length"}
    for b in out["baselines"].values():
        assert set(b["latency_ms"]) >= LATENCY_KEYS
    plan = out["plan"]
    assert sorted(k for b in plan["batches"] for k in b) == list(range(24))
    assert len(plan["spec_len"]) == len(plan["batches"])
    # Batch-ordered: each batch has the whole 10 MHz band in its turn.
    for batch in plan["batches"]:
        assert sum(plan["bandwidth_hz"][k] for k in batch) == pytest.approx(10e6)
    assert out["solve_ms"] > 0


@pytest.fixture(scope="module")
def solved() -> dict[str, object]:
    return solve(load_scenario(None, preset="hetnet", overrides={"users.count": 30}))


def test_the_reported_latencies_are_the_evaluators_of_the_reported_plan(solved: dict) -> None:
    sc = load_scenario(None, preset="hetnet", overrides={"users.count": 30})
    problem = sc.hetnet_problem()
    p = solved["plan"]
    plan = HetnetPlan(
        batches=tuple(tuple(b) for b in p["batches"]),
        spec_len=tuple(p["spec_len"]),
        bandwidth=p["bandwidth"],
    )
    ev = evaluate(problem, plan)
    assert solved["latency_ms"]["total"] == pytest.approx(ev.total_ms)
    assert solved["latency_ms"]["mean"] == pytest.approx(ev.total_ms / 30)
    assert solved["latency_ms"]["makespan"] == pytest.approx(max(ev.latency_ms))
    # The breakdown accounts for the whole of the mean latency, each part >= 0.
    parts = solved["breakdown_ms"]
    assert set(parts) == {"upload_wait", "draft", "fronthaul", "verify", "queue"}
    assert all(v >= -1e-9 for v in parts.values())
    assert math.fsum(parts.values()) == pytest.approx(solved["latency_ms"]["mean"])


def test_the_planner_improves_on_the_dp_it_starts_from(solved: dict) -> None:
    assert solved["latency_ms"]["total"] <= solved["dp"]["latency_ms"]["total"]
    gains = solved["gain_pct"]
    for key, b in solved["baselines"].items():
        expect = 100 * (1 - solved["latency_ms"]["total"] / b["latency_ms"]["total"])
        assert gains[key] == pytest.approx(expect)
    # AD is the target alone: every batch at length 0, slower than speculation here.
    assert gains["ad"] > 0


def test_listed_tasks_are_the_tasks() -> None:
    sc = load_scenario(ROOT / "scenarios/hetnet-starved-uplink.toml")
    problem = sc.hetnet_problem()
    assert problem.size == 8
    assert (problem.tasks[0].input_len, problem.tasks[0].distance_m) == (1024, 240.0)
    assert problem.tasks[2].alpha == 0.6 and problem.tasks[1].alpha == 0.75  # users.alpha
    assert problem.bandwidth_hz == 20e3
    assert (problem.fronthaul_bps, problem.fronthaul_latency_ms) == (10e9, 0.1)


def test_the_drawn_tasks_follow_the_seed() -> None:
    def tasks(seed: int) -> object:
        sc = load_scenario(None, preset="hetnet", overrides={"sim.seed": seed})
        return sc.hetnet_problem().tasks

    assert tasks(1) == tasks(1) and tasks(1) != tasks(2)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "hetnet.input_len=[1900, 2000]",
            r"hetnet.tasks \(drawn\)\[0\]: its prompt \(19\d\d\), output .* must fit the draft "
            r"model's context \(hetnet.draft_context 2048\)",
        ),
        ("hetnet.bandwidth_hz=0", r"hetnet.bandwidth_hz must be a finite number > 0, got 0"),
        ("hetnet.power_w=-1", r"hetnet.power_w must be a finite number > 0, got -1"),
        (
            "deployment.links=[{ends=['sbs','mbs'], rate_bps=0}]",
            r"deployment.links\[0\].rate_bps is hetnet's fronthaul rate and must be > 0, got 0",
        ),
        ("hetnet.max_batch=0", r"hetnet.max_batch must be an integer >= 1, got 0"),
        ("users.alpha=1.0", r"users.alpha \(the pair's acceptance\) must be in \(0, 1\), got 1.0"),
        (
            "deployment.links=[]",
            r"deployment.nodes\[1\] \(mbs\): no user reaches this verifier \(users dial sbs and "
            r"it has no link to it\); link sbs to it in deployment.links \(the fronthaul\)",
        ),
        (
            "hetnet.tasks=[{input_len=10, output_len=10}]",
            r"hetnet.tasks lists 1 tasks and users.count is 100: one task a user",
        ),
        ("hetnet.time_mode='flops'", r"hetnet.time_mode must be one of affine, roofline"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(setting: str, message: str) -> None:
    path, _, value = setting.partition("=")
    import tomllib

    with pytest.raises(ConfigError, match=message):
        load_scenario(None, preset="hetnet", overrides={path: tomllib.loads(f"v = {value}")["v"]})


def test_bad_input_exits_2_with_one_line() -> None:
    r = draftnet("solve", "--preset", "hetnet", "--set", "hetnet.bandwidth_hz=-5", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "hetnet.bandwidth_hz" in r.stderr


def test_a_drafter_is_not_a_dipsd_role() -> None:
    with pytest.raises(ConfigError, match=r"role must be one of verifier, router"):
        load_scenario(None, overrides={"deployment.nodes": [{"name": "sbs", "role": "drafter"}]})


def test_the_exact_policy_refuses_large_instances() -> None:
    sc = load_scenario(None, preset="hetnet", overrides={"users.count": 9})
    with pytest.raises(ConfigError, match=r"plans at most 8 tasks \(users.count\), got 9"):
        solve(sc, "hetnet-exact")
    sc = load_scenario(None, preset="hetnet", overrides={"users.count": 5})
    with pytest.raises(ConfigError, match=r"exact: 8772309 plans for 5 tasks and 9 lengths"):
        solve(sc, "hetnet-exact")


def test_the_reproduction_study_expands_and_a_list_valued_axis_runs(tmp_path: Path) -> None:
    """The built-in study: 22 points around the preset, 3 seeds each, every one validated;
    a study over a field that takes a [low, high] pair (output heterogeneity) runs at the
    solve level, each plan made once per case, and summarises by that pair; a plot against
    such a field is refused in one line."""
    study = load_study("hetnet")
    assert len(expand(study)) == 66 and study.level == "solve"
    (tmp_path / "s.toml").write_text(
        """
level = "solve"
policies = ["hetnet", "hetnet-uniform"]
seeds = [1]
[base]
preset = "hetnet"
[base.set]
"users.count" = 3
[axes]
"hetnet.output_len" = [[64, 64], [16, 112]]
"""
    )
    out = run_study(load_study(tmp_path / "s.toml"), tmp_path / "out", engine=InProcess())
    assert (out["ran"], out["failed"]) == (2, 0)
    with (tmp_path / "out" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["hetnet.output_len"], r["policy"]) for r in rows} == {
        (pair, policy)
        for pair in ("(64, 64)", "(16, 112)")
        for policy in ("hetnet", "hetnet-uniform")
    }
    with (tmp_path / "s.toml").open("a") as f:
        f.write('[[plots]]\nx = "hetnet.output_len"\ny = "latency_ms.mean"\n')
    with pytest.raises(ConfigError, match=r"plots\[0\].x 'hetnet.output_len' takes values"):
        load_study(tmp_path / "s.toml")


def test_the_planner_falls_back_to_the_target_alone_where_drafting_does_not_pay() -> None:
    """At acceptance 0.5 drafting costs more than it saves for some batches: the planner may
    give a batch length 0 (the target alone), so it never does worse than AD there."""
    out = solve(
        load_scenario(None, preset="hetnet", overrides={"users.count": 50, "users.alpha": 0.5})
    )
    assert out["gain_pct"]["ad"] >= 0
    assert 0 in out["plan"]["spec_len"]


def test_two_tiers_place_the_tasks_in_their_small_cells() -> None:
    radio = {"small_cells": 3, "spacing_m": 150.0, "shadowing_db": 8.0, "reuse": "shared"}
    over: dict[str, object] = {"users.count": 9, "hetnet.radio": radio}
    sc = load_scenario(None, preset="hetnet", overrides=over)
    problem = sc.hetnet_problem()
    assert problem.cells == 3
    assert all(t.gain_db is not None for t in problem.tasks)
    assert len(problem.interference_dbm_per_hz) == 3
    # The radio does not move the tasks' lengths: the same draw as without it.
    plain = load_scenario(None, preset="hetnet", overrides={"users.count": 9}).hetnet_problem()
    assert [t.input_len for t in problem.tasks] == [t.input_len for t in plain.tasks]
    out = solve(sc)
    assert out["small_cells"] == 3
    cells = out["plan"]["cell"]
    for batch, cell in zip(out["plan"]["batches"], cells, strict=True):
        assert {problem.tasks[k].cell for k in batch} == {cell}
    # Each cell's batches have its whole band in their turn.
    for batch in out["plan"]["batches"]:
        assert sum(out["plan"]["bandwidth_hz"][k] for k in batch) == pytest.approx(10e6)
    bad = over | {"hetnet.radio": radio | {"path_loss": "cost231"}}
    with pytest.raises(ConfigError, match=r"hetnet\.radio\.path_loss must be one of paper, umi"):
        load_scenario(None, preset="hetnet", overrides=bad)
