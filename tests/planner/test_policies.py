"""Policies: feasibility and ordering properties over random heterogeneous instances."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import ConfigError
from emu.planner import Plan, Problem, baselines_of, evaluate, get_policy, plan_for, policy_names
from emu.planner.assign import assign_batches
from emu.planner.baselines import ad, ad_batch
from emu.planner.cost import Tableau
from emu.planner.dipsd import min_feasible_batches
from emu.planner.exact import exact
from tests.planner.conftest import paper_problem, random_problem

FAST_POLICIES = [p for p in policy_names("dipsd") if get_policy(p).max_users is None]


def _thr(policy: str, p: Problem) -> float:
    return evaluate(p, plan_for(policy, p)).throughput_tok_s


instances = st.builds(
    lambda seed, m, lmax: random_problem(np.random.default_rng(seed), m, lmax),
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(1, 20),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_every_plan_is_feasible(p: Problem) -> None:
    for policy in FAST_POLICIES:
        plan = plan_for(policy, p)
        plan.check(p)  # each user in exactly one batch, lengths in [0, l_max]
        ev = evaluate(p, plan)
        assert ev.feasible, policy
        assert all(mem <= p.edge.memory_bytes for mem in ev.memory_bytes)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_dipsd_never_worse_than_fixed_or_ad_batch(p: Problem) -> None:
    best = _thr("dipsd", p)
    assert best >= _thr("fixed", p) * (1 - 1e-9)
    assert best >= _thr("ad-batch", p) * (1 - 1e-9)
    assert best >= _thr("ad", p) * (1 - 1e-9)


def test_memory_bound_is_held_when_it_binds() -> None:
    # 60 users at prefix 512 cannot share one forward: at most 49 fit beside the weights.
    p = paper_problem(users=60)
    for policy in ("ad-batch", "dipsd", "fixed"):
        plan = plan_for(policy, p)
        assert max(len(b) for b in plan.batches) <= 49, policy
        assert evaluate(p, plan).feasible


def test_ad_is_one_token_per_forward_and_ad_batch_packs_by_memory() -> None:
    p = paper_problem(users=60)
    one = 1.2077e-11 * 1310720 * (10240 + 512 + 1 + 25600) + 95.1074
    assert evaluate(p, ad(p)).throughput_tok_s == pytest.approx(1000 / one)
    assert [len(b) for b in ad_batch(p).batches] == [49, 11]


def test_dipsd_beats_ad_batch_at_the_paper_point() -> None:
    p = paper_problem()
    assert _thr("dipsd", p) > 1.3 * _thr("ad-batch", p)
    assert _thr("dipsd", p) > 7 * _thr("ad", p)


def test_low_acceptance_falls_back_to_batched_autoregression() -> None:
    # Drafting is not worth its latency at a = 0.05: the plan should not draft at all.
    p = paper_problem(users=6, alpha=0.05)
    plan = plan_for("dipsd", p)
    assert set(plan.draft_len) == {0}
    assert _thr("dipsd", p) == pytest.approx(_thr("ad-batch", p))


def test_published_variant_is_a_valid_plan_and_improved_is_no_worse() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        p = random_problem(rng, 6)
        assert _thr("dipsd", p) >= _thr("dipsd-published", p) * (1 - 1e-9)


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"policy must be one of .* got 'greedy'"):
        plan_for("greedy", paper_problem())


def _brute_force(p: Problem) -> float:
    """Every set partition of the users times every draft-length vector."""

    def partitions(items: list[int]) -> list[list[list[int]]]:
        if not items:
            return [[]]
        first, rest = items[0], items[1:]
        out = []
        for part in partitions(rest):
            out.append([[first], *part])
            for i in range(len(part)):
                out.append([*part[:i], [first, *part[i]], *part[i + 1 :]])
        return out

    best = 0.0
    M = p.size
    for part in partitions(list(range(M))):
        for lens in itertools.product(range(p.max_draft_len + 1), repeat=M):
            plan = Plan(batches=tuple(tuple(b) for b in part), draft_len=lens)
            ev = evaluate(p, plan)
            if ev.feasible:
                best = max(best, ev.throughput_tok_s)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_agrees_with_brute_force_on_tiny_instances(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = random_problem(rng, users=int(rng.integers(1, 4)), max_draft_len=4)
    assert _thr("exact", p) == pytest.approx(_brute_force(p), rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_milp_alone_finds_the_optimum_without_a_warm_start(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    p = random_problem(rng, users=3, max_draft_len=4)
    cold = evaluate(p, exact(p, warm_start=False)).throughput_tok_s
    assert cold == pytest.approx(_brute_force(p), rel=1e-6)


def test_exact_refuses_large_instances() -> None:
    with pytest.raises(ConfigError, match=r"users\.count must be <= 10 for policy exact"):
        plan_for("exact", paper_problem(users=11))


def test_no_batch_count_below_the_memory_bound_is_feasible() -> None:
    # 200 users at prefix 512, at most 49 per forward: fewer than 5 batches cannot hold them.
    p = paper_problem(users=200)
    n_min = min_feasible_batches(p)
    assert n_min == 5
    tab = Tableau(p)
    lengths = np.full(p.size, 7, dtype=np.int64)
    assert assign_batches(tab, n_min - 1, lengths) is None
    assert assign_batches(tab, n_min, lengths) is not None
    assert len(plan_for("dipsd", p).batches) >= n_min


def test_warm_replan_is_valid_and_never_worse_than_keeping_the_plan() -> None:
    rng = np.random.default_rng(5)
    p = random_problem(rng, 80)
    before = plan_for("dipsd", p)
    # The estimates move: high acceptance rates become low ones and the other way round.
    users = tuple(dataclasses.replace(u, alpha=1.45 - u.alpha) for u in p.users)
    q = dataclasses.replace(p, users=users)
    warm = plan_for("dipsd", q, previous=before)
    warm.check(q)
    kept = evaluate(q, before).throughput_tok_s
    assert evaluate(q, warm).throughput_tok_s >= kept * (1 - 1e-9)
    # Close to a cold solve of the moved problem, which keeping the plan is not.
    assert kept < 0.98 * _thr("dipsd", q)
    assert evaluate(q, warm).throughput_tok_s >= 0.98 * _thr("dipsd", q)
    with pytest.raises(ConfigError):
        plan_for("dipsd", paper_problem(users=81), previous=before)


def test_every_name_list_comes_from_the_registry() -> None:
    from emu.cli import _parser
    from emu.sweep.study import POLICIES as STUDY

    names = policy_names("dipsd")
    assert {"dipsd", "exact", "ad", "ad-batch", "sd", "fixed"} <= set(names)
    assert set(STUDY) == {n for n in names if get_policy(n).max_users is None}
    assert baselines_of("dipsd") == {
        "ad": "ad",
        "ad_batch": "ad-batch",
        "sd": "sd",
        "fixed": "fixed",
    }
    help_text = re.sub(r"-\s+", "-", _parser().format_help() + _solve_help())  # argparse wraps
    for n in names:
        assert n in help_text


def _solve_help() -> str:
    from emu.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.choices and "solve" in a.choices)  # type: ignore[operator]
    return str(sub.choices["solve"].format_help())  # type: ignore[index]


def test_a_registered_policy_plans_and_runs_with_no_change_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A policy is what it says of itself: registering one makes it a scenario's policy, a
    solve's and a simulation's, with no list of names to edit."""
    from emu.planner import policies
    from emu.runners.sim import simulate
    from emu.scenario import load_scenario

    calls: list[Plan | None] = []

    def pairs(problem: Problem, previous: Plan | None) -> Plan:
        calls.append(previous)
        M = problem.size
        return Plan(
            batches=tuple(tuple(range(i, min(i + 2, M))) for i in range(0, M, 2)),
            draft_len=(3,) * M,
        )

    mine = policies.SolverPolicy("pairs-of-three", "pairs, three tokens each", pairs)
    monkeypatch.setitem(policies._REGISTRY, mine.name, mine)
    sc = load_scenario(
        overrides={
            "planner.policy": "pairs-of-three",
            "users.count": 4,
            "network.model": "fixed",
            "models.kind": "synthetic",
            "sim.duration_s": 5.0,
        }
    )
    assert plan_for(sc.planner.policy, sc.problem()).batches == ((0, 1), (2, 3))
    out = simulate(sc, [sc.planner.policy])["results"]["pairs-of-three"]
    assert out["rounds"] > 0 and out["tokens"] > 0
    assert out["throughput_tok_s"] == pytest.approx(out["predicted_tok_s"], rel=0.1)
    assert calls, "the simulation's edge planned with the registered policy"
    with pytest.raises(ConfigError, match=r"planner\.policy must be one of"):
        load_scenario(overrides={"planner.policy": "pairs-of-two"})
