"""A session that arrives while the edge plans (on a real clock the planner runs in a worker
thread) is planned for before its prefill: it gets a slot and a draft length, not round 0 of
a plan without it (a first cut of the verifier's core prefilled it under the old plan, and it
then sat in no batch until a periodic re-plan)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import trio
import trio.testing

from channel_models.link import LinkState
from emu.planner import Plan, Problem, plan_for
from emu.runners.simlink import link_pair
from nodes.backends import SyntheticDrafter, SyntheticVerifier
from nodes.edge import EdgeNode, EdgeSettings
from nodes.user import UserNode
from tests.planner.conftest import paper_problem


async def test_a_session_that_arrives_during_a_solve_is_planned_before_its_prefill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = paper_problem(2)
    records: list[dict[str, Any]] = []
    solves: list[int] = []

    def planner(problem: Problem, previous: Plan | None) -> Plan:
        solves.append(problem.size)
        return plan_for("dipsd", problem, previous)

    class SlowToPlan(EdgeNode):
        """Its first solve takes 0.3 s, as a worker thread's does on a real clock: the edge's
        connections go on meanwhile (user 1 joins and starts its session)."""

        async def _solve(self, problem: Problem, previous: Plan | None) -> Plan:
            if not solves:
                await trio.sleep(0.3)
            return await super()._solve(problem, previous)

    rng = np.random.default_rng(1).spawn(5)
    edge = SlowToPlan(
        edge=p.edge,
        verifier=SyntheticVerifier(
            edge=p.edge,
            alpha=dict.fromkeys(range(2), 0.78),
            prefix_len=dict.fromkeys(range(2), 512),
            rng=rng[0],
        ),
        planner=planner,
        priors=dict(enumerate(p.users)),
        settings=EdgeSettings(expected_users=1, join_window_s=0.0),
        sink=records.append,
    )

    def prompts() -> Any:
        while True:
            yield (1,) * 512

    async def user(i: int, after_s: float, nursery: trio.Nursery) -> None:
        await trio.sleep(after_s)
        state = LinkState(delay_ms=1.5)
        u_end, e_end = link_pair(lambda _t: state, lambda _t: state, rng[3 + i])
        nursery.start_soon(edge.serve_stream, e_end)
        node = UserNode(i, SyntheticDrafter.for_user(p.users[i], rng[1 + i]), prompts(),
                        sink=records.append)  # fmt: skip
        await node.run(u_end)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge.run)
        nursery.start_soon(user, 0, 0.0, nursery)
        nursery.start_soon(user, 1, 0.05, nursery)
        await trio.sleep(4.0)
        nursery.cancel_scope.cancel()
    plans = [(r["users"], r["reason"]) for r in records if r["ev"] == "plan"]
    assert plans[0] == ([0], "start") and ([0, 1], "join") in plans
    rounds = Counter(r["user"] for r in records if r["ev"] == "round")
    assert rounds[1] > 5 and rounds[0] > 5
    first_prefill = next(r for r in records if r["ev"] == "prefill")
    assert first_prefill["users"] == [0]  # user 1's session waited for a plan with it
