"""Policies under tight edge memory: a batch holds only some of the users.

Every policy must return a feasible plan or raise ``Infeasible``; nothing else. The joint
polish of ``dipsd`` once stopped with an AssertionError here (a lookahead neighbour that broke
the memory bound was searched as if it were a plan).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import Infeasible
from emu.planner import Plan, Problem, evaluate, get_policy, plan_for, policy_names
from emu.planner.exact import MAX_EXACT_USERS
from emu.scenario import load_scenario
from tests.planner.conftest import random_problem

# Qwen3-32B's fp16 weights plus the KV cache of two users at prefix 512 [bytes].
TWO_USERS_AT_512 = 48318382080.0


def _tight(p: Problem, users_per_batch: float) -> Problem:
    """``p`` with memory for ``users_per_batch`` users at the largest prefix beside the weights."""
    target = p.edge.target
    memory = target.weight_bytes + float(target.kv_bytes(users_per_batch * p.prefix.max()))
    return dataclasses.replace(p, edge=dataclasses.replace(p.edge, memory_bytes=memory))


def _assert_feasible(p: Problem, plan: Plan, policy: str) -> None:
    plan.check(p)  # each user in exactly one batch, every length in [0, l_max]
    ev = evaluate(p, plan)
    assert ev.feasible, (policy, plan)
    assert all(mem <= p.edge.memory_bytes for mem in ev.memory_bytes), (policy, plan)
    assert np.isfinite(ev.throughput_tok_s) and ev.throughput_tok_s > 0, (policy, plan)


@pytest.mark.parametrize("policy", list(policy_names("dipsd")))
def test_paper_preset_with_memory_for_two_users(policy: str) -> None:
    # The smallest reported case: 4 users, memory for 2 per batch (polish asserted).
    sc = load_scenario(
        preset="dipsd-paper",
        overrides={"users.count": 4, "edge.memory_bytes": TWO_USERS_AT_512},
    )
    p = sc.problem()
    assert p.edge.memory_bytes == TWO_USERS_AT_512
    plan = plan_for(policy, p)
    _assert_feasible(p, plan, policy)
    assert max(len(b) for b in plan.batches) <= 2


def _instances(users: tuple[int, int], max_len: tuple[int, int]) -> st.SearchStrategy[Problem]:
    return st.builds(
        lambda seed, m, share, lmax: _tight(
            random_problem(np.random.default_rng(seed), m, lmax), 1 + share * (m - 2)
        ),
        st.integers(0, 2**32 - 1),
        st.integers(*users),
        # 1 to M - 1 users' worth of memory at the largest prefix, fractions included.
        st.floats(0.0, 1.0),
        st.integers(*max_len),
    )


def _feasible_or_infeasible(p: Problem, policy: str) -> None:
    try:
        plan = plan_for(policy, p)
    except Infeasible:
        return
    _assert_feasible(p, plan, policy)


# exact's MILPs cost seconds at 8 users and long drafts: it has its own, smaller instances.
FAST_POLICIES = [p for p in policy_names("dipsd") if get_policy(p).max_users is None]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_instances(users=(3, 8), max_len=(1, 20)))
def test_every_policy_is_feasible_or_infeasible_under_tight_memory(p: Problem) -> None:
    for policy in FAST_POLICIES:
        _feasible_or_infeasible(p, policy)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_instances(users=(3, 6), max_len=(1, 4)))
def test_exact_is_feasible_or_infeasible_under_tight_memory(p: Problem) -> None:
    assert p.size <= MAX_EXACT_USERS
    _feasible_or_infeasible(p, "exact")
