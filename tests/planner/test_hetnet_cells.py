"""Several small cells under one macro cell: each with its own band, server and fronthaul, the
macro cell's server shared; planned a cell at a time and merged."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner import get_policy
from emu.planner.hetnet.bandwidth import batch_ordered_release_ms, spectral_efficiency
from emu.planner.hetnet.cells import cell_problem
from emu.planner.hetnet.evaluate import HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem, Task
from emu.planner.hetnet.workload import random_problem


def _two_cells(rng: np.random.Generator, per_cell: int = 4, **fields: object) -> HetnetProblem:
    """Two copies of one cell's tasks, the copy in cell 1."""
    one = random_problem(rng, per_cell, bandwidth_hz=2e5, **fields)  # type: ignore[arg-type]
    copy = tuple(dataclasses.replace(t, cell=1) for t in one.tasks)
    return dataclasses.replace(one, tasks=one.tasks + copy)


def test_each_cell_has_its_own_band_server_and_fronthaul() -> None:
    p = _two_cells(np.random.default_rng(1))
    alone, members = cell_problem(p, 1)
    assert members == (4, 5, 6, 7) and alone.cells == 1
    # A cell's band is its own: the same tasks upload as fast in either cell.
    eta = spectral_efficiency(p)
    np.testing.assert_allclose(eta[:4], eta[4:])
    released = batch_ordered_release_ms(p, [(0, 1), (4, 5), (2, 3), (6, 7)])
    assert released[0] == pytest.approx(released[1]) and released[2] == pytest.approx(released[3])
    # The macro cell's server is shared: two cells' batches can only end later than one alone,
    # and no resource ever serves two stages at once.
    plan = HetnetPlan(batches=((0, 1, 2, 3), (4, 5, 6, 7)), spec_len=(4, 4))
    both = evaluate(p, plan)
    solo = evaluate(alone, HetnetPlan(batches=((0, 1, 2, 3),), spec_len=(4,)))
    # Each waits for the other at the macro cell (without preemption, the batch first in the
    # order too: the other's verification may have started while it drafted), but never for
    # more than the other's verifications.
    other_verify = sum(
        t.end_ms - t.start_ms for t in both.timeline if t.batch == 1 and t.stage.resource == "mbs"
    )
    for k in (0, 4):
        assert solo.latency_ms[0] < both.latency_ms[k] <= solo.latency_ms[0] + other_verify + 1e-6
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for t in both.timeline:
        by_resource.setdefault(t.stage.resource, []).append((t.start_ms, t.end_ms))
    assert {"sbs0", "sbs1", "mbs", "fh_up0", "fh_up1"} <= set(by_resource)
    for spans in by_resource.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(spans))
    # The two small cells drafted at once: their servers overlap in time.
    s0, s1 = by_resource["sbs0"], by_resource["sbs1"]
    assert s0[0][0] == pytest.approx(s1[0][0])


def test_a_cells_own_fronthaul_and_interference_are_its_own() -> None:
    p = _two_cells(np.random.default_rng(2))
    slow = dataclasses.replace(p, fronthauls=((1e9, 0.1), (1e6, 5.0)))
    plan = HetnetPlan(batches=((0, 1, 2, 3), (4, 5, 6, 7)), spec_len=(3, 3))
    ev, ev_slow = evaluate(p, plan), evaluate(slow, plan)
    assert ev_slow.latency_ms[4] > 1.5 * ev.latency_ms[4]
    assert cell_problem(slow, 0)[0].fronthaul(0) == (1e9, 0.1)
    assert cell_problem(slow, 1)[0].fronthaul(0) == (1e6, 5.0)
    noisy = dataclasses.replace(p, interference_dbm_per_hz=(-float("inf"), -160.0))
    eta = spectral_efficiency(noisy)
    np.testing.assert_allclose(eta[:4], spectral_efficiency(p)[:4])
    assert (eta[4:] < spectral_efficiency(p)[4:]).all()


def test_every_policy_plans_each_cell_apart_and_the_macro_cell_for_all() -> None:
    p = _two_cells(np.random.default_rng(3), per_cell=3)
    plans: dict[str, HetnetPlan] = {}  # each policy's plan of p (planned once: they take seconds)
    for name in ("hetnet", "hetnet-dp", "hetnet-ad", "hetnet-uniform", "hetnet-max-batching"):
        plan = plans[name] = get_policy(name).plan(p)
        plan.check(p)  # every batch within one cell, every task once
        cells = [p.tasks[b[0]].cell for b in plan.batches]
        assert set(cells) == {0, 1}
        # A cell's batches, in the merged order, are its own plan's.
        alone, members = cell_problem(p, 0)
        mine = sorted(
            tuple(members.index(k) for k in b)
            for b, c in zip(plan.batches, cells, strict=True)
            if c == 0
        )
        # (the planner merges the DP's cell plans too, and keeps whichever scores better)
        sources = [name, "hetnet-dp"] if name == "hetnet" else [name]
        assert mine in [sorted(get_policy(s).plan(alone).batches) for s in sources]
    # The planner's merged plan is no worse than running the cells one after the other.
    plan = plans["hetnet"]
    apart = sorted(range(len(plan.batches)), key=lambda m: p.tasks[plan.batches[m][0]].cell)
    serial = HetnetPlan(
        batches=tuple(plan.batches[m] for m in apart),
        spec_len=tuple(plan.spec_len[m] for m in apart),
    )
    assert evaluate(p, plan).total_ms <= evaluate(p, serial).total_ms + 1e-6
    # ... and no worse than the reconstructed DP's cell plans, merged the same way.
    dp = plans["hetnet-dp"]
    assert evaluate(p, plan).total_ms <= evaluate(p, dp).total_ms + 1e-6


def test_bad_cells_are_one_line() -> None:
    p = _two_cells(np.random.default_rng(4), per_cell=2)
    with pytest.raises(ConfigError, match=r"plan.batches\[0\] mixes tasks of different small"):
        evaluate(p, HetnetPlan(batches=((0, 2), (1, 3)), spec_len=(2, 2)))
    gap = tuple(dataclasses.replace(t, cell=2 * t.cell) for t in p.tasks)
    with pytest.raises(ConfigError, match=r"hetnet.tasks' cells must be 0..1, each with a task"):
        dataclasses.replace(p, tasks=gap)
    with pytest.raises(ConfigError, match=r"hetnet.fronthauls must give one a small cell \(2\)"):
        dataclasses.replace(p, fronthauls=((1e9, 0.1),))
    with pytest.raises(ConfigError, match=r"hetnet-exact plans one small cell's tasks, got 2"):
        get_policy("hetnet-exact").plan(p)
    with pytest.raises(ConfigError, match=r"hetnet.tasks\[0\].gain_db must be a finite number"):
        Task(input_len=8, output_len=8, gain_db=float("nan")).check(0)
