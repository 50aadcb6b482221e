"""Typed results serialise to the JSON that ../shared/ARCHITECTURE.md documents: its field
lists are read from the document itself, so a field it names and the code drops fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from emu.results.metrics import Recorder
from emu.results.types import LinkCheck, RunResult, RunSummary
from emu.runners.sim import simulate
from emu.scenario import load_scenario

ARCHITECTURE = Path(__file__).resolve().parents[2] / "shared" / "ARCHITECTURE.md"
Fields = dict[str, Any]  # name -> its own fields (a dict), or None for a value


def parse(text: str) -> Fields:
    """The field tree of a documented shape such as ``{"a", "b": {"c"}, "d": [{"e"}]}``:
    quoted names are fields, ``POLICY`` stands for every key of its object, and a list's
    fields are those of its objects (a list of values has none)."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[A-Za-z_]+', text)
    pos = 0

    def obj() -> Fields:
        nonlocal pos
        assert tokens[pos] == "{"
        pos += 1
        out: Fields = {}
        while tokens[pos] != "}":
            name = tokens[pos].strip('"')
            pos += 1
            sub = None
            if tokens[pos] == ":":
                pos += 1
                sub = value()
            out[name] = sub
            if tokens[pos] == ",":
                pos += 1
        pos += 1
        return out

    def value() -> Fields | None:
        nonlocal pos
        if tokens[pos] == "{":
            return obj()
        if tokens[pos] == "[":
            depth, fields = 0, None
            while True:
                t = tokens[pos]
                if t == "{" and depth == 1 and fields is None:
                    fields = obj()
                    continue
                pos += 1
                depth += {"[": 1, "]": -1}.get(t, 0)
                if depth == 0:
                    return fields
        pos += 1
        return None

    return obj()


def documented(after: str) -> str:
    """The first code span after the sentence ``after`` in ARCHITECTURE.md."""
    if not ARCHITECTURE.exists():
        pytest.skip(f"{ARCHITECTURE} is not beside the checkout")
    text = ARCHITECTURE.read_text()
    at = text.index(after) + len(after)
    start = text.index("`", at) + 1
    return text[start : text.index("`", start)]


def missing(doc: Any, fields: Fields | None, where: str = "") -> list[str]:
    """The documented fields ``doc`` lacks, as dotted paths."""
    if fields is None:
        return []
    if isinstance(doc, list):
        return [m for item in doc for m in missing(item, fields, f"{where}[]")]
    out = []
    for name, sub in fields.items():
        if name == "POLICY":
            out += [m for k, v in doc.items() for m in missing(v, sub, f"{where}.{k}")]
        elif name not in doc:
            out.append(f"{where}.{name}")
        else:
            out += missing(doc[name], sub, f"{where}.{name}")
    return out


SIM_AND_RUN = "`sim --json` and `run --json` print at least:"


def test_the_parser_reads_the_documented_shapes() -> None:
    shape = parse('{"a", "r": {POLICY: {"x", "t": {"p50"}}}, "f": [{"l", "ok"}], "v": [x, ...]}')
    assert shape == {"a": None, "r": {"POLICY": {"x": None, "t": {"p50": None}}},
                     "f": {"l": None, "ok": None}, "v": None}  # fmt: skip
    assert missing({"a": 1, "r": {"p": {"x": 1, "t": {}}}, "f": [{"l": 1}], "v": []}, shape) == [
        ".r.p.t.p50",
        ".f[].ok",
    ]


def test_sim_json_has_every_documented_field() -> None:
    sc = load_scenario(preset="dipsd-paper", overrides={"sim.duration_s": 5.0, "users.count": 3})
    doc = simulate(sc, ["dipsd", "ad"])
    fields = parse(documented(SIM_AND_RUN))
    assert fields["results"] is not None and "throughput_tok_s" in fields["results"]["POLICY"]
    assert missing(doc, fields) == []


def test_a_run_result_has_every_documented_policy_field() -> None:
    rec = Recorder(None)
    rec.policy = "p"
    rec({"ev": "first_token", "t": 1.0, "user": 0, "ttft_ms": 50.0})
    rec({"ev": "round", "t": 1.5, "user": 0, "drafted": 4, "accepted": 2, "committed": 3,
         "round_ms": 200.0})  # fmt: skip
    res = RunResult(
        measured=rec.summary("p", t_end=2.0, users=1),
        predicted_tok_s=5.0,
        lossless=None,
        span_s=1.0,
    ).to_json()
    fields = parse(documented(SIM_AND_RUN))["results"]["POLICY"]
    assert missing(res, fields) == []
    assert res["lossless"] is None and res["valid"] is True and "invalid_reason" not in res
    assert list(res)[:2] == ["throughput_tok_s", "predicted_tok_s"]
    assert res["throughput_tok_s"] == pytest.approx(3 / 1.0)


def test_a_run_summary_has_every_documented_field_and_is_valid_while_every_result_is() -> None:
    rec = Recorder(None)
    rec.policy = "p"
    rec({"ev": "round", "t": 1.5, "user": 0, "drafted": 4, "accepted": 2, "committed": 3,
         "round_ms": 200.0})  # fmt: skip
    result = RunResult(measured=rec.summary("p", t_end=2.0, users=1), predicted_tok_s=5.0)
    check = LinkCheck(link="u0<->edge", configured={"rtt_ms": 3.0},
                      measured={"rtt_ms": 3.2}, ok=True)  # fmt: skip
    run = RunSummary(scenario="s", users=1, deployment={}, duration_s=2.0, shaping="userspace",
                     shaping_why="asked for", timing="profile", time_scale=1.0,
                     time_scale_why="given", models="synthetic", fidelity=(check,))  # fmt: skip
    run = run.with_result("dipsd", result)
    doc = run.to_json()
    fields = {**parse(documented(SIM_AND_RUN)), **parse("{" + documented("and, for `run`, ") + "}")}
    assert missing(doc, fields) == []
    assert doc["valid"] is True and "stopped" not in doc and doc["mode"] == "emu"
    void = RunResult(measured=result.measured, predicted_tok_s=5.0, valid=False,
                     invalid_reason="the edge exited")  # fmt: skip
    doc = run.with_result("ad", void).to_json()
    assert doc["valid"] is False and list(doc["results"]) == ["dipsd", "ad"]
    assert doc["fidelity"] == [{"link": "u0<->edge", "configured": {"rtt_ms": 3.0},
                                "measured": {"rtt_ms": 3.2}, "ok": True, "tries": 1}]  # fmt: skip


def test_the_run_json_documents_fidelity() -> None:
    text = ARCHITECTURE.read_text() if ARCHITECTURE.exists() else ""
    if not text:
        pytest.skip(f"{ARCHITECTURE} is not beside the checkout")
    fidelity = parse("{" + documented("and, for `run`, ") + "}")
    assert fidelity == {
        "fidelity": {"link": None, "configured": None, "measured": None, "ok": None}
    }
