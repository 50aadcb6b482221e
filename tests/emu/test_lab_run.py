"""Lab mode on this machine without a lab: the roles started with the lab's commands, each in
its own Mininet host (its own network namespace), talking mutual TLS over shaped links, one
node's clock 2 s off. The edge's run directory ends with every node's records on its clock.

Needs root, mnexec (Debian's mininet) and the Mininet Python API; CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")

from emu.lab.certs import init_lab  # noqa: E402
from emu.runners.network import star_network, userspace_shaping  # noqa: E402
from emu.scenario import load_scenario, scenario_toml  # noqa: E402
from emu.shaping.spec import LinkPair, LinkSpec  # noqa: E402

SKEW_MS = 2000.0


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_roles_started_by_hand_over_mutual_tls_line_up_on_the_edges_clock(
    tmp_path: Path,
) -> None:
    sc = load_scenario(
        overrides={"users.count": 2, "models.kind": "synthetic", "network.model": "fixed"}
    )
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(scenario_toml(sc))
    creds, run = tmp_path / "creds", tmp_path / "run"
    init_lab(creds, ["edge", "u0", "u1"])
    draftnet = [sys.executable, "-m", "emu.cli"]
    lab = ["--lab", str(creds)]
    link = LinkSpec.fixed(delay_ms=2.0, rate_bps=50e6)
    with star_network(2) as nw, userspace_shaping(nw, [LinkPair.both(link)] * 2, tmp_path):
        edge = nw.edge.popen(
            [*draftnet, "edge", str(scenario), "--listen", "0.0.0.0:7100", *lab,
             "--duration", "8", "--out", str(run), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        users = [
            nw.user(i).popen(
                [
                    *draftnet,
                    "user",
                    str(scenario),
                    "--connect",
                    "10.0.0.2:7100",
                    *lab,
                    "--id",
                    str(i),
                    "--json",
                    *(["--clock-skew-ms", str(SKEW_MS)] if i else []),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=60) for p in [edge, *users]]
    # The edge stops at --duration and says Bye: every node ends cleanly.
    lost = [line for f in sorted(run.glob("events-*.jsonl")) for line in f.read_text().splitlines()
            if '"link_lost"' in line or '"reconnected"' in line]  # fmt: skip
    assert [p.returncode for p in [edge, *users]] == [0, 0, 0], ([o[1][-2000:] for o in outs], lost)
    doc = json.loads(outs[0][0].splitlines()[-1])  # after its "ready" line
    assert doc == json.loads((run / "summary.json").read_text()) | {"out_dir": str(run)}
    assert doc["auth"] == "mtls" and doc["refused"] == [] and doc["resumed"] == {}
    result = doc["results"][doc["policy"]]
    assert result["users_started"] == 2 and result["rounds"] > 40
    # The skewed node's offset is measured to within the exchange's half delay (a few ms).
    offsets = doc["clock_offset_ms"]
    for node, skew in (("u0", 0.0), ("u1", -SKEW_MS)):
        c = offsets[node]
        assert c["uncertainty_ms"] < 20
        assert abs(c["offset_ms"] - skew) <= c["uncertainty_ms"] + 1.0, (node, c)
    # Every user's records reached the edge's run directory, on the edge's clock: each one's
    # clock record comes after the edge saw it join (a 2 s skew left alone would put u1's
    # 2 s later), and within the probes' time of it.
    joined = {r["user"]: r["t"] for r in _lines(run / "events-edge.jsonl") if r["ev"] == "join"}
    for i in range(2):
        recs = _lines(run / f"events-u{i}.jsonl")
        assert {r["node"] for r in recs} == {f"u{i}"}
        clock = next(r for r in recs if r["ev"] == "clock")
        assert 0 <= float(clock["t"]) - float(joined[i]) < 1.0, (i, clock, joined)  # type: ignore[arg-type]
        user = json.loads(outs[1 + i][0].splitlines()[-1])
        rounds = [r for r in recs if r["ev"] == "round"]
        assert len(rounds) == user["rounds"]  # nothing measured was lost on the way
