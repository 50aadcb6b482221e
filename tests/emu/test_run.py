"""``draftnet run``, the main job, end to end: Mininet hosts, the shaper, the embedded models."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emu.runners.shapers import has_netem
from tests.emu.predicted import predicted_in
from tests.test_cli import ROOT, draftnet
from tests.test_results import SIM_AND_RUN, missing, parse
from tests.test_results import documented as documented_as

RUN = "and, for `run`, "

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.models,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")
pytest.importorskip("llama_cpp")


def test_two_users_with_the_embedded_models_end_to_end(tmp_path: Path) -> None:
    before = set(os.listdir("/sys/class/net"))
    out = tmp_path / "run"
    r = draftnet(
        "run",
        *["--users", "2", "--models", "embedded", "--duration", "4"],
        *["--policy", "dipsd", "--json", "--out", str(out)],
        # The time scale is the calibration's (auto): 2-3 here when quiet, more on a busy host,
        # and the run (the calibration, the policy, the greedy check) takes that much longer.
        # One policy: a run of several is the synthetic tests' and the lifecycle's. 4 s: some
        # 35 rounds and 70 tokens a run here, each token checked against the target's own
        # greedy decoding after the run (a pass of the target each).
        timeout_s=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["mode"] == "emu" and doc["models"] == "embedded"
    assert doc["shaping"] == ("tc" if has_netem() else "userspace") and doc["shaping_why"]
    assert [f["ok"] for f in doc["fidelity"]] == [True, True]
    for policy, res in doc["results"].items():
        assert res["deaths"] == [] and res["protocol_errors"] == 0, policy
        assert res["users_started"] == 2 and res["tokens"] > 10
        for key in ("throughput_tok_s", "predicted_tok_s", "ttft_ms", "tpot_ms"):
            assert key in res
        assert 0 < res["edge_utilisation"] <= 1
        # Every token the user processes committed equals the target's own greedy decoding.
        assert res["lossless"] is True, res["lossless_checked"]
        assert res["lossless_checked"]["tokens"] >= res["tokens"] > 10
    assert 0.2 < doc["results"]["dipsd"]["acceptance_rate"] < 0.98  # the pair's, not a setting
    for node in ("edge", "u0", "u1"):
        assert (out / "dipsd" / f"events-{node}.jsonl").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["results"].keys() == {"dipsd"}
    report = (out / "report.md").read_text()
    assert "| dipsd |" in report and "| u1<->edge |" in report
    assert (out / "throughput.png").stat().st_size > 0 and (out / "tpot_cdf.png").exists()
    assert set(os.listdir("/sys/class/net")) == before  # nothing left behind


def test_run_bad_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    cases = [(["--policy", "nope"], "--policy must be one of")]
    if not has_netem():  # the default cell's links have delay: HTB alone cannot give it
        cases.append((["--shaping", "tc"], "needs netem, which this kernel lacks"))
    for args, needle in cases:
        r = draftnet("run", *args, "--duration", "1", "--out", str(tmp_path / "x"))
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_radio_links_drive_the_emulation(tmp_path: Path) -> None:
    """Synthetic models over links that follow each user's radio series (the default cell)."""
    (tmp_path / "cell.toml").write_text('[models]\nkind = "synthetic"\n')
    out = tmp_path / "run"
    r = draftnet(
        "run",
        str(tmp_path / "cell.toml"),
        *["--users", "2", "--duration", "5", "--policy", "ad-batch"],
        *["--json", "--out", str(out)],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    # Each link probed at its series' mean state: the shaper gives what the radio says.
    assert [f["ok"] for f in doc["fidelity"]] == [True, True]
    rates = [f["configured"]["up_rate_bps"] for f in doc["fidelity"]]
    assert all(x > 1e5 for x in rates) and rates[0] != rates[1]  # each user its own radio
    assert (out / "channel" / "linkstates.npz").exists()
    res = doc["results"]["ad-batch"]
    assert res["users_started"] == 2 and res["deaths"] == [] and res["tokens"] > 10
    # Without drafts nothing is waited for: the verifier is busy but for the links' turns.
    assert res["pipeline_bubbles"] == 0 and res["bubble_s"] == 0
    assert res["edge_utilisation"] > 0.3


def test_sessions_survive_handovers_on_emulated_links(tmp_path: Path) -> None:
    """Users crossing a sectorised layout at 20 m/s hand over, each time with 30 ms of no link
    on the shaped path: their TCP sessions carry on, and rounds continue after each.

    The links are Shannon's, so that a handover's interruption is their only loss: with the NR
    abstraction, a cell edge of this layout loses 15-50% of the downlink's packets after HARQ,
    and whether a user's first round gets through in 8 s is then a matter of TCP's backoff (it
    failed CI twice that way, with no handover involved)."""
    toml = (
        '[network]\nmodel = "radio"\n[radio]\nsites = 7\nsectors = 3\nmobility = "linear"\n'
        'speed_mps = 20.0\nlink = "shannon"\n[models]\nkind = "synthetic"\n'
    )
    (tmp_path / "move.toml").write_text(toml)
    out = tmp_path / "run"
    r = draftnet(
        "run",
        str(tmp_path / "move.toml"),
        *["--users", "2", "--duration", "8", "--policy", "ad-batch"],
        *["--json", "--out", str(out)],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    channel = json.loads((out / "channel" / "summary.json").read_text())
    assert channel["handovers"] >= 1
    res = json.loads(r.stdout)["results"]["ad-batch"]
    assert res["users_started"] == 2 and res["deaths"] == [] and res["tokens"] > 10
    states = np.load(out / "channel" / "linkstates.npz")
    lossy = (states["down_loss"] > 0) | (states["up_loss"] > 0)
    assert lossy.sum() <= 4 * channel["handovers"]  # no loss but in the 30 ms interruptions
    events = [
        json.loads(line)
        for f in (out / "ad-batch").glob("events-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    # The links' time 0 on the records' clock (both the machine's monotonic clock): a late
    # first round (a user whose first message a handover delayed) moves nothing.
    stats = json.loads((out / "ad-batch" / "shaper-stats.json").read_text())
    origin = stats["origin_s"] / json.loads(r.stdout)["time_scale"]
    for user in range(2):
        rounds = [e["t"] for e in events if e.get("ev") == "round" and e.get("user") == user]
        assert min(rounds) > origin  # the links were shaped before the first round
        for at in states["t_s"][np.flatnonzero(np.diff(states["cell"][user])) + 1]:
            if at < 6.0:  # the workload runs 8 s after the links start: rounds went on after
                assert any(t - origin > at for t in rounds), (user, at)


def _run_synthetic(tmp_path: Path, toml: str, *extra: str) -> dict[str, Any]:
    """``draftnet run`` of dipsd, 2 users, 4 s, synthetic models, on ``toml``; its JSON."""
    (tmp_path / "s.toml").write_text(toml + '[models]\nkind = "synthetic"\n')
    r = draftnet(
        "run",
        str(tmp_path / "s.toml"),
        *["--users", "2", "--duration", "4", "--policy", "dipsd", *extra],
        *["--json", "--out", str(tmp_path / "run")],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(json.loads(r.stdout))


def test_the_tc_backend_runs_a_rate_only_cell(tmp_path: Path) -> None:
    """``--shaping tc`` on links with a rate and nothing netem would give (HTB alone here)."""
    doc = _run_synthetic(
        tmp_path,
        '[users]\ncomm_ms = 0.0\n[network]\nmodel = "fixed"\nrate_bps = 20e6\n',
        "--shaping",
        "tc",
    )
    assert doc["shaping"] == "tc"
    assert [f["ok"] for f in doc["fidelity"]] == [True, True]
    assert [f["measured"]["up_rate_bps"] for f in doc["fidelity"]] == [
        pytest.approx(20e6, rel=0.1)
    ] * 2
    res = doc["results"]["dipsd"]
    assert res["users_started"] == 2 and res["deaths"] == [] and res["tokens"] > 10
    stats = json.loads((tmp_path / "run" / "dipsd" / "shaper-stats.json").read_text())
    assert {"su0", "sd0", "su1", "sd1"} <= stats["links"].keys()
    assert stats["links"]["su0"]["sent"] > 0  # the workload went through the HTB classes


def test_recorded_traces_shape_the_users_links(tmp_path: Path) -> None:
    """Both ways a recorded Mahimahi trace (two opportunities a millisecond: 24.064 Mbit/s of
    1504-byte opportunities) under a 10 ms round trip: the userspace shaper runs it (``tc``
    cannot), the probe measures its rate, and the workload goes through it."""
    trace = tmp_path / "cell.trace"
    trace.write_text("".join(f"{ms}\n{ms}\n" for ms in range(1, 501)))
    doc = _run_synthetic(
        tmp_path,
        f'[users]\ncomm_ms = 10.0\n[network]\nmodel = "trace"\ntrace_up = "{trace}"\n'
        f'trace_down = "{trace}"\n',
    )
    assert doc["shaping"] == "userspace"  # tc cannot shape a trace
    for f in doc["fidelity"]:
        assert f["configured"]["up_rate_bps"] == pytest.approx(24.064e6)
        assert f["measured"]["up_rate_bps"] == pytest.approx(24.064e6, rel=0.1)
        assert f["measured"]["rtt_ms"] >= 10.0  # the delays, and the wait for opportunities
    res = doc["results"]["dipsd"]
    assert res["users_started"] == 2 and res["deaths"] == [] and res["tokens"] > 10
    stats = json.loads((tmp_path / "run" / "dipsd" / "shaper-stats.json").read_text())
    assert stats["links"]["su0"]["sent"] > 0 and stats["links"]["sd1"]["sent"] > 0


def test_a_time_scale_runs_slower_and_reports_in_modelled_time(tmp_path: Path) -> None:
    """Time scale 3: a 4 s run takes 12 s on the wall, its 3 ms links are shaped to 9 ms, and
    throughput, read in modelled time, is what the planner predicts."""
    doc = _run_synthetic(tmp_path, '[network]\nmodel = "fixed"\n', "--time-scale", "3")
    assert doc["time_scale"] == 3.0
    assert [f["configured"]["rtt_ms"] for f in doc["fidelity"]] == [pytest.approx(9.0)] * 2
    assert all(f["ok"] for f in doc["fidelity"])
    res = doc["results"]["dipsd"]
    assert res["span_s"] == pytest.approx(12.0, abs=1.0)  # on the wall
    assert res["steady_window_s"][1] - res["steady_window_s"][0] < 4.5  # on the nodes' clock
    assert res["deaths"] == [] and sum(res["overruns"].values()) == 0
    plans = [
        json.loads(line)
        for line in (tmp_path / "run" / "dipsd" / "events-edge.jsonl").read_text().splitlines()
        if '"ev": "plan"' in line
    ]
    # The edge measures its links in modelled time: 3 ms plus a little, not the 9 ms shaped.
    comm = [float(p["reason"].split()[-1]) for p in plans if "comm_ms drifted" in p["reason"]]
    assert all(c < 6.0 for c in comm)
    predicted = predicted_in(plans, res["steady_window_s"])
    assert res["throughput_tok_s"] == pytest.approx(predicted, rel=0.12)
    assert "Time scale 3" in (tmp_path / "run" / "report.md").read_text()


TWO_VERIFIERS = """
[users]
comm_ms = 20.0
[network]
model = "fixed"
[[deployment.nodes]]
name = "edge0"
role = "verifier"
[[deployment.nodes]]
name = "edge1"
role = "verifier"
[[deployment.nodes]]
name = "router"
role = "router"
site = "cloud"
[[deployment.links]]
ends = ["router", "edge1"]
delay_ms = 15.0
"""


def test_two_verifiers_behind_a_router_run_on_their_own_hosts(tmp_path: Path) -> None:
    """A deployment DiP-SD does not have: each user asks the router (its own host), which
    sends it on to its verifier (round robin by user); each verifier plans for its own users
    and the run measures what their plans predict together."""
    before = set(os.listdir("/sys/class/net"))
    doc = _run_synthetic(
        tmp_path, TWO_VERIFIERS, "--users", "4", "--duration", "10", "--time-scale", "1"
    )
    res = doc["results"]["dipsd"]
    documented = {**parse(documented_as(SIM_AND_RUN)), **parse("{" + documented_as(RUN) + "}")}
    assert missing(doc, documented) == []  # the JSON of ../shared/ARCHITECTURE.md
    assert doc["deployment"]["verifiers"] == {"edge0": [0, 2], "edge1": [1, 3]}
    assert doc["valid"] and res["deaths"] == [] and res["stalls"] == []
    assert res["users_started"] == 4 and res["faults"] == {} and res["protocol_errors"] == 0
    run = tmp_path / "run" / "dipsd"

    def records(node: str, ev: str) -> list[dict[str, Any]]:
        lines = (run / f"events-{node}.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["ev"] == ev]

    assert {r["user"]: r["to"] for r in records("router", "route")} == {
        0: "edge0", 1: "edge1", 2: "edge0", 3: "edge1"
    }  # fmt: skip
    for v, users in (("edge0", [0, 2]), ("edge1", [1, 3])):
        assert [p["users"] for p in records(v, "plan")][-1] == users
        assert {u for b in records(v, "batch") for u in b["users"]} == set(users)
    assert res["throughput_tok_s"] == pytest.approx(res["predicted_tok_s"], rel=0.15)
    # The link between two servers is shaped both ways (nothing crosses it yet: the router is
    # not on the drafts' path), and probed from each end: a shaped delay is never shorter.
    assert doc["deployment"]["links"] == ["router->edge1", "edge1->router"]
    probed = {f["link"]: f for f in doc["fidelity"]}
    assert set(probed) == {*(f"u{i}<->edge0" for i in range(4)), "router->edge1", "edge1->router"}
    for name in ("router->edge1", "edge1->router"):
        assert probed[name]["configured"]["rtt_ms"] == pytest.approx(30.0)
        assert probed[name]["measured"]["rtt_ms"] >= 30.0
    assert set(os.listdir("/sys/class/net")) == before


def test_a_killed_and_a_stalled_node_are_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    """Mid-run, user 1 is killed (SIGKILL) and user 2 stopped (SIGSTOP, alive but silent): the
    run finishes with user 0, records the death and the stall with each node's last output,
    says so in the report, and leaves nothing behind."""
    before = set(os.listdir("/sys/class/net"))
    (tmp_path / "s.toml").write_text('[network]\nmodel = "fixed"\n[models]\nkind = "synthetic"\n')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "emu.cli", "run", str(tmp_path / "s.toml"), "--users", "3"]
    cmd += ["--duration", "15", "--policy", "dipsd", "--json", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    events = out / "dipsd" / "events-u1.jsonl"
    deadline = time.monotonic() + 60
    while not (events.exists() and events.stat().st_size > 2000):  # the users are drafting
        assert time.monotonic() < deadline and proc.poll() is None, "user 1 never started"
        time.sleep(0.1)
    killed_at = time.monotonic()
    subprocess.run(
        ["pkill", "-9", "-f", r"emu\.runners\.node .*scenario\.toml user 1 --edge"], check=True
    )
    subprocess.run(
        ["pkill", "-STOP", "-f", r"emu\.runners\.node .*scenario\.toml user 2 --edge"], check=True
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    res = json.loads(stdout)["results"]["dipsd"]
    assert [(d["node"], d["exit"]) for d in res["deaths"]] == [("u1", -9)]
    assert 0 < res["deaths"][0]["t_s"] < 15
    assert [d["node"] for d in res["stalls"]] == ["u2"] and res["stalls"][0]["silent_s"] > 10
    # User 0 kept decoding after both: its rounds go on to the end of the run (the nodes'
    # clock is the machine's monotonic clock, which this process reads too).
    rounds = [
        json.loads(line)
        for line in (out / "dipsd" / "events-u0.jsonl").read_text().splitlines()
        if '"ev": "round"' in line
    ]
    assert max(r["t"] for r in rounds) > killed_at + 10.0
    report = (out / "report.md").read_text()
    assert "## Node deaths and stalls" in report and "- dipsd: u1 exited -9" in report
    assert "- dipsd: u2 stalled" in report
    assert set(os.listdir("/sys/class/net")) == before
    left = subprocess.run(["pgrep", "-f", r"emu\.runners\.node "], capture_output=True, check=False)
    assert left.returncode != 0, left.stdout  # no node process left, the stopped one included


def test_a_sweep_emulates_its_cases_one_after_another(tmp_path: Path) -> None:
    """``draftnet sweep`` at level ``run``: each case a real emulation (``draftnet run`` in a
    process of its own), one at a time on this host, its run directory under the case's."""
    (tmp_path / "study.toml").write_text(
        'name = "emulated"\nlevel = "run"\npolicies = ["dipsd"]\nseeds = [1]\n'
        '[base]\npreset = "default"\n[base.set]\n"models.kind" = "synthetic"\n'
        '"users.count" = 2\n"sim.duration_s" = 3.0\n"network.model" = "fixed"\n'
        '[axes]\n"users.comm_ms" = [0.0, 10.0]\n'
    )
    r = draftnet("sweep", str(tmp_path / "study.toml"), "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert (out["ran"], out["failed"]) == (2, 0) and out["engine"].startswith("one at a time")
    with (tmp_path / "o" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(int(r["tokens"]) > 10 and r["valid"] == "True" for r in rows)
    spans = sorted((float(r["started_t"]), float(r["ended_t"])) for r in rows)
    assert spans[0][1] <= spans[1][0]  # one emulation at a time on this host
    for row in rows:
        run = tmp_path / "o" / "cases" / row["case_id"] / "run"
        assert json.loads((run / "summary.json").read_text())["results"]["dipsd"]["valid"]
