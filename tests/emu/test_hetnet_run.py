"""``draftnet run`` of the heterogeneous edge: the users, the small cell and the macro cell on
Mininet hosts, the uplinks and the fronthaul shaped, synthetic and real models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from emu.scenario import load_scenario
from tests.test_cli import ROOT, draftnet

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")

SMALL = str(ROOT / "scenarios" / "hetnet-small.toml")


def test_synthetic_nodes_run_the_evaluators_rounds_on_shaped_links(tmp_path: Path) -> None:
    """With the evaluator's rounds (expected acceptance), each policy's nodes finish every
    task with the rounds the evaluator counts, over links within tolerance; drafting beats the
    target alone as predicted, in one run; nothing is left behind."""
    before = set(os.listdir("/sys/class/net"))
    out = tmp_path / "run"
    r = draftnet(
        "run", SMALL, "--set", "models.kind=synthetic", "--set", "hetnet.acceptance=expected",
        "--policy", "hetnet", "--policy", "hetnet-ad", "--json", "--out", str(out),
        timeout_s=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert (doc["mode"], doc["system"], doc["tasks"]) == ("emu", "hetnet", 4)
    assert doc["time_scale"] == 3.0  # synthetic models' default
    links = [f["link"] for f in doc["fidelity"]]
    assert links == ["u0<->sbs", "u1<->sbs", "u2<->sbs", "u3<->sbs", "sbs->mbs", "mbs->sbs"]
    assert all(f["ok"] for f in doc["fidelity"]), doc["fidelity"]
    sc = load_scenario(SMALL)
    wanted = sum(t.output_len for t in sc.hetnet_problem().tasks)
    for policy, res in doc["results"].items():
        assert res["valid"] and res["finished"] == 4, (policy, res["invalid_reason"])
        assert res["rounds"] == res["predicted_rounds"], policy
        assert res["tokens"] == wanted and res["user_faults"] == 0
        assert set(res["breakdown_ms"]) == {"upload_wait", "draft", "fronthaul", "verify", "queue"}
        for node in ("sbs", "mbs", "u0", "u3"):
            assert (out / policy / f"events-{node}.jsonl").exists()
    sd, ad = (doc["results"][p]["latency_ms"]["mean"] for p in ("hetnet", "hetnet-ad"))
    assert sd < ad  # as the evaluator predicts
    assert json.loads((out / "summary.json").read_text())["results"].keys() == {
        "hetnet",
        "hetnet-ad",
    }
    assert set(os.listdir("/sys/class/net")) == before


def test_two_small_cells_share_the_macro_cell_on_shaped_links(tmp_path: Path) -> None:
    """Two small cells (``hetnet.radio``): a host, a node and a fronthaul each, their users
    attached to them, one macro cell verifying for both; the users arrive over time, each
    window planned as it closes, and upload over Rayleigh-faded links; every task ends with the
    evaluator's rounds, its latency from its arrival."""
    out = tmp_path / "run"
    radio = ["hetnet.radio.small_cells=2", "hetnet.radio.spacing_m=300", "hetnet.radio.far_m=100",
             'hetnet.radio.fading="rayleigh"']  # fmt: skip
    arrivals = ['hetnet.arrivals.process="trace"', "hetnet.arrivals.times_s=[0, 0.2, 0.5, 0.9]",
                "hetnet.arrivals.window_s=0.4"]  # fmt: skip
    sets = [x for s in ["models.kind=synthetic", "hetnet.acceptance=expected", *radio, *arrivals]
            for x in ("--set", s)]  # fmt: skip
    r = draftnet(
        "run", SMALL, *sets, "--policy", "hetnet", "--json", "--out", str(out), timeout_s=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    links = [f["link"] for f in doc["fidelity"]]
    assert links[-4:] == ["sbs0->mbs", "mbs->sbs0", "sbs1->mbs", "mbs->sbs1"], links
    assert all(f["ok"] for f in doc["fidelity"]), doc["fidelity"]
    res = doc["results"]["hetnet"]
    assert res["valid"] and res["finished"] == 4, res["invalid_reason"]
    assert res["rounds"] == res["predicted_rounds"]
    assert abs(res["error_pct"]) < 10.0, res["error_pct"]
    assert {c for c in res["plan"]["cell"]} == {0, 1}
    assert res["plan"]["opens_ms"] == [0.0, 400.0, 800.0, 1200.0]
    assert res["latency_ms"]["makespan"] > 1200.0  # the last user arrived at 0.9 s
    for node in ("sbs0", "sbs1", "mbs"):
        assert (out / "hetnet" / f"events-{node}.jsonl").exists()
    # Each uplink followed its faded series (its rate varies), the downlinks fixed.
    shaped = json.loads((out / "hetnet" / "shaper.json").read_text())
    assert sum("series" in link for link in shaped["links"]) == 4, shaped
    rates = np.load(out / "hetnet" / "uplinks.npz")["up_rate_bps"]
    assert rates.shape[0] == 4 and (rates.std(axis=1) > 0.02 * rates.mean(axis=1)).all()


def test_a_users_outage_holds_its_task_until_the_link_is_back(tmp_path: Path) -> None:
    """``[faults]``'s outage of task 1's user from 0.1 s to 1.1 s: its task cannot end before
    its link is back, and every task ends."""
    out = tmp_path / "run"
    r = draftnet(
        "run", SMALL, "--set", "models.kind=synthetic", "--set", "hetnet.acceptance=expected",
        "--set", "faults.outages=[{user = 1, at_s = 0.1, for_s = 1.0}]",
        "--policy", "hetnet", "--json", "--out", str(out), timeout_s=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)["results"]["hetnet"]
    assert res["valid"] and res["finished"] == 4, res["invalid_reason"]
    assert [f["kind"] for f in res["faults_injected"]] == ["cut", "restore"]
    assert res["predicted_latency_ms"]["makespan"] < 1000.0  # without the outage: all done
    task = json.loads((out / "hetnet" / "node-u1.json").read_text())
    assert task["latency_ms"] > 1100.0


@pytest.mark.models
def test_real_models_over_the_emulated_network_are_lossless(tmp_path: Path) -> None:
    """The small cell drafts with llama.cpp for each batch, the macro cell verifies with
    transformers, over TCP between Mininet hosts: every task's tokens are the target's own
    greedy decoding. (Answers of 12 to 20 tokens, not the scenario's 12 to 30: at least 36
    tokens to check, and each a pass of the target after the run.)"""
    pytest.importorskip("llama_cpp")
    r = draftnet(
        "run", SMALL, "--users", "3", "--set", "hetnet.output_len=[12, 20]", "--json",
        "--out", str(tmp_path / "run"), timeout_s=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["models"]["kind"] == "embedded" and doc["time_scale"] == 10.0
    res = doc["results"]["hetnet"]
    assert res["valid"] and res["finished"] == 3, res["invalid_reason"]
    assert res["lossless"] is True, res["lossless_checked"]
    assert res["lossless_checked"]["tokens"] == res["tokens"] > 30
    assert 0.2 < res["acceptance_rate"] < 0.98  # the pair's own
