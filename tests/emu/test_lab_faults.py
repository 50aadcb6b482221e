"""Lab mode on this machine without a lab: the lab's commands, each role in its own Mininet host
(its own network namespace), talking mutual TLS over shaped links, one node's clock 2 s off; and
in the same run a 3 s link outage, a user process killed and started again, and the edge killed
and started again. Each node goes on; the records line up on the edge's clock; no committed
token is lost or repeated: every user's log of what it committed, stitched across its restarts,
agrees with the edge's journal, and every session resumed takes up exactly what was committed
before. Then ``draftnet run``'s ``[faults]``, which injects the same faults into an emulation.

Needs root, mnexec (Debian's mininet) and the Mininet Python API; CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="Mininet needs root"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="mnexec (Debian mininet) missing"),
]
pytest.importorskip("mininet.net")

from emu.lab.certs import init_lab  # noqa: E402
from emu.models.build import read_sessions  # noqa: E402
from emu.runners.journal import JOURNAL, journal_sessions  # noqa: E402
from emu.runners.network import star_network, userspace_shaping  # noqa: E402
from emu.scenario import load_scenario, scenario_toml  # noqa: E402
from emu.shaping.spec import LinkPair, LinkSpec  # noqa: E402
from tests.lab_processes import wait_for  # noqa: E402

DRAFTNET = [sys.executable, "-m", "emu.cli"]
ROOT = Path(__file__).resolve().parents[2]
# Strangers at the edge's door, from a user's host: another lab's certificate (knowing whom to
# trust: our CA's certificate is public), bytes that are not TLS, and a replay of the bytes a
# real node sent to open its connection. Prints how many connections it made.
STRANGERS = """
import shutil, sys, trio
from pathlib import Path
sys.path.insert(0, {root!r})
from emu.lab.certs import init_lab
from emu.lab.tls import Credentials, credentials
from tests.test_lab import _Tap

rogue = Path({tmp!r}) / "rogue"
init_lab(rogue, ["u0"])
shutil.copy(Path({lab!r}) / "ca.pem", rogue / "ca.pem")

async def main():
    s = trio.SSLStream(await trio.open_tcp_stream("10.0.0.2", 7100),
                       Credentials("mtls", "u0", rogue).client_context(), server_hostname="edge")
    try:
        await s.send_all(b"x")
        await s.receive_some()
    except trio.BrokenResourceError:
        pass
    raw = await trio.open_tcp_stream("10.0.0.2", 7100)
    await raw.send_all(b"GET / HTTP/1.0\\r\\n\\r\\n")
    tap = _Tap(await trio.open_tcp_stream("10.0.0.2", 7100))
    real = trio.SSLStream(tap, credentials(Path({lab!r}), "u0", "mtls", serves=False)
                          .client_context(), server_hostname="edge")
    await real.do_handshake()
    await real.aclose()
    again = await trio.open_tcp_stream("10.0.0.2", 7100)
    await again.send_all(bytes(tap.sent))
    await trio.sleep(1.0)
    print(4)

