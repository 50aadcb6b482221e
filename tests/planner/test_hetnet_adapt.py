"""Acceptance learned online and each round's length chosen from it
(``emu.planner.hetnet.adapt``, ``nodes.core.hetnet``): the rule, the learning, the scenario's
fields, and what it buys in the simulation when the planner is told only the mean."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from emu.errors import ConfigError
from emu.planner import get_policy
from emu.planner.hetnet.adapt import next_length
from emu.runners.sim_hetnet import simulate_hetnet
from emu.scenario import load_scenario
from nodes.core.hetnet import SmallCellCore
from nodes.protocol.hetnet import BatchVerdict, Upload, pack_ids


def test_the_length_follows_the_acceptance_and_the_pipeline() -> None:
    p = load_scenario(None, preset="hetnet", overrides={"users.count": 12}).hetnet_problem()

    def length(alpha: float, *, pipelined: bool) -> int:
        return next_length(p, 0, 12, 300, [(300, alpha)] * 12, pipelined=pipelined)

    # Alone, a round's stages run in series; pipelined, the verifying side sets the pace, so
    # fewer, longer rounds pay (the module's figures).
    assert length(0.75, pipelined=False) == 2
    assert length(0.75, pipelined=True) == 4
    lengths = [length(a, pipelined=True) for a in (0.3, 0.5, 0.7, 0.9)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    assert all(1 <= ln <= p.max_draft_len for ln in lengths)


def _upload(task: int) -> Upload:
    return Upload(task=task, prompt=pack_ids((1, 2, 3), 2), width=2, max_new_tokens=40)


def test_the_small_cell_learns_each_tasks_acceptance_and_adapts_the_next_round() -> None:
    asked: list[tuple[int, int, list[tuple[int, float]], bool]] = []

    def rule(n: int, context: int, members: Sequence[tuple[int, float]], *, pipelined: bool) -> int:
        asked.append((n, context, list(members), pipelined))
        return 3

    core = SmallCellCore([(0, 1)], [4], [1.0, 1.0], priors=[0.5, 0.9], adapt=rule)
    for k in (0, 1):
        core.attach(k)
        core.upload(_upload(k), 0.1)
    assert core.learned_alpha(0) == 0.5 and core.learned_alpha(1) == pytest.approx(0.9)
    prefill = core.next_job()
    assert prefill is not None
    core.job_done(prefill, 1.0, 0.2)
    draft = core.next_job()
    assert draft is not None
    core.job_done(draft, 1.0, 0.3, [(5, 6, 7, 8), (5, 6, 7, 8)])
    verdict = BatchVerdict(batch=0, round=1, accepted=(4, 1), tokens=((9,), (9,)))
    core.verdict(verdict, 0.4)
    # Task 0: 4 of 4 accepted, no rejection; task 1: 1 accepted, then a rejection.
    assert core.learned_alpha(0) == pytest.approx((4 + 0.5 * 8) / (4 + 8))
    assert core.learned_alpha(1) == pytest.approx((1 + 0.9 * 8) / (2 + 8))
    # The rule saw the batch (2 tasks, the longest context, each one's tokens still wanted and
    # acceptance, alone) and the next round drafts what it said.
    n, context, members, pipelined = asked[-1]
    assert (n, context, pipelined) == (2, 3 + 5, False)
    assert members == [(35, core.learned_alpha(0)), (38, core.learned_alpha(1))]
    job = core.next_job()
    assert job is not None and core.batch_shape(job.batch)[2] == 3


def test_a_planner_told_only_the_mean_plans_with_it() -> None:
    over = {"users.count": 8, "hetnet.alpha_spread": 0.2, "hetnet.alpha_known": False}
    p = load_scenario(None, preset="hetnet", overrides=over).hetnet_problem()
    alphas = [t.alpha for t in p.tasks]
    assert len(set(alphas)) == 8 and all(0.55 <= a <= 0.95 for a in alphas)
    assert {t.prior_alpha for t in p.tasks} == {0.75}
    told = dataclasses.replace(
        p, tasks=tuple(dataclasses.replace(t, alpha=0.75, prior_alpha=None) for t in p.tasks)
    )
    assert get_policy("hetnet-dp").plan(p) == get_policy("hetnet-dp").plan(told)
    known = load_scenario(None, preset="hetnet", overrides=over | {"hetnet.alpha_known": True})
    assert [t.alpha for t in known.hetnet_problem().tasks] == alphas
    with pytest.raises(ConfigError, match=r"hetnet.alpha_spread must be in \[0, 0.45\]"):
        load_scenario(None, preset="hetnet", overrides=over | {"hetnet.alpha_spread": 0.6})


def test_learning_the_acceptance_beats_the_plan_told_only_the_mean() -> None:
    """Sampled acceptance, each task's own in 0.75 +- 0.2, the planner told 0.75: the small
    cell that learns it and adapts each round finishes the same plan's tasks sooner."""
    over = {"users.count": 24, "sim.seed": 2, "hetnet.alpha_spread": 0.2,
            "hetnet.alpha_known": False}  # fmt: skip
    mean = {}
    for learn in (False, True):
        sc = load_scenario(None, preset="hetnet", overrides=over | {"hetnet.learn_alpha": learn})
        r = simulate_hetnet(sc, ["hetnet"])["results"]["hetnet"]
        assert r["finished"] == 24
        mean[learn] = r["latency_ms"]["mean"]
        if not learn:
            planned = r["mean_draft_len"]
        else:
            assert r["mean_draft_len"] != planned
    assert mean[True] < 0.97 * mean[False], mean
