"""``draftnet run`` of DSD: a router, two verifiers and the drafters on Mininet hosts, every
(drafter, verifier) pair's link shaped, synthetic and real models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import draftnet

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")

# Short answers, so that a few modelled seconds see many conversations end to end.
TRACE = "40,24\n60,20\n32,28\n"


def _scenario(
    tmp_path: Path,
    *,
    drafters: int,
    duration_s: float,
    models: str,
    seed: int,
    mode: str = "distributed",
) -> Path:
    """A router, two verifiers (one a tier) and ``drafters`` drafters reaching both; the
    capability high enough that every drafter is dealt records, and the seed one whose deal
    gives every drafter its first record early in the run."""
    trace = tmp_path / "small.trace"
    trace.write_text(TRACE)
    path = tmp_path / "dsd-small.toml"
    path.write_text(f"""
name = "dsd-small"
[deployment]
system = "dsd"
[planner]
policy = "static"
[sim]
duration_s = {duration_s}
seed = {seed}
[models]
kind = "{models}"
[dsd]
drafters = {drafters}
fanout = 2
mode = "{mode}"
router = "jsq"
awc_weights = "hand-set"
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
""")
    return path


def _check(res: dict[str, Any], drafters: int) -> None:
    assert res["valid"], res["invalid_reason"]
    by = res["conversations_by_drafter"]
    assert isinstance(by, dict) and len(by) == drafters
    assert all(n >= 1 for n in by.values()), by  # every drafter finished conversations
    routed = res["routed"]
    assert isinstance(routed, dict) and routed["v0"] > 0 and routed["v1"] > 0  # both used
    assert res["faults"] == 0
    # Every paced node reports its overruns (how many is the host's load, not asserted).
    overruns = res["overruns"]
    assert isinstance(overruns, dict) and set(overruns) == {"v0", "v1", *by}
    assert res["steps_paced"] > 0


def test_synthetic_drafters_route_batch_and_finish_conversations_on_shaped_pairs(
    tmp_path: Path,
) -> None:
    """Four drafters, each pair's link shaped both ways and within tolerance; every drafter
    finishes conversations through both verifiers, with the simulation's figures, and the
    run's directory holds every node's records. Hybrid execution: a constant window of 4 is
    always distributed; AWC's hand-set head falls to 1 at these round times, and those rounds
    are fused (through the router, drafted on the verifier). ``[faults]`` cuts drafter 3's
    host off every other node from 1 s to 2 s: it has no round in that time (but one in flight
    when its link was cut), and goes on once its link is back. (Four drafters, not eight:
    each pair's probe and each drafter's process are paid for at every run, and four already
    route through both verifiers.)"""
    before = set(os.listdir("/sys/class/net"))
    out = tmp_path / "run"
    sc = _scenario(tmp_path, drafters=4, duration_s=4.0, models="synthetic", seed=3, mode="hybrid")
    with sc.open("a") as f:
        f.write("[faults]\noutages = [{user = 3, at_s = 1.0, for_s = 1.0}]\n")
    r = draftnet(
        "run", str(sc), "--policy", "static", "--policy", "awc", "--json", "--out", str(out),
        timeout_s=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert (doc["mode"], doc["system"], doc["drafters"], doc["verifiers"]) == ("emu", "dsd", 4, 2)
    assert doc["time_scale"] == 3.0  # synthetic models' default
    pairs = [f["link"] for f in doc["fidelity"]]
    assert sorted(pairs) == sorted(f"d{i}->v{k}" for i in range(4) for k in range(2))
    assert all(f["ok"] for f in doc["fidelity"]), doc["fidelity"]
    for policy, res in doc["results"].items():
        _check(res, 4)
        assert res["lossless"] is None  # synthetic tokens: nothing to compare
        assert res["conversations"] == sum(res["conversations_by_drafter"].values())
        assert res["tokens"] >= 20 * res["conversations"]  # each answer is 20 to 28 tokens
        assert 0.5 < res["acceptance_rate"] < 0.95  # the curve's at these contexts
        assert 0 < res["ttft_ms"]["p50"] <= res["ttft_ms"]["p95"]
        assert 0 < res["tpot_ms"]["p50"] <= res["tpot_ms"]["p95"]
        assert all(0 < u <= 1 for u in res["verifier_utilisation"].values())
        for node in ("router", "v0", "v1", "d0", "d3"):
            assert (out / policy / f"events-{node}.jsonl").exists()
    static, awc = doc["results"]["static"], doc["results"]["awc"]
    assert static["mean_window"] == 4.0 and static["fused_rounds"] == 0
    assert 0 < awc["fused_rounds"] < awc["rounds"] and awc["mean_window"] < 4.0
    assert json.loads((out / "summary.json").read_text())["results"].keys() == {"static", "awc"}
    assert set(os.listdir("/sys/class/net")) == before
    assert [(f["kind"], f["target"], f["at_s"]) for f in static["faults_injected"]] == [
        ("cut", "u3", 1.0),
        ("restore", "u3", 2.0),
    ]
    t0 = float((out / "static" / "start_at").read_text())  # the records' clock: modelled
    lines = (out / "static" / "events-d3.jsonl").read_text().splitlines()
    cut = [e["t"] - t0 for e in map(json.loads, lines) if e["ev"] == "dsd_round"]
    assert not [t for t in cut if 1.3 < t < 2.0], cut  # a round is ~0.1 s: none but in flight
    assert any(t > 2.0 for t in cut), cut


@pytest.mark.models
def test_real_models_over_the_emulated_network_are_lossless(tmp_path: Path) -> None:
    """Two drafters draft with llama.cpp, two verifiers batch and verify with transformers,
    over TCP between Mininet hosts, in hybrid execution under AWC (distributed rounds at its
    default window, fused ones once it falls to 1): every conversation's tokens are the
    target's own greedy decoding. (Two drafters, not eight: each pair's probe, each real
    drafter's start and each conversation's greedy check take a 2-core machine seconds; two
    drafters on two verifiers are already many-to-many.)"""
    pytest.importorskip("llama_cpp")
    sc = _scenario(tmp_path, drafters=2, duration_s=2.0, models="embedded", seed=8, mode="hybrid")
    r = draftnet(
        "run", str(sc), "--policy", "awc", "--json", "--out", str(tmp_path / "run"),
        timeout_s=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["models"]["kind"] == "embedded"
    res = doc["results"]["awc"]
    _check(res, 2)
    assert 0 < res["fused_rounds"] < res["rounds"]
    assert res["lossless"] is True, res["lossless_checked"]
    assert res["lossless_checked"]["tokens"] == res["tokens"] > 40
    assert 0.2 < res["acceptance_rate"] < 0.98  # the pair's own