trio.run(main)
"""
SKEW_MS = 2000.0  # user 1's clock, ahead of the others'


def _mid_session(log: Path) -> bool:
    """Whether the last session in a user's token log has committed tokens, and not half of its
    60: killed then, the user has tokens to take back from the edge (killed before a session's
    first token it takes back the bare prompt, and resumes no token; one CI run on a loaded
    host killed it there)."""
    sessions = read_sessions(log) if log.exists() else []
    return bool(sessions) and 0 < len(sessions[-1].tokens) <= 30


def test_an_outage_a_user_restart_and_an_edge_restart_lose_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    sc = load_scenario(
        overrides={
            "users.count": 2,
            "models.kind": "synthetic",
            "network.model": "fixed",
            "sim.max_new_tokens": 60,
        }
    )
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(scenario_toml(sc))
    creds, run = tmp_path / "creds", tmp_path / "run"
    init_lab(creds, ["edge", "u0", "u1"])
    lab = ["--lab", str(creds)]
    pipe: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    link = LinkSpec.fixed(delay_ms=2.0, rate_bps=50e6)
    with star_network(2) as nw, userspace_shaping(nw, [LinkPair.both(link)] * 2, tmp_path):

        def edge(duration: float) -> Any:
            return nw.edge.popen([*DRAFTNET, "edge", str(scenario), "--listen", "0.0.0.0:7100",
                                  *lab, "--duration", str(duration), "--out", str(run), "--json"],
                                 **pipe)  # fmt: skip

        def user(i: int) -> Any:
            return nw.user(i).popen([*DRAFTNET, "user", str(scenario), "--connect",
                                     "10.0.0.2:7100", *lab, "--id", str(i), "--out",
                                     str(tmp_path / f"u{i}"), "--json", "--clock-skew-ms",
                                     str(SKEW_MS if i == 1 else 0.0)], **pipe)  # fmt: skip

        first_edge = edge(60)
        time.sleep(1.0)
        u0, u1 = user(0), user(1)
        time.sleep(3.0)
        # u0 walks out of range for 3 s: nothing it sends gets anywhere (a blackhole route:
        # taking its interface down would take its routes with it for good).
        nw.user(0).cmd("ip route add blackhole 10.0.0.0/16")
        time.sleep(3.0)
        nw.user(0).cmd("ip route del blackhole 10.0.0.0/16")
        faults = {"outage": time.monotonic()}  # on the nodes' clock (one machine, scale 1)
        time.sleep(1.0)
        u1_log = tmp_path / "u1" / "tokens-u1.jsonl"
        wait_for(lambda: _mid_session(u1_log), "no session of u1's in progress", timeout_s=15)
        u1.send_signal(signal.SIGKILL)  # u1's process dies ...
        u1.wait(timeout=10)
        time.sleep(1.0)
        u1 = user(1)  # ... and is started again, as a user would
        faults["user restart"] = time.monotonic()
        time.sleep(3.0)
        first_edge.send_signal(signal.SIGKILL)  # the edge dies mid-run ...
        first_edge.wait(timeout=10)
        time.sleep(1.0)
        second_edge = edge(8)  # ... and is started again on the same run directory
        faults["edge restart"] = time.monotonic()
        time.sleep(2.0)
        code = STRANGERS.format(root=str(ROOT), tmp=str(tmp_path), lab=str(creds))
        strangers = nw.user(1).popen([sys.executable, "-c", code], **pipe)
        stranger_out = strangers.communicate(timeout=60)
        outs = [p.communicate(timeout=90) for p in (second_edge, u0, u1)]
    codes = [p.returncode for p in (second_edge, u0, u1)]
    assert codes == [0, 0, 0], [o[1][-1500:] for o in outs]
    doc = json.loads(outs[0][0].splitlines()[-1])
    # The restarted edge handed each user its session back from the journal.
    assert set(doc["resumed"]) == {"u0", "u1"}, doc["resumed"]
    assert doc["auth"] == "mtls" and strangers.returncode == 0, stranger_out[1][-1500:]
    # Every stranger was refused at the door, before a Hello, each with why; the replayed
    # handshake too (the real node it copied made one connection and sent nothing more: its
    # refusal is for the Hello it never sent).
    tls = [r for r in doc["refused"] if r["why"].startswith("TLS handshake failed")]
    assert len(tls) == 3 and all(r["peer"].startswith("10.1.1.") for r in tls), doc["refused"]
    assert len(doc["refused"]) <= 4  # and perhaps the Hello the copied node never sent
    events = [json.loads(x) for x in (run / "events-edge.jsonl").read_text().splitlines()]
    assert any(r["ev"] == "restarted" for r in events)
    # Each user measured its clock's offset to the (restarted) edge's within the exchange's
    # half delay, and its records came to the edge on the edge's clock: each clock record
    # follows the edge's record of that join by less than the probes take (a 2 s skew left
    # alone would put u1's 2 s later).
    for node, skew in (("u0", 0.0), ("u1", -SKEW_MS)):
        c = doc["clock_offset_ms"][node]
        assert c["uncertainty_ms"] < 20 and abs(c["offset_ms"] - skew) <= c["uncertainty_ms"] + 1
    joins = [(r["t"], r["user"]) for r in events if r["ev"] == "join"]
    for i in range(2):
        for r in map(json.loads, (run / f"events-u{i}.jsonl").read_text().splitlines()):
            assert r["node"] == f"u{i}"
            if r["ev"] == "clock":
                joined = max(t for t, u in joins if u == i and t <= r["t"])
                assert r["t"] - joined < 1.0, (i, r, joins)
    journal = journal_sessions(run / JOURNAL)  # LedgerError: a resume lost a token
    for i in range(2):
        logged = read_sessions(tmp_path / f"u{i}" / f"tokens-u{i}.jsonl")
        assert logged and not any(s.broken for s in logged), i
        edge_view = journal[i]
        assert len(logged) == len(edge_view)
        for s, held in zip(logged, edge_view, strict=True):
            # What the user logged is what the edge journalled (the edge may hold the tail of
            # the last session, committed after the user's last write).
            assert held.prompt == s.prompt and held.committed[: len(s.tokens)] == s.tokens
        # Each user went on committing after every fault.
        rounds = [json.loads(r)["t"] for r in (run / f"events-u{i}.jsonl").read_text().splitlines()
                  if '"ev": "round"' in r]  # fmt: skip
        for fault, at in faults.items():
            assert sum(t > at for t in rounds) > 3, (i, fault)
    user_outs = [json.loads(o[0].splitlines()[-1]) for o in outs[1:]]
    assert user_outs[1]["resumed_tokens"] > 0  # the restarted u1 took its session back
    # u0 lived through all three faults: every round it counted reached the edge's directory
    # (those made while its link was cut, or its edge dead, went with a later Report).
    reported = (run / "events-u0.jsonl").read_text().count('"ev": "round"')
    assert reported == user_outs[0]["rounds"]


def test_draftnet_run_injects_the_scenarios_faults_and_the_deployment_goes_on(
    tmp_path: Path,
) -> None:
    """``[faults]`` in ``draftnet run``: an outage, a user killed and started again, the edge
    killed and started again (from its journal). None is a death; every fault is in the
    result with when it happened; each user commits after each; no session is broken."""
    (tmp_path / "s.toml").write_text(
        '[network]\nmodel = "fixed"\n[models]\nkind = "synthetic"\n[sim]\nmax_new_tokens = 60\n'
        "[faults]\n"
        "outages = [{user = 0, at_s = 1.5, for_s = 3.0}]\n"
        'kills = [{node = "u1", at_s = 3.0, restart_after_s = 1.0},\n'
        '         {node = "edge", at_s = 6.0, restart_after_s = 1.0}]\n'
    )
    out = tmp_path / "run"
    # A run directory used before, with a journal that holds a session of user 0: this run
    # starts afresh (no user is handed the last run's session).
    (out / "dipsd").mkdir(parents=True)
    (out / "dipsd" / "sessions-edge.jsonl").write_text(
        '{"u": 0, "s": 0, "prompt": [1, 2, 3], "committed": [4]}\n'
    )
    (out / "dipsd" / "tokens-u0.jsonl").write_text('{"prompt": [1, 2, 3]}\n{"tokens": [4]}\n')
    cmd = [*DRAFTNET, "run", str(tmp_path / "s.toml"), "--users", "2", "--duration", "12",
           "--policy", "dipsd", "--json", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)["results"]["dipsd"]
    assert res["valid"] and res["deaths"] == []
    done = [(f["kind"], f["target"]) for f in res["faults_injected"]]
    assert done == [("cut", "u0"), ("kill", "u1"), ("restart", "u1"), ("restore", "u0"),
                    ("kill", "edge"), ("restart", "edge")]  # fmt: skip
    for f in res["faults_injected"]:
        assert f["at_s"] <= f["t_s"] < f["at_s"] + 1.0
    pdir = out / "dipsd"
    t0 = min(json.loads(x)["t"] for x in (pdir / "events-edge.jsonl").read_text().splitlines()
             if '"ev": "plan"' in x)  # fmt: skip
    for i in range(2):
        rounds = [json.loads(x)["t"] - t0 for x in (pdir / f"events-u{i}.jsonl").read_text()
                  .splitlines() if '"ev": "round"' in x]  # fmt: skip
        for f in res["faults_injected"]:
            assert sum(t > f["t_s"] + 0.5 for t in rounds) > 3, (i, f)
        logged = read_sessions(pdir / f"tokens-u{i}.jsonl")  # across u1's restart too
        assert logged and not any(s.broken for s in logged), i
    joins = [json.loads(x) for x in (pdir / "events-edge.jsonl").read_text().splitlines()
             if '"ev": "join"' in x]  # fmt: skip
    assert any("resume" in j for j in joins)  # the restarted edge handed sessions back
    assert not any("resume" in j for j in joins[:2])  # but nobody the last run's session
    assert all(s.prompt != (1, 2, 3) for s in read_sessions(pdir / "tokens-u0.jsonl"))
    assert "- dipsd: kill edge at 6.0 s" in (out / "report.md").read_text()
