"""Deployments: the rules that make roles work together, ``assemble``, the router, and a
deployment DiP-SD does not have (two verifiers behind a router) run in the simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from emu.deploy.deployment import assemble
from emu.errors import ConfigError, PeerGone
from emu.planner import evaluate, plan_for
from emu.planner.model import CloseRule
from emu.runners.sim import simulate
from emu.scenario import load_scenario
from nodes.core.guard import Limits
from nodes.core.route import RouterCore
from nodes.core.schedule import PlanLengths, StagedPipeline
from nodes.core.systems import System, get_system
from nodes.protocol import Connection, Error, ErrorCode, Heartbeat, Role
from nodes.router import RouterNode, ask_router
from nodes.stream import receive_event
from nodes.user import EdgeRefused

ROOT = Path(__file__).resolve().parents[1]
V0 = {"name": "edge0", "role": "verifier"}
V1 = {"name": "edge1", "role": "verifier"}
ROUTER = {"name": "router", "role": "router", "site": "cloud"}


def _scenario(nodes: list[dict[str, Any]], **more: Any) -> Any:
    over = {"deployment.nodes": nodes, "models.kind": "synthetic", "network.model": "fixed"}
    return load_scenario(overrides={**over, **more})


@pytest.mark.parametrize(
    ("nodes", "more", "says"),
    [
        ([{**ROUTER}], {}, "deployment.nodes must include a verifier"),
        ([V0, {**ROUTER, "verifiers": ["edge9"]}], {}, r"nodes\[1\]\.verifiers names 'edge9', "
         "which is not a node"),
        ([V0, ROUTER, {**ROUTER, "name": "r2"}], {}, "2 routers"),
        ([V0, {**ROUTER, "verifiers": ["router"]}], {}, "is a router, not a verifier"),
        ([V0, V1], {}, "2 verifiers \\(edge0, edge1\\) and no router"),
        ([V0, {**ROUTER, "verifiers": ["edge0", "edge0"]}], {}, "must name each verifier once"),
        ([{**V0, "policy": "jsq"}], {}, r"nodes\[0\]\.policy is a router's field.*'jsq'"),
        ([V0, ROUTER], {"deployment.attach": "edge0"}, r"\(router\): no user dials this router"),
        ([V0], {"deployment.attach": "edge7"}, "deployment.attach names 'edge7', which is not"),
        ([V0, V1], {"deployment.attach": "edge0"}, r"nodes\[1\] \(edge1\): no user reaches"),
        ([V0, V1, {**ROUTER, "verifiers": ["edge0"]}], {}, r"\(edge1\): no user reaches"),
        ([{**V0, "address": "10.0.0.2"}, {**V1, "address": "10.0.0.2"}, ROUTER], {},
         r"nodes\[1\]\.address '10\.0\.0\.2' is deployment\.nodes\[0\]'s too"),
        ([V0, {**V1, "name": "edge0"}], {}, r"nodes\[1\]\.name 'edge0' is deployment"),
        ([{**V0, "name": "u3"}], {}, "not ap or u<N>"),
        ([{**V0, "role": "drafter"}], {}, r"nodes\[0\]\.role must be one of verifier, router"),
        ([V0, {**ROUTER, "policy": "jsq"}], {}, r"nodes\[1\]\.policy must be one of"),
        ([{**V0, "verifiers": ["edge0"]}], {}, "is a router's field"),
        ([V0], {"deployment.system": "lab"}, "deployment.system must be one of dipsd, hetnet, dsd"),
        ([V0, V1, ROUTER], {"deployment.links": [{"ends": ["router", "edge9"]}]},
         r"links\[0\]\.ends names 'edge9', which is not a server node"),
        ([V0], {"deployment.links": [{"ends": ["u0", "edge0"]}]},
         r"names 'u0'.*a user's link is \[network\]'s or \[radio\]'s"),
        ([V0], {"deployment.links": [{"ends": ["edge0", "edge0"]}]},
         r"links\[0\]\.ends must name two different nodes"),
        ([V0], {"deployment.links": [{"ends": ["edge0"]}]}, "must name two different nodes"),
        ([V0, V1, ROUTER], {"deployment.links": [{"ends": ["router", "edge1"], "delay_ms": -1}]},
         r"deployment\.links\[0\]\.delay_ms must be in \[0, 1e5\], got -1"),
        ([V0, V1, ROUTER], {"deployment.links": [
            {"ends": ["router", "edge1"]}, {"ends": ["edge1", "router"], "one_way": True}]},
         r"links\[1\] links edge1 to router, and so does deployment\.links\[0\]"),
    ],
)  # fmt: skip
def test_roles_that_cannot_work_together_are_one_line_each(
    nodes: list[dict[str, Any]], more: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        _scenario(nodes, **more)


def test_the_command_refuses_a_bad_deployment_with_status_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[[deployment.nodes]]\nname = "edge0"\nrole = "verifier"\n'
                 '[[deployment.nodes]]\nname = "edge1"\nrole = "verifier"\n')  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "emu.cli", "sim", str(f)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 verifiers (edge0, edge1) and no router" in lines[0]
    assert "Traceback" not in out.stderr


def test_the_default_deployment_is_dipsd_one_edge_that_every_user_dials() -> None:
    dep = assemble(load_scenario())
    assert dep.system.name == "dipsd" and dep.verifiers == ("edge",) and dep.router is None
    assert dep.entry == "edge" and dep.groups["edge"] == (0, 1, 2, 3)
    assert [n.name for n in dep.users] == ["u0", "u1", "u2", "u3"]
    assert dep.served("edge") is dep.problem


def test_the_system_supplies_the_policies_the_scheduler_and_the_length_control() -> None:
    dep = assemble(_scenario([V0], **{"runtime.deadline_tolerance": 0.5}))
    assert dep.system is get_system("dipsd") and dep.describe()["system"] == "dipsd"
    assert dep.system.policies[0] == "dipsd" and "ad-batch" in dep.system.policies
    assert dep.scheduler() == StagedPipeline(close=CloseRule(tolerance=0.5, grace_ms=2.0))
    assert isinstance(dep.lengths(), PlanLengths)
    toy = System(name="toy", about="", roles=("verifier",), scheduler=lambda rt: rt.pipeline,
                 lengths=lambda rt: PlanLengths())  # fmt: skip
    with pytest.raises(ConfigError, match=r"--policy must be one of toy's policies \(\), got"):
        toy.check_policy("dipsd", where="--policy")


def test_links_between_servers_are_each_direction_a_fixed_state() -> None:
    links = [
        {"ends": ["router", "edge1"], "delay_ms": 5.0, "rate_bps": 1e8},
        {"ends": ["edge0", "edge1"], "delay_ms": 2.0, "jitter_ms": 0.5, "one_way": True},
    ]
    dep = assemble(_scenario([V0, V1, ROUTER], **{"deployment.links": links}))
    assert [link.name for link in dep.links] == ["router->edge1", "edge1->router", "edge0->edge1"]
    assert [(x.spec.state.delay_ms, x.spec.state.rate_bps) for x in dep.links[:2]] == [
        (5.0, 1e8), (5.0, 1e8)
    ]  # fmt: skip
    assert dep.links[2].spec.state.jitter_ms == 0.5
    assert dep.describe()["links"] == ["router->edge1", "edge1->router", "edge0->edge1"]
    assert dep.links[0].scaled(3.0).spec.time_scale == 3.0


def test_a_router_splits_users_by_its_own_rule_and_the_deployment_knows_the_split() -> None:
    sc = _scenario([V0, V1, ROUTER], **{"users.count": 5})
    dep = assemble(sc)
    assert dep.router == "router" and dep.entry == "router"
    assert dep.groups == {"edge0": (0, 2, 4), "edge1": (1, 3)}
    assert [u.name for u in dep.served("edge1").users] == ["users[1]", "users[3]"]
    core = dep.router_core()
    assert [core.route(u) for u in range(5)] == ["edge0", "edge1", "edge0", "edge1", "edge0"]
    plan = lambda p, prev=None: plan_for("dipsd", p, prev)  # noqa: E731
    want = sum(evaluate(dep.served(v), plan(dep.served(v))).throughput_tok_s for v in dep.verifiers)
    assert dep.predicted_tok_s(plan) == pytest.approx(want)


def test_random_routing_is_sticky_and_set_by_the_seed() -> None:
    a = RouterCore(("a", "b", "c"), "random", seed=3)
    b = RouterCore(("a", "b", "c"), "random", seed=3)
    first = [a.route(u) for u in range(60)]
    assert first == [a.route(u) for u in range(60)] == [b.route(u) for u in range(60)]
    assert set(first) == {"a", "b", "c"}
    other = RouterCore(("a", "b", "c"), "random", seed=4)
    assert [other.route(u) for u in range(60)] != first


def _router(auth: str = "") -> tuple[RouterNode, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    node = RouterNode(
        RouterCore(("edge0", "edge1")),
        {"edge0": ("10.0.1.2", 7000), "edge1": ("10.0.2.2", 7000)},
        sink=records.append,
        auth=auth,
    )
    return node, records


async def test_the_router_redirects_each_user_to_its_verifier() -> None:
    node, records = _router()
    async with trio.open_nursery() as nursery:
        for uid, (host, name) in ((4, ("10.0.1.2", "edge0")), (7, ("10.0.2.2", "edge1"))):
            user, router = trio.testing.memory_stream_pair()
            nursery.start_soon(node.serve_stream, router)
            r = await ask_router(user, uid)
            assert (r.node, r.host, r.port) == (name, host, 7000)
    assert [(r["user"], r["to"]) for r in records] == [(4, "edge0"), (7, "edge1")]


async def test_the_router_refuses_a_bad_auth_for_good_and_answers_only_hello() -> None:
    node, records = _router(auth="secret")
    user, router = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.serve_stream, router)
        with pytest.raises(EdgeRefused, match="auth refused"):
            await ask_router(user, 1, auth="wrong")
    assert records[-1]["ev"] == "refused" and records[-1]["code"] == ErrorCode.AUTH
    # Anything but a Hello first is answered with an Error, and nobody is routed.
    user, router = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.serve_stream, router)
        conn = Connection(Role.USER)
        await user.send_all(conn.send(Heartbeat(sent_ms=1.0)))
        ev = await receive_event(conn, user)
        assert isinstance(ev, Error) and ev.error == ErrorCode.OUT_OF_ORDER
    assert node.routed == 0 and node.refused == 2


async def test_the_router_lets_a_peer_that_leaves_before_hello_go() -> None:
    node, records = _router()
    user, router = trio.testing.memory_stream_pair()
    await user.aclose()
    await node.serve_stream(router)  # returns, and raises nothing
    assert node.routed == 0 and records == []


async def test_the_router_caps_its_open_connections() -> None:
    records: list[dict[str, Any]] = []
    node = RouterNode(
        RouterCore(("edge0",)),
        {"edge0": ("10.0.1.2", 7000)},
        sink=records.append,
        limits=Limits(max_connections=2),
    )
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # two peers that hold their connection and say nothing
            _, router = trio.testing.memory_stream_pair()
            nursery.start_soon(node.serve_stream, router)
        await trio.sleep(0.1)
        user, router = trio.testing.memory_stream_pair()
        nursery.start_soon(node.serve_stream, router)
        with pytest.raises(PeerGone, match="connections open") as info:
            await ask_router(user, 1)
        assert not isinstance(info.value, EdgeRefused)  # OVERLOADED: worth a redial later
        nursery.cancel_scope.cancel()
    assert node.refused == 1 and records[-1]["code"] == ErrorCode.OVERLOADED


@pytest.fixture(scope="module")
def split_sim() -> dict[str, Any]:
    sc = _scenario(
        [V0, V1, ROUTER],
        **{"users.count": 4, "sim.duration_s": 120.0, "users.comm_ms": 20.0},
    )
    return simulate(sc, ["dipsd", "fixed"])


@pytest.mark.parametrize("policy", ["dipsd", "fixed"])
def test_two_verifiers_behind_a_router_run_in_the_simulation_as_predicted(
    split_sim: dict[str, Any], policy: str
) -> None:
    r = split_sim["results"][policy]
    assert r["users_started"] == 4 and r["faults"] == {} and r["protocol_errors"] == 0
    assert r["throughput_tok_s"] / r["predicted_tok_s"] == pytest.approx(1.0, rel=0.05)
    # Every user decodes: each verifier serves its half.
    assert all(v > 0 for v in r["per_user_tok_s"].values()) and len(r["per_user_tok_s"]) == 4


def test_a_verifier_with_compute_of_its_own_plans_and_runs_on_it(tmp_path: Path) -> None:
    """edge1 is a server twice as slow per flop, with half the base latency: each verifier
    plans for its own hardware, and the simulation measures what the two plans predict."""
    slow = {**V1, "latency": {"c_ms_per_flop": 2.4154e-11, "beta_ms": 47.55}}
    sc = _scenario([V0, slow, ROUTER], **{"users.count": 4, "sim.duration_s": 60.0})
    dep = assemble(sc)
    assert dep.edge("edge0") == dep.problem.edge and dep.served("edge0").edge == dep.problem.edge
    assert dep.edge("edge1").latency.c_ms_per_flop == 2.4154e-11
    assert dep.served("edge1").edge.latency.beta_ms == 47.55
    ok = [evaluate(dep.served(v), plan_for("dipsd", dep.served(v))) for v in dep.verifiers]
    assert ok[0].throughput_tok_s != pytest.approx(ok[1].throughput_tok_s, rel=0.02)
    doc = simulate(sc, ["dipsd"], out_dir=tmp_path)
    r = doc["results"]["dipsd"]
    assert r["predicted_tok_s"] == pytest.approx(sum(o.throughput_tok_s for o in ok))
    assert r["throughput_tok_s"] / r["predicted_tok_s"] == pytest.approx(1.0, rel=0.05)
    recs = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    for v, o in zip(dep.verifiers, ok, strict=True):
        first = next(p for p in recs if p["ev"] == "plan" and p["node"] == v)
        assert first["predicted_tok_s"] == pytest.approx(o.throughput_tok_s)


def test_a_verifier_that_sets_part_of_its_latency_keeps_the_rest_of_the_edges() -> None:
    dep = assemble(_scenario([V0, {**V1, "latency": {"beta_ms": 10.0}}, ROUTER]))
    own, edge = dep.edge("edge1").latency, dep.problem.edge.latency
    assert own.beta_ms == 10.0 and own.c_ms_per_flop == edge.c_ms_per_flop
    assert dep.edge("edge0") is dep.problem.edge and list(dep.edges) == ["edge1"]


def test_a_routers_compute_and_a_bad_verifier_memory_are_one_line_each() -> None:
    with pytest.raises(
        ConfigError, match=r"nodes\[2\]\.latency is a verifier's field.*got \{'beta_ms': 1\.0\}"
    ):
        _scenario([V0, V1, {**ROUTER, "latency": {"beta_ms": 1.0}}])
    with pytest.raises(ConfigError, match=r"deployment\.nodes\[1\]\.memory_bytes must exceed"):
        _scenario([V0, {**V1, "memory_bytes": 1e9}, ROUTER], preset="dipsd-paper")


def test_each_verifier_plans_and_verifies_only_the_users_routed_to_it(tmp_path: Path) -> None:
    sc = _scenario([V0, V1, ROUTER], **{"users.count": 4, "sim.duration_s": 5.0})
    simulate(sc, ["dipsd"], out_dir=tmp_path)
    recs = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    routes = {r["user"]: r["to"] for r in recs if r["ev"] == "route"}
    assert routes == {0: "edge0", 1: "edge1", 2: "edge0", 3: "edge1"}
    for v, users in (("edge0", [0, 2]), ("edge1", [1, 3])):
        plans = [r for r in recs if r["ev"] == "plan" and r["node"] == v]
        assert plans and all(p["users"] == users for p in plans)
        batches = [r for r in recs if r["ev"] == "batch" and r["node"] == v]
        assert batches and {u for b in batches for u in b["users"]} == set(users)
        # Each user's rounds ran under a plan of its own verifier (the PlanUpdate it was sent).
        rounds = [r for r in recs if r["ev"] == "round" and r["user"] in users]
        assert rounds and {r["plan_id"] for r in rounds} <= {p["plan_id"] for p in plans}
