"""Study files: expansion into cases, validation, resumable runs, failures recorded."""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from emu.errors import ConfigError
from emu.sweep import DaskEngine, engine_for, expand, load_study, read_results, run_study
from emu.sweep.runner import case_rows
from emu.sweep.spec import Case, Study, builtin_studies
from emu.sweep.summary import plot_lines
from tests.test_cli import ROOT, draftnet

STUDY = """
name = "tiny"
level = "sim"
policies = ["dipsd", "ad-batch"]
seeds = [1, 2]
[base]
preset = "dipsd-paper"
[base.set]
"sim.duration_s" = 2.0
"models.kind" = "synthetic"
"network.model" = "fixed"
[axes]
"users.count" = { range = [2, 3, 1] }
"""


def _study(tmp_path: Path, text: str = STUDY) -> Study:
    (tmp_path / "study.toml").write_text(text)
    return load_study(tmp_path / "study.toml")


def test_axes_expand_to_their_cross_product_times_the_seeds(tmp_path: Path) -> None:
    study = _study(
        tmp_path,
        STUDY
        + '"network.jitter_ms" = [0.0, 5.0]\n'
        + '"network.rate_bps" = { log = [1e6, 1e8, 3] }\n'
        + '[[zip]]\n"users.comm_ms" = [5.0, 10.0]\n"network.loss" = [0.0, 0.01]\n',
    )
    cases = expand(study)
    assert len(cases) == 2 * 2 * 3 * 2 * 2  # users x jitter x rate x (comm, loss) x seeds
    assert sorted({c.point["users.count"] for c in cases}) == [2, 3]
    assert sorted({c.point["network.rate_bps"] for c in cases}) == pytest.approx([1e6, 1e7, 1e8])
    # zipped fields move together
    assert {(c.point["users.comm_ms"], c.point["network.loss"]) for c in cases} == {
        (5.0, 0.0),
        (10.0, 0.01),
    }
    first = cases[0]
    assert first.scenario.users.count == first.point["users.count"]
    assert first.scenario.network.jitter_ms == first.point["network.jitter_ms"]
    assert first.scenario.sim.seed == first.seed and first.scenario.sim.duration_s == 2.0
    # one id per case, the same in another expansion of the same study
    assert len({c.case_id for c in cases}) == len(cases)
    assert [c.case_id for c in expand(study)] == [c.case_id for c in cases]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            '"network.jitter_ms" = [0.0, -5.0]\n',
            r"case 2 \(users\.count=2, network\.jitter_ms=-5\.0, seed 1\): .*jitter",
        ),
        ('"network.colour" = [1]\n', r"case 0 \(.*\): unknown field network\.colour"),
        ('"users.alpha" = { range = [0.9, 0.5, 0.1] }\n', r"axes\.'users\.alpha' must be a list"),
    ],
)
def test_a_bad_axis_value_is_one_line_naming_the_case_and_field(
    tmp_path: Path, extra: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        expand(_study(tmp_path, STUDY + extra))


def test_bad_study_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"level must be one of solve, sim, run, got 'emulate'"):
        _study(tmp_path, STUDY.replace('level = "sim"', 'level = "emulate"'))
    policies = r"case 0 \(users\.count=2, seed 1\): policies must be one of dipsd's policies"
    with pytest.raises(ConfigError, match=policies):
        expand(_study(tmp_path, STUDY.replace('"ad-batch"', '"nope"')))
    with pytest.raises(ConfigError, match=r"zip\[0\]'s fields must have as many values each"):
        _study(tmp_path, STUDY + '[[zip]]\n"users.comm_ms" = [5.0]\n"network.loss" = [0, 1]\n')
    r = draftnet("sweep", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _table(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        timings = ("started_t", "ended_t", "solve_ms")  # when, and how long the host took
        for k in [k for k in row if k.endswith("wall_s") or k in timings]:
            del row[k]
    return sorted(rows, key=lambda r: (r["case_id"], r["policy"]))


def test_a_killed_sweep_resumes_with_only_the_rest_and_the_same_table(tmp_path: Path) -> None:
    study = _study(tmp_path)
    whole = run_study(study, tmp_path / "whole")
    assert (whole["cases"], whole["ran"], whole["failed"]) == (4, 4, 0)
    rows = _table(tmp_path / "whole")
    assert len(rows) == 8 and {r["policy"] for r in rows} == {"dipsd", "ad-batch"}
    assert all(float(r["throughput_tok_s"]) > 0 and r["tpot_ms.p95"] for r in rows)

    ran: list[int] = []

    def killed_at_the_third(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
        if len(ran) == 2:
            raise KeyboardInterrupt
        ran.append(case.index)
        return case_rows(study, case, where)

    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "resumed", run_case=killed_at_the_third)
    assert len(_table(tmp_path / "resumed")) == 4  # the two finished cases were kept

    again: list[int] = []

    def counted(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
        again.append(case.index)
        return case_rows(study, case, where)

    second = run_study(study, tmp_path / "resumed", run_case=counted)
    assert sorted(again) == [2, 3] and second["skipped"] == 2
    assert _table(tmp_path / "resumed") == rows


def test_a_failing_case_is_recorded_and_the_others_finish(tmp_path: Path) -> None:
    study = _study(tmp_path)

    def one_fails(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
        if case.index == 1:
            raise RuntimeError("the node fell over")
        return case_rows(study, case, where)

    out = run_study(study, tmp_path / "o", run_case=one_fails)
    assert (out["ran"], out["failed"]) == (4, 1)
    rows = _table(tmp_path / "o")
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and all("the node fell over" in r["error"] for r in failed)
    assert sum(r["status"] == "ok" for r in rows) == 6
    # started again, only the failed case runs (and its rows replace the failure's)
    again = run_study(study, tmp_path / "o")
    assert (again["ran"], again["skipped"]) == (1, 3)
    assert all(r["status"] == "ok" for r in _table(tmp_path / "o"))


def test_draftnet_sweep_runs_a_study_file_at_the_solve_level(tmp_path: Path) -> None:
    """On the default engine, a local Dask cluster (a worker per core): the same table as
    one case after another in this process."""
    (tmp_path / "s.toml").write_text(STUDY.replace('level = "sim"', 'level = "solve"'))
    r = draftnet("sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cases"] == 4 and "local Dask cluster" in out["engine"]
    rows = _table(tmp_path / "o")
    assert len(rows) == 8 and all(float(r["speedup.ad_batch"]) > 0 for r in rows)
    run_study(load_study(tmp_path / "s.toml"), tmp_path / "serial")
    assert _table(tmp_path / "serial") == rows
    for flags, needle in (
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--cluster", "tcp://127.0.0.1:9", "--workers", "2"], "--workers 2 is for the local"),
    ):
        bad = draftnet("sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "b"), *flags)
        assert bad.returncode == 2 and needle in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_the_summary_is_the_mean_and_a_95_percent_interval_over_seeds() -> None:
    """Three seeds at 10, 12 and 14 tok/s: mean 12, s = 2, half width t(0.975, 2) 2 / sqrt(3)
    = 4.303 x 1.1547 = 4.968; one seed: no interval; a failed seed is counted, not averaged."""
    from emu.sweep.summary import summarise

    rows = [
        {"users.count": 2, "policy": "p", "seed": s, "status": "ok", "throughput_tok_s": v}
        for s, v in ((1, 10.0), (2, 12.0), (3, 14.0))
    ]
    rows += [
        {"users.count": 3, "policy": "p", "seed": 1, "status": "ok", "throughput_tok_s": 9.0},
        {"users.count": 3, "policy": "p", "seed": 2, "status": "failed", "error": "x"},
    ]
    got = {r["users.count"]: r for r in summarise(rows, ["users.count"])}
    assert got[2]["throughput_tok_s.mean"] == pytest.approx(12.0)
    assert got[2]["throughput_tok_s.ci95"] == pytest.approx(4.303 * 2 / 3**0.5, rel=1e-3)
    assert (got[3]["n"], got[3]["failed"], got[3]["throughput_tok_s.mean"]) == (1, 1, 9.0)
    assert got[3]["throughput_tok_s.ci95"] != got[3]["throughput_tok_s.ci95"]  # NaN: one seed


def test_a_sweep_ends_with_its_summary_plots_and_report(tmp_path: Path) -> None:
    study = _study(tmp_path, STUDY + '[[plots]]\nx = "users.count"\ny = "throughput_tok_s"\n')
    run_study(study, tmp_path / "o")
    with (tmp_path / "o" / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4  # 2 user counts x 2 policies, each over 2 seeds
    assert all(r["n"] == "2" and float(r["throughput_tok_s.ci95"]) >= 0 for r in summary)
    assert (tmp_path / "o" / "throughput_tok_s-vs-users.count.png").stat().st_size > 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| users.count | policy | n | failed | throughput_tok_s.mean |" in report
    with pytest.raises(ConfigError, match=r"plots\[0\] must be \{x = <an axis field>"):
        _study(tmp_path, STUDY + '[[plots]]\nx = "users.alpha"\ny = "throughput_tok_s"\n')


# Cases for the engine's workers (which import them from this module, as a lab's hosts import
# draftnet): a case that sleeps, one that kills its worker.


def _sleeps(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
    # Long enough that two workers' cases overlap even on a loaded host (make test runs other
    # tests beside this one): at 0.5 s one such run's cases went one after the other.
    time.sleep(1.5)
    (where / "note.txt").write_text(f"case {case.index}")
    return [{"policy": p, "pid": os.getpid(), "tokens": case.index} for p in study.policies]


def _kills_its_worker(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
    if case.index == 1:
        os._exit(3)  # the worker process dies, as on a crash or an OOM kill
    return _sleeps(study, case, where)


def _overlapping(rows: list[dict[str, str]]) -> bool:
    spans = sorted({(float(r["started_t"]), float(r["ended_t"])) for r in rows})
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_workers() -> Iterator[DaskEngine]:
    with DaskEngine(workers=2) as engine:
        yield engine


def test_cases_run_in_parallel_on_a_local_dask_cluster(
    tmp_path: Path, two_workers: DaskEngine
) -> None:
    """Two worker processes: cases overlap in time, run in two processes, and their files
    come back into the output directory."""
    study = _study(tmp_path)
    out = run_study(study, tmp_path / "o", run_case=_sleeps, engine=two_workers)
    assert (out["ran"], out["failed"]) == (4, 0)
    rows = _rows(tmp_path / "o")
    assert len(rows) == 8 and len({r["pid"] for r in rows}) == 2
    assert _overlapping(rows)
    for case in expand(study):
        assert (tmp_path / "o" / "cases" / case.case_id / "note.txt").read_text() == (
            f"case {case.index}"
        )


def test_a_worker_that_dies_fails_its_case_and_the_others_finish(
    tmp_path: Path, two_workers: DaskEngine
) -> None:
    """The case that kills its worker is given to another worker once (which it kills too),
    then recorded as failed; the cluster replaces its workers and the other cases finish."""
    out = run_study(
        _study(tmp_path), tmp_path / "o", run_case=_kills_its_worker, engine=two_workers
    )
    assert (out["ran"], out["failed"]) == (4, 1)
    rows = _rows(tmp_path / "o")
    failed = {r["case"] for r in rows if r["status"] == "failed"}
    assert failed == {"1"}
    assert all("KilledWorker" in r["error"] for r in rows if r["status"] == "failed")


def test_emulation_cases_need_a_worker_with_the_emulation_resource(
    tmp_path: Path, two_workers: DaskEngine
) -> None:
    study = _study(tmp_path, STUDY.replace('level = "sim"', 'level = "run"'))
    with pytest.raises(ConfigError, match=r"level run needs a worker with the emulation resource"):
        run_study(study, tmp_path / "o", run_case=_sleeps, engine=two_workers)


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A cluster started as the README starts one on a lab's hosts: a scheduler, a worker for
    simulations and one worker with the emulation resource (here all on this machine)."""
    where = tmp_path_factory.mktemp("cluster")
    file = where / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    common = ["--scheduler-file", str(file), "--no-dashboard"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the workers import this test module
    procs = [subprocess.Popen([*dask, "scheduler", *common, "--port", "0"], cwd=where, env=env)]
    try:
        for _ in range(300):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        worker = [*dask, "worker", *common, "--nworkers", "1", "--nthreads", "1"]
        procs.append(subprocess.Popen(worker, cwd=where, env=env))
        procs.append(subprocess.Popen([*worker, "--resources", "emulation=1"], cwd=where, env=env))
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            # Each worker imports this module (and draftnet) now, not on its first case: a
            # worker's first case would start a second late, and the cases that should
            # overlap in time would not.
            client.run(importlib.import_module, __name__)
        yield address
    finally:
        for proc in procs[::-1]:
            proc.terminate()
            proc.wait(timeout=30)


def test_emulation_cases_run_one_at_a_time_on_the_worker_that_has_the_resource(
    tmp_path: Path, lab_cluster: str
) -> None:
    study = _study(tmp_path, STUDY.replace('level = "sim"', 'level = "run"'))
    with engine_for("run", cluster=lab_cluster) as engine:
        out = run_study(study, tmp_path / "o", run_case=_sleeps, engine=engine)
    assert (out["ran"], out["failed"]) == (4, 0) and "2 workers" in out["engine"]
    rows = _rows(tmp_path / "o")
    assert len({r["pid"] for r in rows}) == 1  # the emulation worker's
    assert not _overlapping(rows)
    # simulation cases take any worker: both of them, at once
    with engine_for("sim", cluster=lab_cluster) as engine:
        run_study(_study(tmp_path), tmp_path / "sim", run_case=_sleeps, engine=engine)
    rows = _rows(tmp_path / "sim")
    assert len({r["pid"] for r in rows}) == 2 and _overlapping(rows)


def test_a_cluster_that_does_not_answer_is_one_line() -> None:
    with (
        pytest.raises(ConfigError, match=r"--cluster tcp://127.0.0.1:9: no Dask scheduler"),
        DaskEngine(address="tcp://127.0.0.1:9", connect_timeout_s=1.0),
    ):
        pass


def test_an_interrupted_parallel_sweep_keeps_what_finished_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """Ctrl-C during a sweep on the local cluster: status 130, the finished cases' rows kept,
    every process it started gone; started again it runs only the rest."""
    longer = STUDY.replace('"sim.duration_s" = 2.0', '"sim.duration_s" = 20.0')
    (tmp_path / "s.toml").write_text(longer.replace("seeds = [1, 2]", "seeds = [1, 2, 3, 4]"))
    cmd = [sys.executable, "-m", "emu.cli", "sweep", str(tmp_path / "s.toml")]
    cmd += ["--out", str(tmp_path / "o"), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    for line in proc.stderr:
        said.append(line)
        if ": ok" in line:
            break
    started = psutil.Process(proc.pid).children(recursive=True)
    assert len(started) >= 2  # the cluster's processes
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(said) + rest
    assert "interrupted" in rest
    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == []
    kept = {r["case_id"] for r in read_results(tmp_path / "o") if r["status"] == "ok"}
    assert 1 <= len(kept) < 8
    again = draftnet("sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == len(kept)


def test_one_at_a_time_varies_each_axis_alone_around_the_base(tmp_path: Path) -> None:
    """The base point (4 users in the preset, no jitter), then each axis's values with the
    others at the base's; a value equal to the base's is the base point, run once."""
    study = _study(
        tmp_path,
        STUDY.replace('level = "sim"', 'level = "sim"\ndesign = "one-at-a-time"')
        .replace('"users.count" = { range = [2, 3, 1] }', '"users.count" = [2, 3]')
        .replace("[base.set]\n", '[base.set]\n"users.count" = 4\n')
        + '"network.jitter_ms" = [0.0, 5.0]\n',
    )
    got = [(c.point["users.count"], c.point["network.jitter_ms"]) for c in expand(study)[::2]]
    assert got == [(4, 0.0), (2, 0.0), (3, 0.0), (4, 5.0)]
    summary = [
        {"users.count": u, "network.jitter_ms": j, "policy": "p", "y.mean": u + j, "y.ci95": 0.1}
        for u, j in got
    ]
    at = {"users.count": 4, "network.jitter_ms": 0.0}
    axes = ["users.count", "network.jitter_ms"]
    # each axis's plot keeps the points where the other axis is at the base
    assert plot_lines(summary, axes, "users.count", "y", at=at) == {
        "p": [(2.0, 2.0, 0.1), (3.0, 3.0, 0.1), (4.0, 4.0, 0.1)]
    }
    assert plot_lines(summary, axes, "network.jitter_ms", "y", at=at) == {
        "p": [(0.0, 4.0, 0.1), (5.0, 9.0, 0.1)]
    }
    # a zipped group's line holds its own combinations, not the base's
    zipped = [
        {"net": net, "speed": v, "policy": "p", "y.mean": v, "y.ci95": 0.0}
        for net, v in (("fixed", 1.0), ("radio", 0.0), ("radio", 3.0))
    ]
    group = (("net", "speed"), (("radio", 0.0), ("radio", 3.0)))
    lines = plot_lines(
        zipped, ["net", "speed"], "speed", "y", groups=[group], at={"net": "fixed", "speed": 1.0}
    )
    assert lines == {"p": [(0.0, 0.0, 0.0), (3.0, 3.0, 0.0)]}
    with pytest.raises(ConfigError, match=r"design must be one of grid, one-at-a-time"):
        _study(tmp_path, STUDY.replace('level = "sim"', 'level = "sim"\ndesign = "random"'))


def test_recorded_traces_as_an_axis_are_found_beside_the_study(tmp_path: Path) -> None:
    """Two Mahimahi traces zipped as the users' up and down links, named relative to the
    study file: each case replays its own (the slow one, an opportunity every 40 ms, costs
    throughput), and the table names the trace."""
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "fast").write_text("".join(f"{ms}\n" for ms in range(1, 201)))
    (tmp_path / "traces" / "slow").write_text("".join(f"{ms}\n" for ms in range(40, 201, 40)))
    study = _study(
        tmp_path,
        STUDY.replace('"network.model" = "fixed"', '"network.model" = "trace"')
        .replace("seeds = [1, 2]", "seeds = [1]")
        .replace('"users.count" = { range = [2, 3, 1] }', "")
        + '[[zip]]\n"network.trace_up" = ["traces/fast", "traces/slow"]\n'
        + '"network.trace_down" = ["traces/fast", "traces/slow"]\n',
    )
    run_study(study, tmp_path / "o")
    rows = {
        Path(r["network.trace_up"]).name: float(r["throughput_tok_s"])
        for r in _rows(tmp_path / "o")
        if r["policy"] == "dipsd"
    }
    assert rows["slow"] < 0.8 * rows["fast"]
    assert all(Path(r["network.trace_up"]).is_absolute() for r in _rows(tmp_path / "o"))


def test_the_builtin_studies_are_valid_and_named_by_their_name(tmp_path: Path) -> None:
    assert builtin_studies() == [
        "dsd",
        "dsd-modes",
        "hetnet",
        "network-sensitivity",
        "network-sensitivity-emu",
    ]
    # One at a time, 3 seeds: 22 points, the base (scale 1, spread 1, jsq) once, not three times.
    assert len(expand(load_study("dsd"))) == 3 * (5 + 6 + 4 + 7 - 2)
    assert len(expand(load_study("dsd-modes"))) == 3 * 3 * 7
    sensitivity = load_study("network-sensitivity")
    assert sensitivity.design == "one-at-a-time" and sensitivity.level == "sim"
    cases = expand(sensitivity)  # every case of it validates
    assert {"users.comm_ms", "network.jitter_ms", "network.loss", "network.rate_bps"} <= set(
        cases[0].point
    )
    assert {"users.count", "radio.speed_mps"} <= set(cases[0].point)
    assert [
        c.point["network.jitter_ms"] for c in expand(load_study("network-sensitivity-emu"))
    ] == [
        0.0,
        5.0,
        20.0,
    ]
    r = draftnet("sweep", "no-such-study", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "built-in studies: dsd, dsd-modes, hetnet," in r.stderr, r.stderr
