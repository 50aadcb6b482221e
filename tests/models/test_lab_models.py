"""Lab mode with the embedded models: ``draftnet edge`` and ``draftnet user`` as processes on
loopback, over mutual TLS, with the edge killed mid-session and started again on its run
directory. The user resumes its session on the new edge, and the edge's summary checks every
session it journalled (the resumed one across both edges) against what the target alone decodes
greedily."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from emu.lab.certs import init_lab
from emu.models.build import read_sessions
from emu.runners.journal import JOURNAL, journal_sessions
from tests.lab_processes import await_ready, free_port, start, wait_for


def _committed(run: Path) -> int:
    held = journal_sessions(run / JOURNAL) if (run / JOURNAL).exists() else {}
    return sum(len(h.committed) for sessions in held.values() for h in sessions)


def test_an_edge_restarted_mid_session_goes_on_losslessly_with_real_models(
    tmp_path: Path,
) -> None:
    init_lab(tmp_path / "lab", ["edge", "u0"])
    sc = tmp_path / "sc.toml"
    sc.write_text('[users]\ncount = 1\n[models]\nkind = "embedded"\n[sim]\nmax_new_tokens = 40\n')
    port = str(free_port())
    run = tmp_path / "run"
    edge_args = ["edge", str(sc), "--listen", f"127.0.0.1:{port}", "--lab", str(tmp_path / "lab")]
    edge = start(*edge_args, "--out", str(run), log=tmp_path / "edge1.log")
    user = None
    try:
        await_ready(edge, tmp_path / "edge1.log")
        user = start(
            *["user", str(sc), "--connect", f"127.0.0.1:{port}", "--lab", str(tmp_path / "lab")],
            *["--id", "0", "--out", str(tmp_path / "u0"), "--json"],
            log=tmp_path / "u0.log",
        )
        wait_for(lambda: _committed(run) >= 8, "the first edge committed nothing")
        edge.send_signal(signal.SIGKILL)  # mid-session: no farewell, no summary
        edge.wait(timeout=10)
        before = _committed(run)
        assert not (run / "summary.json").exists()
        edge = start(*edge_args, "--out", str(run), log=tmp_path / "edge2.log")
        await_ready(edge, tmp_path / "edge2.log")
        wait_for(lambda: _committed(run) >= before + 20, "nothing committed after the restart")
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=300) == 0, (tmp_path / "edge2.log").read_text()[-2000:]
        assert user.wait(timeout=30) == 0, (tmp_path / "u0.log").read_text()[-2000:]
    finally:
        for p in (edge, user):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    summary = json.loads((run / "summary.json").read_text())
    res = next(iter(summary["results"].values()))
    # Every session the edge journalled, the one that crossed the restart included, is the
    # target's own greedy decoding: the new edge prefilled what the old one had committed.
    assert res["lossless"] is True, res["lossless_checked"]
    assert res["lossless_checked"]["tokens"] == _committed(run) >= before + 20
    assert summary["resumed"] == {"u0": 1}
    # The user committed what the edge journalled: nothing lost or repeated at the restart.
    logged = read_sessions(tmp_path / "u0" / "tokens-u0.jsonl")
    journalled = journal_sessions(run / JOURNAL)[0]
    assert not any(s.broken for s in logged) and len(logged) == len(journalled)
    for s, held in zip(logged, journalled, strict=True):
        assert held.prompt == s.prompt and held.committed[: len(s.tokens)] == s.tokens
