"""``draftnet sim``: every node in one process, on trio's virtual clock.

Layer: emu (orchestration). There is no separate simulator: the user and edge nodes are the
emulation's nodes; only the links (in-memory, delayed per message) and the clock
(``trio.testing.MockClock`` with autojump: time jumps whenever every task waits) differ.
Backends are synthetic here (see ``nodes.backends``); each policy runs on the same seed.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import trio
import trio.testing

from channel_models.link import LinkState
from emu.errors import ConfigError
from emu.metrics import Recorder
from emu.planner import Plan, evaluate, plan_for
from emu.planner.model import Problem
from emu.planner.policies import POLICIES
from emu.scenario import Scenario
from emu.simlink import link_pair
from nodes.backends import SyntheticDrafter, SyntheticVerifier
from nodes.edge import EdgeNode, EdgeSettings
from nodes.pacing import Pacer
from nodes.user import UserNode

__all__ = ["simulate"]

Progress = Callable[[str, float], None]


def _prompts(rng: np.random.Generator, length: int) -> Iterator[tuple[int, ...]]:
    while True:
        yield tuple(int(t) for t in rng.integers(0, 32000, size=max(1, length)))


def _memo(policy: str) -> Callable[[Problem, Plan | None], Plan]:
    """The policy's planner for one run, remembering its plans: the edge's first plan (made
    from the scenario's users) is then the prediction's plan, not a second solve."""
    plans: dict[tuple[Problem, Plan | None], Plan] = {}

    def plan(problem: Problem, previous: Plan | None = None) -> Plan:
        key = (problem, previous)
        if key not in plans:
            plans[key] = plan_for(policy, problem, previous)
        return plans[key]

    return plan


def _constant(state: LinkState) -> Callable[[float], LinkState]:
    return lambda _t: state


def _settings(sc: Scenario, users: int) -> EdgeSettings:
    r, p = sc.runtime, sc.planner
    return EdgeSettings(
        max_draft_len=p.max_draft_len,
        initial_draft_len=p.initial_draft_len,
        fixed_draft_len=p.fixed_draft_len,
        deadline_tolerance=r.deadline_tolerance,
        grace_ms=r.grace_ms,
        replan_every=r.replan_every,
        drift=r.drift,
        min_rounds=r.min_rounds,
        comm_quantile=r.comm_quantile or None,
        expected_users=users,
    )


async def _run_policy(
    sc: Scenario,
    problem: Problem,
    planner: Callable[[Problem, Plan | None], Plan],
    rec: Recorder,
    tick: Callable[[float], None] | None,
) -> tuple[float, dict[str, Any]]:
    seed = sc.sim.seed
    rngs = np.random.default_rng(seed).spawn(2 * problem.size + 2)
    edge = EdgeNode(
        edge=problem.edge,
        verifier=SyntheticVerifier(
            edge=problem.edge,
            alpha={i: u.alpha for i, u in enumerate(problem.users)},
            prefix_len={i: u.prefix_len for i, u in enumerate(problem.users)},
            rng=rngs[0],
            prefill_free=sc.sim.warm_start,
        ),
        planner=planner,
        priors=dict(enumerate(problem.users)),
        settings=_settings(sc, problem.size),
        sink=rec,
        pacer=Pacer("virtual"),
    )
    net = sc.network
    duration = sc.sim.duration_s
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge.run)
        for i, u in enumerate(problem.users):
            state = LinkState(
                rate_bps=net.rate_bps,
                delay_ms=u.comm_ms / 2,
                jitter_ms=net.jitter_ms,
                loss=net.loss,
            )
            steady = _constant(state)
            user_end, edge_end = link_pair(steady, steady, rngs[2 + 2 * i], rto_ms=net.rto_ms)
            node = UserNode(
                i,
                SyntheticDrafter.for_user(u, rngs[3 + 2 * i]),
                _prompts(rngs[1], u.prefix_len),
                sink=rec,
                max_new_tokens=sc.sim.max_new_tokens,
            )
            nursery.start_soon(edge.serve_stream, edge_end)
            nursery.start_soon(node.run, user_end)
        if tick is not None:
            for k in itertools.count(1):
                step = min(1.0, duration - (k - 1))
                if step <= 0:
                    break
                await trio.sleep(step)
                tick(trio.current_time() - t0)
        else:
            await trio.sleep(duration)
        t_end = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    s = edge.stats
    return t_end, {
        "edge_utilisation": s.busy_s / max(t_end, 1e-9),
        "pipeline_bubbles": s.bubbles,
        "bubble_s": s.wait_s,
        "cycles": s.cycles,
        "protocol_errors": s.protocol_errors,
    }


def simulate(
    sc: Scenario,
    policies: list[str],
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run each policy for ``sc.sim.duration_s`` virtual seconds; the ``sim --json`` object."""
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, got {p!r}")
    problem = sc.problem()
    t_wall = time.perf_counter()
    rec = Recorder(out_dir / "events.jsonl" if out_dir else None)
    if out_dir is not None:
        (out_dir / "scenario.toml").write_text(tomli_w.dumps(_plain(sc)))
    results: dict[str, Any] = {}
    try:
        for policy in policies:
            rec.policy = policy
            planner = _memo(policy)
            predicted = evaluate(problem, planner(problem, None)).throughput_tok_s
            t_policy = time.perf_counter()
            t_end, edge = trio.run(
                _run_policy,
                sc,
                problem,
                planner,
                rec,
                None if progress is None else functools.partial(progress, policy),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
            res = rec.summary(policy, t_end=t_end, users=problem.size)
            res = {
                "throughput_tok_s": res.pop("throughput_tok_s"),
                "predicted_tok_s": predicted,
                **res,
                **edge,
                "lossless": None,
                "wall_s": time.perf_counter() - t_policy,
            }
            results[policy] = res
            if out_dir is not None:
                _write_summary(out_dir, sc, results, t_wall)
    finally:
        rec.close()
    return {
        "mode": "sim",
        "scenario": sc.name,
        "users": problem.size,
        "duration_s": sc.sim.duration_s,
        "seed": sc.sim.seed,
        "results": results,
        "wall_s": time.perf_counter() - t_wall,
    }


def _write_summary(out: Path, sc: Scenario, results: dict[str, Any], t_wall: float) -> None:
    doc = {
        "mode": "sim",
        "scenario": sc.name,
        "results": results,
        "wall_s": time.perf_counter() - t_wall,
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(out / "summary.json")


def _plain(obj: Any) -> Any:
    """A scenario as TOML-ready data (the resolved scenario of a run)."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _plain(getattr(obj, f.name))
            for f in fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    return obj
