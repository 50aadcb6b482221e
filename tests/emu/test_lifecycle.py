"""``draftnet run``'s lifecycle: a signal tears it down and still reports, a runner killed by
SIGKILL leaves nothing running, an edge that dies makes the run fail, and ``clean`` removes
what a run recorded and nothing else. Short runs: synthetic models, fixed links, time scale 1."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import ROOT

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")
pytest.importorskip("pyroute2")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DRAFTNET_HOME": str(tmp_path / "home")}


Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(duration_s, *policies)``: a ``draftnet run`` of 2 users in ``tmp_path/run``; one
    still running when the test ends (it failed) is stopped with SIGINT and waited for."""
    procs: list[subprocess.Popen[str]] = []

    def run(duration_s: float, *policies: str) -> subprocess.Popen[str]:
        scenario = tmp_path / "s.toml"
        scenario.write_text('[network]\nmodel = "fixed"\n[models]\nkind = "synthetic"\n')
        cmd = [sys.executable, "-m", "emu.cli", "run", str(scenario), "--users", "2"]
        cmd += ["--duration", str(duration_s), "--time-scale", "1", "--json"]
        cmd += [a for p in policies for a in ("--policy", p)] + ["--out", str(tmp_path / "run")]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)


def _drafting(proc: subprocess.Popen[str], out: Path, policy: str = "dipsd") -> None:
    """Wait until the users are drafting."""
    events = out / policy / "events-u1.jsonl"
    deadline = time.monotonic() + 60
    while not (events.exists() and events.stat().st_size > 2000):
        assert time.monotonic() < deadline and proc.poll() is None, "user 1 never started"
        time.sleep(0.1)


