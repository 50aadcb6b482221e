"""``draftnet run``, the main job, end to end: Mininet hosts, the shaper, the embedded models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_cli import draftnet

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
        *["--users", "2", "--models", "embedded", "--duration", "12"],
        *["--policy", "dipsd", "--policy", "ad-batch", "--json", "--out", str(out)],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["mode"] == "emu" and doc["shaping"] == "userspace" and doc["models"] == "embedded"
    assert [f["ok"] for f in doc["fidelity"]] == [True, True]
    for policy, res in doc["results"].items():
        assert res["deaths"] == [] and res["protocol_errors"] == 0, policy
        assert res["users_started"] == 2 and res["tokens"] > 10
        for key in ("throughput_tok_s", "predicted_tok_s", "ttft_ms", "tpot_ms", "lossless"):
            assert key in res
    assert 0.2 < doc["results"]["dipsd"]["acceptance_rate"] < 0.98  # the pair's, not a setting
    for node in ("edge", "u0", "u1"):
        assert (out / "dipsd" / f"events-{node}.jsonl").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["results"].keys() == {"dipsd", "ad-batch"}
    report = (out / "report.md").read_text()
    assert "| dipsd |" in report and "| u1<->edge |" in report
    assert (out / "throughput.png").stat().st_size > 0 and (out / "tpot_cdf.png").exists()
    assert set(os.listdir("/sys/class/net")) == before  # nothing left behind


def test_run_bad_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    for args, needle in [
        (["--policy", "nope"], "--policy must be one of"),
        (["--shaping", "tc"], "--shaping tc needs netem"),
    ]:
        r = draftnet("run", *args, "--duration", "1", "--out", str(tmp_path / "x"))
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_radio_links_drive_the_emulation(tmp_path: Path) -> None:
    """Synthetic models over links that follow each user's radio series."""
    (tmp_path / "cell.toml").write_text('[network]\nmodel = "radio"\n')
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
