"""The main job's report notes: overruns (with advice past 1% of rounds) and the lossless check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emu.results.runreport import idle_note, lossless_note, overrun_note


def _doc(overruns: int, rounds: int, scale: float = 1.0, **res: Any) -> dict[str, Any]:
    r = {"overruns": {"edge": overruns, "u0": 0}, "rounds": rounds, "lossless": None, **res}
    return {"timing": "profile", "time_scale": scale, "results": {"dipsd": r}}


def test_overruns_past_one_percent_advise_a_larger_time_scale() -> None:
    assert overrun_note(_doc(0, 900)) is None
    few = overrun_note(_doc(4, 900))
    assert few is not None and "0.4%" in few and "--time-scale" not in few
    many = overrun_note(_doc(36, 900, scale=2.0))
    assert many is not None and "4.0%" in many and "--time-scale 4" in many
    assert overrun_note({**_doc(36, 900), "timing": "real"}) is None  # nothing is padded


def test_the_lossless_note_names_each_checked_policy() -> None:
    assert lossless_note(_doc(0, 1)) is None  # synthetic models: nothing checked
    doc = _doc(0, 1, lossless=True, lossless_checked={"tokens": 1307})
    doc["results"]["ad"] = {"lossless": False, "lossless_checked": {"tokens": 12}}
    note = lossless_note(doc)
    assert note is not None
    assert "dipsd lossless (1307 tokens)" in note and "ad NOT lossless (12 tokens)" in note


def test_a_policy_that_committed_nothing_is_not_checked_and_is_flagged() -> None:
    from emu.models.build import check_sessions

    nothing = check_sessions([[], []], lambda prompt, tokens: None)
    assert nothing["lossless"] is None  # nothing compared is not a vacuous "lossless"
    doc = _doc(0, 0, throughput_tok_s=0.0, **nothing)
    doc["results"]["ad"] = {
        "lossless": True,
        "lossless_checked": {"tokens": 12},
        "throughput_tok_s": 5.0,
    }
    note = lossless_note(doc)
    assert note is not None
    assert "dipsd not checked (nothing committed)" in note and "ad lossless (12 tokens)" in note
    assert "lossless (0 tokens)" not in note
    flag = idle_note(doc)
    assert flag is not None and flag.startswith("NO THROUGHPUT: dipsd committed no token")
    doc["results"]["dipsd"]["throughput_tok_s"] = 3.0
    assert idle_note(doc) is None


def _run_doc(**dipsd: Any) -> dict[str, Any]:
    r = {
        "throughput_tok_s": 11.6,
        "predicted_tok_s": 30.0,
        "acceptance_rate": 0.6,
        "mean_accepted_len": 2.5,
        "ttft_ms": {"p50": 90.0, "p95": 150.0},
        "tpot_ms": {"p50": 80.0, "p95": 200.0},
        "late_drafts": 0,
        "overruns": {"edge": 0},
        "rounds": 100,
        "deaths": [],
        "valid": True,
        **dipsd,
    }
    return {
        "scenario": "default",
        "users": 2,
        "models": "synthetic",
        "timing": "profile",
        "shaping": "userspace",
        "duration_s": 30.0,
        "time_scale": 1.0,
        "fidelity": [],
        "valid": r["valid"],
        "partial": False,
        "results": {"dipsd": r},
    }


def test_an_invalid_policy_is_flagged_above_the_table_and_struck_through(
    tmp_path: Path,
) -> None:
    from emu.results.runreport import invalid_note, write_run_report

    assert invalid_note(_run_doc()) is None
    why = "the edge exited (status -9) at 3.0 s of 30 s"
    doc = _run_doc(valid=False, invalid_reason=why)
    note = invalid_note(doc)
    assert note is not None and note.startswith("NO THROUGHPUT: the run is INVALID: dipsd (")
    write_run_report(tmp_path, doc)
    report = (tmp_path / "report.md").read_text()
    head, table = report.split("## Results")
    assert f"**NO THROUGHPUT: the run is INVALID: dipsd ({why})" in head
    assert "| **dipsd (INVALID)** | ~~11.60~~ | 30.00 |" in table
    assert "| dipsd | 11.60 |" not in table


def test_a_partial_run_says_where_it_stopped_first() -> None:
    from emu.results.runreport import notes, partial_note

    doc = _run_doc(partial=True)
    assert partial_note(doc) is None  # the run's own flag, not a policy's
    doc["partial"] = True
    doc["stopped"] = {
        "signal": "SIGTERM",
        "phase": "running the workload",
        "policy": "dipsd",
        "t_s": 3.21,
        "not_run": ["ad"],
    }
    assert notes(doc)[0] == (
        "PARTIAL RUN: stopped by SIGTERM while running the workload (policy dipsd, at 3.2 s of "
        "30); not run: ad. The rows are what the nodes recorded until then."
    )


def test_edge_utilisation_and_bubbles_come_from_the_verifiers_records_in_the_window() -> None:
    from emu.results.metrics import Recorder

    rec = Recorder(None)
    rec.policy = "p"
    rec({"ev": "first_token", "t": 1.0, "user": 0, "ttft_ms": 50.0})
    rec({"ev": "prefill", "t": 0.9, "users": [0], "busy_ms": 400.0})  # before the window
    for k in range(10):  # ten batches of 50 ms in [1, 3]; every other one waited 20 ms
        rec({"ev": "batch", "t": 1.2 + 0.2 * k, "slot": 0, "users": [0], "late": [],
             "verify_ms": 50.0, "busy_ms": 50.0, "waited_ms": 20.0 * (k % 2),
             "padded_len": 4})  # fmt: skip
        rec({"ev": "round", "t": 1.2 + 0.2 * k, "user": 0, "drafted": 4, "accepted": 2,
             "committed": 3, "round_ms": 200.0})  # fmt: skip
    s = rec.summary("p", t_end=3.0, users=1)
    assert s.edge_utilisation == pytest.approx(10 * 0.05 / 2.0)
    assert s.pipeline_bubbles == 5 and s.bubble_s == pytest.approx(0.1)


def test_a_slot_whose_members_were_all_late_is_a_bubble() -> None:
    from emu.results.metrics import Recorder

    rec = Recorder(None)
    rec.policy = "p"
    rec({"ev": "first_token", "t": 1.0, "user": 0, "ttft_ms": 50.0})
    rec({"ev": "empty_slot", "t": 1.5, "slot": 1, "late": [0, 3], "waited_ms": 80.0})
    rec({"ev": "round", "t": 1.9, "user": 0, "drafted": 4, "accepted": 2, "committed": 3,
         "round_ms": 200.0})  # fmt: skip
    s = rec.summary("p", t_end=2.0, users=1)
    assert (s.pipeline_bubbles, s.bubble_s, s.late_drafts) == (1, 0.08, 2)
    assert s.batches == 0 and s.edge_utilisation == 0.0