def _start_time(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _world() -> dict[str, set[Any]]:
    """The machine's interfaces, network namespaces in use, and Mininet host shells."""
    namespaces, shells = set(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                namespaces.add(os.readlink(entry / "ns" / "net"))
                if b"mininet:" in (entry / "cmdline").read_bytes():
                    shells.add(int(entry.name))
            except OSError:
                continue
    return {"interfaces": set(os.listdir("/sys/class/net")), "netns": namespaces, "shells": shells}


def _nothing_left(out: Path, before: dict[str, set[Any]]) -> None:
    """No process the run recorded lives (given a few seconds to finish dying: a process that
    closes interfaces waits for the kernel's lock), none names its directory, and no
    namespace, shell or interface is new."""
    recorded = json.loads((out / "manifest.json").read_text())["processes"]
    assert {p["what"] for p in recorded} >= {"host ap", "node edge", "node u1"}
    deadline = time.monotonic() + 10
    while alive := [p for p in recorded if _start_time(p["pid"]) == p["start"]]:
        assert time.monotonic() < deadline, alive
        time.sleep(0.1)
    mine = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True, check=False)
    assert mine.stdout == ""  # no node, shaper or mnexec naming the run's directory
    after = _world()
    for key, was in before.items():
        assert after[key] <= was, (key, after[key] - was)


def test_sigterm_tears_down_and_writes_a_partial_summary_and_report(
    tmp_path: Path, start: Start
) -> None:
    before = _world()
    out = tmp_path / "run"
    proc = start(30, "dipsd", "ad")
    _drafting(proc, out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last and "dipsd" in last and str(out) in last
    assert "Traceback" not in stderr and stdout == ""
    doc = json.loads((out / "summary.json").read_text())
    assert doc["partial"] is True
    assert doc["stopped"]["signal"] == "SIGTERM" and doc["stopped"]["policy"] == "dipsd"
    assert doc["stopped"]["not_run"] == ["ad"] and 0 < doc["stopped"]["t_s"] < 30
    res = doc["results"]["dipsd"]  # what the nodes recorded until then
    assert res["partial"] is True and res["tokens"] > 10 and res["throughput_tok_s"] > 0
    report = (out / "report.md").read_text()
    assert "**PARTIAL RUN: stopped by SIGTERM" in report and "| dipsd (partial) |" in report
    _nothing_left(out, before)
    assert list((tmp_path / "home" / "active").iterdir()) == []  # torn down: nothing to clean


def test_an_edge_killed_mid_run_makes_the_run_invalid_and_fail(
    tmp_path: Path, start: Start
) -> None:
    out = tmp_path / "run"
    proc = start(30, "dipsd")
    _drafting(proc, out)
    edge = f"emu\\.runners\\.node {out}/dipsd/scenario\\.toml edge --port"
    killed_at = time.monotonic()
    subprocess.run(["pkill", "-9", "-f", edge], check=True)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - killed_at < 20  # the policy ends with its edge, not at 30 s
    assert proc.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("draftnet: invalid run: dipsd: the edge exited (status -9)"), last
    for doc in (json.loads(stdout), json.loads((out / "summary.json").read_text())):
        assert doc["valid"] is False and doc["results"]["dipsd"]["valid"] is False
        assert "the edge exited" in doc["results"]["dipsd"]["invalid_reason"]
    report = (out / "report.md").read_text()
    head = report.split("## Results")[0]
    assert "the run is INVALID: dipsd (the edge exited" in head  # above the table
    assert "| **dipsd (INVALID)** | ~~" in report  # its throughput struck through


def test_a_runner_killed_leaves_nothing_and_clean_touches_only_what_runs_recorded(
    tmp_path: Path, start: Start
) -> None:
    before = _world()
    out = tmp_path / "run"
    proc = start(30, "dipsd")
    _drafting(proc, out)
    proc.kill()  # SIGKILL: no teardown at all
    proc.communicate(timeout=10)
    _nothing_left(out, before)  # every process it started died with it
    active = tmp_path / "home" / "active"
    (killed,) = active.iterdir()  # its manifest is left for clean

    # A run killed before its processes had the parent-death signal, as written down.
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    recycled = subprocess.Popen(["sleep", "301"], start_new_session=True)  # a pid reused
    link = f"dn-{secrets.token_hex(3)}"
    subprocess.run(
        ["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"], check=True
    )
    made = tmp_path / "made.tmp"
    made.write_text("")
    gone_runner = {"pid": leftover.pid, "start": 1, "argv": []}  # not this process: dead
    (active / "fake.json").write_text(
        json.dumps(
            {
                "run_id": "fake",
                "runner": gone_runner,
                "processes": [
                    {"pid": leftover.pid, "start": _start_time(leftover.pid), "what": "node u0",
                     "match": "sleep 300"},
                    {"pid": recycled.pid, "start": 1, "what": "node u1", "match": "sleep 301"},
                ],
                "made": [{"kind": "interface", "name": link, "where": "root"}],
                "files": [str(made)],
            }
        )
    )  # fmt: skip
    me = {"pid": os.getpid(), "start": _start_time(os.getpid()), "argv": []}
    (active / "live.json").write_text(json.dumps({"run_id": "live", "runner": me}))
    tag = secrets.token_hex(4)
    decoys = [Path(f"/tmp/decoy-{tag}.log"), Path(f"/tmp/decoy-{tag}.out")]
    for d in decoys:
        d.write_text("not draftnet's")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "emu.cli", "clean", "--json"],
            cwd=ROOT,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        removed = json.loads(r.stdout)["removed"]
        assert f"run {killed.stem}: nothing of it was left" in removed
        assert f"run fake: killed node u0 (pid {leftover.pid})" in removed
        assert f"run fake: deleted interface {link}" in removed
        assert f"run fake: removed {made}" in removed
        assert f"run live is running (pid {os.getpid()}): left alone" in removed
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert recycled.poll() is None  # same pid, another process: not killed
        assert link not in os.listdir("/sys/class/net") and not made.exists()
        assert all(d.read_text() == "not draftnet's" for d in decoys)
        assert sorted(p.name for p in active.iterdir()) == ["live.json"]
    finally:
        for d in decoys:
            d.unlink(missing_ok=True)
        for p in (leftover, recycled):
            p.kill()
            p.wait()
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


def test_an_emulation_sweep_stopped_by_ctrl_c_tears_its_case_down(tmp_path: Path) -> None:
    """Ctrl-C at a terminal (SIGINT to the foreground group: ``draftnet sweep`` and the
    ``draftnet run`` of its case) while a case emulates: the case's network comes down before
    the sweep exits with 130, and nothing of it is left."""
    before = _world()
    (tmp_path / "study.toml").write_text(
        'level = "run"\npolicies = ["dipsd"]\nseeds = [1, 2]\n[base]\npreset = "default"\n'
        '[base.set]\n"models.kind" = "synthetic"\n"network.model" = "fixed"\n'
        '"users.count" = 2\n"sim.duration_s" = 30.0\n"emu.time_scale" = 1.0\n'
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "emu.cli", "sweep", str(tmp_path / "study.toml")]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "o")],
        cwd=ROOT,
        env={**_env(tmp_path), "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (runs := list(scratch.glob("draftnet-case-*/run"))):
            assert time.monotonic() < deadline and proc.poll() is None, "no case started"
            time.sleep(0.1)
        _drafting(proc, runs[0])
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 10  # a process closing interfaces waits for the kernel
    while (after := _world()) and any(not after[k] <= was for k, was in before.items()):
        assert time.monotonic() < deadline, {k: after[k] - was for k, was in before.items()}
        time.sleep(0.1)
    assert list(scratch.iterdir()) == []  # the case's scratch directory went with it
