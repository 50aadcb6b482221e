"""The command line as a user meets it: a subprocess, stdout JSON, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from emu.planner import evaluate, plan_for
from emu.scenario import load_scenario

ROOT = Path(__file__).parents[1]


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "emu.cli", *args]


def draftnet(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(args), capture_output=True, text=True, cwd=ROOT, timeout=timeout_s, check=False
    )


def draftnet_at_once(
    commands: Sequence[Sequence[str]], timeout_s: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """``draftnet(*args)`` for each of ``commands``, all started at once: for commands that
    measure nothing (refusals, most of whose time is a process's start-up), so that they
    share the cores instead of waiting for one another."""
    procs = [
        subprocess.Popen(
            _command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        for args in commands
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_solve_json_has_the_documented_fields() -> None:
    r = draftnet("solve", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is exactly one JSON object
    for key in ("policy", "users", "throughput_tok_s", "cycle_ms", "plan", "baselines", "solve_ms"):
        assert key in out
    assert set(out["baselines"]) >= {"ad", "ad_batch", "sd", "fixed"}
    assert sorted(u for b in out["plan"]["batches"] for u in b) == list(range(out["users"]))
    assert len(out["plan"]["draft_len"]) == out["users"]
    assert out["throughput_tok_s"] > out["baselines"]["ad_batch"]


def test_flags_override_the_scenario() -> None:
    r = draftnet(
        "solve", "scenarios/heterogeneous.toml", "--users", "3", "--policy", "fixed", "--json"
    )
    out = json.loads(r.stdout)
    assert (out["users"], out["policy"]) == (3, "fixed")
    assert set(out["plan"]["draft_len"]) == {7}


def test_set_overrides_any_field_after_the_flags() -> None:
    r = draftnet(
        "solve",
        "--users", "2",
        "--set", "users.count=5",
        "--set", "planner.policy=fixed",  # a bare word is a string
        "--set", "planner.fixed_draft_len=4",
        "--set", 'users.alpha = 0.6',
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["users"], out["policy"]) == (5, "fixed")
    assert set(out["plan"]["draft_len"]) == {4}
    bare = json.loads(draftnet("solve", "--users", "5", "--policy", "fixed", "--json").stdout)
    assert out["throughput_tok_s"] < bare["throughput_tok_s"]  # alpha 0.6 against 0.78


def test_human_output_goes_to_stderr() -> None:
    r = draftnet("solve")
    assert r.returncode == 0
    assert r.stdout == ""
    assert "ad-batch" in r.stderr and "tok/s" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "--alpha", "1.3"], "alpha must be in (0, 1), got 1.3"),
        (["solve", "--users", "0"], "users.count must be >= 1, got 0"),
        (["solve", "--policy", "magic"], "policy must be one of"),
        (["solve", "--users", "x"], "invalid int value: 'x'"),
        (["solve", "missing.toml"], "scenario file 'missing.toml' does not exist"),
        (["solve", "--users", "60000"], "users.count must be <= 2000"),
        (["solve", "--set", "users.count=abc"], "users.count must be of type int, got 'abc'"),
        (["solve", "--set", "users.colour=1"], "unknown field users.colour"),
        (["solve", "--set", "users.count"], "must be SECTION.FIELD=VALUE"),
        (["solve", "--set", "emu.shaping=netem"], "emu.shaping must be one of auto, tc,"),
        (["run", "--time-scale", "0.5"], "emu.time_scale must be 0 (auto) or in [1, 100]"),
        (["run", "--set", "network.jitter_ms=-1"], "network.jitter_ms must be"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    r = draftnet(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_infeasible_scenario_says_why(tmp_path: Path) -> None:
    f = tmp_path / "long.toml"
    f.write_text("[users]\nprefix_len = 60000\n")
    r = draftnet("solve", str(f))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "draftnet: error: user 0 does not fit in the edge's memory: target weights 47 GB + "
        "KV cache at prefix 60000 (78.6 GB) > edge.memory_bytes 80 GB"
    )


def test_study_writes_csv_and_plots(tmp_path: Path) -> None:
    """The study on a local cluster of two workers (not one a core: on a larger machine the
    start of more workers would be most of the run, for 37 solves), then again in this
    process, which reads back what the cluster kept."""
    r = draftnet(
        "study", "dipsd-paper", "--out", str(tmp_path), "--max-users", "6", "--workers", "2",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    head = json.loads(r.stdout)
    assert head["draftnet"]["speedup_vs_ad"] > 1
    for name in ("throughput_vs_users", "gain_vs_alpha", "optimised_vs_fixed"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        rows = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
        assert rows
    rows = list(csv.DictReader((tmp_path / "throughput_vs_users.csv").open()))
    assert [int(r["users"]) for r in rows] == list(range(1, 7))
    assert all(float(r["dipsd"]) >= float(r["fixed"]) * (1 - 1e-9) for r in rows)
    # the sweeps' values are the planner's own for the preset
    p = load_scenario(preset="dipsd-paper", overrides={"users.count": 3}).problem()
    assert float(rows[2]["dipsd"]) == evaluate(p, plan_for("dipsd", p)).throughput_tok_s
    fixed = list(csv.DictReader((tmp_path / "optimised_vs_fixed.csv").open()))
    p = load_scenario(
        preset="dipsd-paper", overrides={"users.count": 6, "planner.fixed_draft_len": 4}
    ).problem()
    assert float(fixed[3]["fixed"]) == evaluate(p, plan_for("fixed", p)).throughput_tok_s
    # its sweeps ran on the engine and are kept: started again, nothing is solved twice (in
    # this process, --workers 1: the kept sweeps are any engine's, and a local cluster's start
    # would be most of this run)
    before = {f.name: f.read_text() for f in tmp_path.glob("*.csv")}
    log = {f: f.read_text() for f in tmp_path.glob("sweeps/*/results.jsonl")}
    again = draftnet(
        "study", "dipsd-paper", "--out", str(tmp_path), "--max-users", "6", "--workers", "1",
        "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert {f.name: f.read_text() for f in tmp_path.glob("*.csv")} == before
    assert {f: f.read_text() for f in tmp_path.glob("sweeps/*/results.jsonl")} == log
    assert sorted(f.parent.name for f in log) == ["alpha", "fixed", "users"]


def test_sim_json_has_the_documented_fields(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = draftnet(
        "sim",
        "--preset",
        "dipsd-paper",
        "--policy",
        "dipsd",
        "--policy",
        "ad",
        "--duration",
        "20",
        "--out",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "sim" and set(doc["results"]) == {"dipsd", "ad"}
    for res in doc["results"].values():
        for key in (
            "throughput_tok_s",
            "predicted_tok_s",
            "acceptance_rate",
            "mean_accepted_len",
            "ttft_ms",
            "tpot_ms",
            "tokens",
            "rounds",
            "lossless",
        ):
            assert key in res
        assert set(res["ttft_ms"]) >= {"p50", "p95"}
    assert (
        doc["results"]["dipsd"]["throughput_tok_s"] > 5 * doc["results"]["ad"]["throughput_tok_s"]
    )
    lines = (out / "events.jsonl").read_text().splitlines()
    assert sum('"ev": "round"' in x for x in lines) == sum(
        res["rounds"] for res in doc["results"].values()
    )
    assert json.loads((out / "summary.json").read_text())["results"].keys() == {"dipsd", "ad"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--duration", "0"], "sim.duration_s"),
        (["--policy", "nope"], "--policy must be one of"),
        (["--seed", "-1"], "sim.seed"),
    ],
)
def test_sim_bad_input_is_one_line_and_status_2(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    r = draftnet("sim", *args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_channel_writes_traces_series_and_plots(tmp_path: Path) -> None:
    import numpy as np

    from channel_models.trace import from_mahimahi, rate_bps

    out = tmp_path / "ch"
    r = draftnet("channel", "--users", "5", "--duration", "3", "--json", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "channel" and len(doc["users"]) == 5
    for u in doc["users"]:
        assert {"distance_m", "los", "mean_sinr_db", "up_rate_bps", "down_rate_bps"} <= set(u)
        assert {"delay_ms", "loss"} <= set(u) and u["up_delay_ms"] > u["down_delay_ms"]
    for name in ("summary.json", "linkstates.npz", "scenario.toml", "timeseries.png", "cdf.png"):
        assert (out / name).stat().st_size > 0
    series = np.load(out / "linkstates.npz")
    assert series["up_rate_bps"].shape == (5, 300)
    # The delivery trace carries the rate the summary reports (within a packet a second).
    trace = from_mahimahi((out / "traces" / "user-0.up").read_text())
    assert rate_bps(trace).sum() / 3000 == pytest.approx(doc["users"][0]["up_rate_bps"], rel=0.02)
    # --no-plots (channel.plots = false): the same series and summary, and no plot.
    bare = tmp_path / "bare"
    r = draftnet("channel", "--users", "5", "--duration", "3", "--no-plots", "--json",
                 "--out", str(bare))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not list(bare.glob("*.png")) and "plots_s" not in json.loads(r.stdout)
    again = np.load(bare / "linkstates.npz")
    assert all(np.array_equal(series[k], again[k]) for k in series.files)


@pytest.mark.parametrize(
    ("radio", "needle"),
    [
        ("carrier_hz = 200e9", "radio.carrier_hz must be in [0.5, 100] GHz for TR 38.901"),
        ('scenario = "suburb"', "radio.scenario must be one of umi, uma, rma, inh"),
        ("bs_power_dbm = -5.0", "radio.bs_power_dbm must be in [0, 80] dBm"),
        ("bandwidth_hz = -1.0", "radio.bandwidth_hz must be > 0 Hz"),
        ("h_ut_m = 40.0", "radio.h_ut_m must be in [1.5, 22.5] m"),
        ("cell_radius_m = 9000.0", "user distance must be in [10, 5000] m"),
    ],
)
def test_channel_bad_input_is_one_line_and_status_2(
    radio: str, needle: str, tmp_path: Path
) -> None:
    (tmp_path / "s.toml").write_text(f"[radio]\n{radio}\n")
    r = draftnet("channel", str(tmp_path / "s.toml"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_unexpected_exception_is_one_line_status_1_and_a_logged_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from emu import cli

    def broken(args: object) -> dict[str, object]:
        cli._out_dir(args, "sim")  # type: ignore[arg-type]  # the run directory exists
        raise AssertionError("a bug deep inside")

    monkeypatch.setitem(cli.COMMANDS, "sim", broken)
    monkeypatch.setenv("DRAFTNET_HOME", str(tmp_path / "home"))
    assert cli.main(["sim", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "AssertionError: a bug deep inside" in err[0]
    log = tmp_path / "run" / "error.log"
    assert str(log) in err[0]
    assert "Traceback" in log.read_text() and "a bug deep inside" in log.read_text()
    # A command with no run directory logs under DRAFTNET_HOME.
    monkeypatch.setitem(cli.COMMANDS, "solve", lambda args: 1 / 0)
    assert cli.main(["solve"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ZeroDivisionError" in err[0]
    assert list((tmp_path / "home" / "logs").glob("error-*.log"))


def test_run_with_more_users_than_the_topology_addresses_is_one_line_and_status_2(
    tmp_path: Path,
) -> None:
    """Refused before anything is built (no root needed): one /24 per user in 10.1.0.0/16."""
    (tmp_path / "s.toml").write_text('[network]\nmodel = "fixed"\n[models]\nkind = "synthetic"\n')
    r = draftnet(
        "run",
        str(tmp_path / "s.toml"),
        *["--users", "251", "--duration", "1", "--time-scale", "1", "--policy", "dipsd"],
        *["--out", str(tmp_path / "run")],
        timeout_s=60,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "draftnet: error: users.count must be <= 250 for the star topology (one /24 per user "
        "in 10.1.0.0/16), got 251"
    )
