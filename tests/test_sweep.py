"""Study files: expansion into cases, validation, resumable runs, failures recorded."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from emu.errors import ConfigError
from emu.sweep.runner import case_rows, run_study
from emu.sweep.spec import Case, Study, expand, load_study
from tests.test_cli import draftnet

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
    with pytest.raises(ConfigError, match=r"level must be one of solve, sim, got 'emulate'"):
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
        for k in [k for k in row if k.endswith("wall_s") or k == "attempt_t"]:
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
    (tmp_path / "s.toml").write_text(STUDY.replace('level = "sim"', 'level = "solve"'))
    r = draftnet("sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cases"] == 4
    rows = _table(tmp_path / "o")
    assert len(rows) == 8 and all(float(r["speedup.ad_batch"]) > 0 for r in rows)


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
