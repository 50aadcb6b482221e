"""The heterogeneous edge's lab roles as processes on loopback, started as a lab would start
them (``draftnet macro-cell``, ``draftnet small-cell``, ``draftnet user``), over mutual TLS
with user 1's clock 2 s ahead: the small cell plans, waits for every task's user, runs the
evaluator's rounds through the macro cell, and gathers every node's records and the summary."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from emu.lab.certs import init_lab
from tests.lab_processes import ROOT, await_ready, free_port, kill_left, start

SMALL = str(ROOT / "scenarios" / "hetnet-small.toml")
SKEW_MS = 2000.0
SETS = ["--set", "models.kind=synthetic", "--set", "hetnet.acceptance=expected"]


def test_the_hetnet_roles_run_as_lab_commands_and_the_small_cell_gathers_the_run(
    tmp_path: Path,
) -> None:
    lab = tmp_path / "lab"
    init_lab(lab, ["sbs", "mbs", "u0", "u1", "u2", "u3"])
    at = {n: f"127.0.0.1:{free_port()}" for n in ("sbs", "mbs")}
    run = tmp_path / "run"
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        procs["mbs"] = start("macro-cell", SMALL, *SETS, "--listen", at["mbs"], "--connect",
                              at["sbs"], "--lab", str(lab), log=tmp_path / "mbs.log")  # fmt: skip
        await_ready(procs["mbs"], tmp_path / "mbs.log")
        procs["sbs"] = start(
            "small-cell", SMALL, *SETS, "--listen", at["sbs"], "--connect", at["mbs"],
            "--lab", str(lab), "--out", str(run), "--json", log=tmp_path / "sbs.log",
        )  # fmt: skip
        await_ready(procs["sbs"], tmp_path / "sbs.log")
        for k in range(4):
            skew = ["--clock-skew-ms", str(SKEW_MS)] if k == 1 else []
            procs[f"u{k}"] = start(
                "user", SMALL, *SETS, "--id", str(k), "--connect", at["sbs"], "--lab", str(lab),
                *skew, "--json", log=tmp_path / f"u{k}.log",
            )  # fmt: skip
        assert procs["sbs"].wait(timeout=120) == 0, (tmp_path / "sbs.log").read_text()[-2000:]
        for k in range(4):
            assert procs[f"u{k}"].wait(timeout=30) == 0, (tmp_path / f"u{k}.log").read_text()
        procs["mbs"].send_signal(signal.SIGTERM)
        assert procs["mbs"].wait(timeout=30) == 0, (tmp_path / "mbs.log").read_text()
    finally:
        kill_left(procs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["auth"] == "mtls" and summary["refused"] == []
    res = summary["results"]["hetnet"]
    assert res["valid"] and res["finished"] == 4, res["invalid_reason"]
    assert res["rounds"] == res["predicted_rounds"]  # the evaluator's rounds, over the lab
    assert 0 < res["latency_ms"]["makespan"] < 10 * res["predicted_latency_ms"]["makespan"]
    clocks = summary["clock_offset_ms"]
    assert set(clocks) == {"mbs", "u0", "u1", "u2", "u3"}
    assert abs(clocks["u1"]["offset_ms"] + SKEW_MS) <= clocks["u1"]["uncertainty_ms"] + 1.0
    for node in ("sbs", "mbs", "u0", "u1"):
        recs = (run / f"events-{node}.jsonl").read_text().splitlines()
        assert recs and all(json.loads(r)["node"] == node for r in recs)
