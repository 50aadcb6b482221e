"""DSD's lab roles as processes on loopback, started as a lab would start them on separate
machines (``draftnet router``, ``draftnet verifier``, ``draftnet user``), over mutual TLS with
drafter 1's clock 2 s ahead: every drafter finishes conversations through the verifiers, and
the router's run directory holds every node's records on its clock and the run's summary."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from emu.errors import RemoteProtocolError
from emu.lab.certs import init_lab
from nodes.dsd import check_sender
from nodes.protocol.dsd import QueueReport, Route
from tests.lab_processes import await_ready, free_port, kill_left, start

SKEW_MS = 2000.0

SCENARIO = """
name = "dsd-lab"
[deployment]
system = "dsd"
[planner]
policy = "static"
[sim]
duration_s = 3.0
seed = 3
[models]
kind = "synthetic"
[dsd]
drafters = 2
fanout = 2
router = "jsq"
trace = "{trace}"
capability = [3.0, 3.0]
think_mean_ms = 200.0
think_min_ms = 50.0
[[dsd.tiers]]
name = "a100"
batch_size = 8
window_ms = 0.35
one_way_ms = [6.5, 11.0]
base_ms = 24.0
per_token_ms = 1.2
[[dsd.tiers]]
name = "h100"
weight = 1.9
batch_size = 8
window_ms = 0.32
one_way_ms = [5.2, 9.2]
base_ms = 15.0
per_token_ms = 0.7
"""


def test_the_dsd_roles_run_as_lab_commands_and_the_router_gathers_the_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "small.trace").write_text("40,24\n60,20\n32,28\n")
    sc = tmp_path / "dsd.toml"
    sc.write_text(SCENARIO.format(trace=tmp_path / "small.trace"))
    lab = tmp_path / "lab"
    init_lab(lab, ["router", "v0", "v1", "d0", "d1"])
    ports = {n: free_port() for n in ("router", "v0", "v1")}
    at = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    run = tmp_path / "run"
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        procs["router"] = start(
            "router", str(sc), "--listen", at["router"], "--lab", str(lab), "--out", str(run),
            "--json", log=tmp_path / "router.log",
        )  # fmt: skip
        await_ready(procs["router"], tmp_path / "router.log")
        for k in (0, 1):
            procs[f"v{k}"] = start(
                "verifier", str(sc), "--id", str(k), "--listen", at[f"v{k}"],
                "--connect", at["router"], "--lab", str(lab), log=tmp_path / f"v{k}.log",
            )  # fmt: skip
        for k in (0, 1):
            await_ready(procs[f"v{k}"], tmp_path / f"v{k}.log")
        for i in (0, 1):
            skew = ["--clock-skew-ms", str(SKEW_MS)] if i == 1 else []
            procs[f"d{i}"] = start(
                "user", str(sc), "--id", str(i), "--connect", at["router"], "--lab", str(lab),
                "--verifier", f"v0={at['v0']}", "--verifier", f"v1={at['v1']}", *skew,
                "--out", str(tmp_path / f"d{i}"), "--json", log=tmp_path / f"d{i}.log",
            )  # fmt: skip
        for i in (0, 1):  # a drafter serves its conversations for sim.duration_s, and leaves
            assert procs[f"d{i}"].wait(timeout=120) == 0, (tmp_path / f"d{i}.log").read_text()
        for k in (0, 1):
            procs[f"v{k}"].send_signal(signal.SIGTERM)
            assert procs[f"v{k}"].wait(timeout=30) == 0, (tmp_path / f"v{k}.log").read_text()
        procs["router"].send_signal(signal.SIGTERM)
        assert procs["router"].wait(timeout=30) == 0, (tmp_path / "router.log").read_text()
    finally:
        kill_left(procs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["auth"] == "mtls" and summary["refused"] == []
    res = summary["results"]["static"]
    assert res["valid"], res["invalid_reason"]  # every node's account reached the router
    assert all(n >= 1 for n in res["conversations_by_drafter"].values())
    assert res["tokens"] >= 20 * res["conversations"] > 0
    assert sum(res["routed"].values()) >= res["conversations"]
    # Each node measured its clock against the router's; drafter 1's is 2 s ahead.
    clocks = summary["clock_offset_ms"]
    assert set(clocks) == {"v0", "v1", "d0", "d1"}
    d1 = clocks["d1"]
    assert abs(d1["offset_ms"] + SKEW_MS) <= d1["uncertainty_ms"] + 1.0, d1
    # Every node's records are in the router's directory, on the router's clock, filed under
    # the node its certificate proved.
    t_router = [
        json.loads(line)["t"] for line in (run / "events-router.jsonl").read_text().splitlines()
    ]
    for node in ("d0", "d1", "v0", "v1"):
        recs = [
            json.loads(line) for line in (run / f"events-{node}.jsonl").read_text().splitlines()
        ]
        assert recs and all(r["node"] == node for r in recs)
        if node.startswith("d"):
            rounds = [r["t"] for r in recs if r["ev"] == "dsd_round"]
            assert rounds and min(t_router) - 1.0 < min(rounds) < max(t_router) + 5.0, node
    mine = (tmp_path / "d1" / "events-d1.jsonl").read_text().splitlines()
    assert len(mine) == len((run / "events-d1.jsonl").read_text().splitlines())


def test_a_connection_carries_only_the_messages_of_the_node_it_proved() -> None:
    check_sender(Route(drafter=3, conversation=1), drafter=3)
    with pytest.raises(RemoteProtocolError, match="Route on drafter 2's connection"):
        check_sender(Route(drafter=3, conversation=1), drafter=2)
    report = QueueReport(verifier=1, enqueued=0, busy=False, busy_left_ms=0.0)
    check_sender(report, verifier=1)
    with pytest.raises(RemoteProtocolError, match="QueueReport on verifier 0's connection"):
        check_sender(report, verifier=0)
    with pytest.raises(RemoteProtocolError, match="QueueReport on drafter 1's connection"):
        check_sender(report, drafter=1)
