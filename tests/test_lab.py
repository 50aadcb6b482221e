"""Lab mode without a lab: the credentials ``draftnet lab init`` makes, the checks a node makes
of its own, and the edge's door (``emu.lab.tls.Gate``) over real TLS on loopback: who it admits
and what it refuses (another CA's certificate, an expired one, a replayed handshake, plain
bytes, too many attempts, too many connections of one node), each refusal recorded."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from emu.errors import ConfigError, PeerGone
from emu.lab.certs import CA_CERT, init_lab, issue
from emu.lab.labfile import commands, load_lab
from emu.lab.roles import RunLog, journal_lossless
from emu.lab.tls import Credentials, Gate, credentials, dial

NODES = ["edge", "u0", "u1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab") / "creds"
    made = init_lab(d, NODES)
    assert made.issued == tuple(NODES) and not made.kept
    return d


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory, lab: Path) -> Path:
    """Another lab's u0, holding this lab's CA certificate (public): a stranger that knows
    whom to trust but has no certificate of ours."""
    d = tmp_path_factory.mktemp("rogue") / "creds"
    init_lab(d, ["u0"])
    shutil.copy(lab / CA_CERT, d / CA_CERT)
    return d


def test_lab_init_makes_private_keys_and_extends_a_lab_without_reissuing(lab: Path) -> None:
    for node in NODES:
        assert (lab / f"{node}.key").stat().st_mode & 0o777 == 0o600
        assert (lab / f"{node}.token").stat().st_mode & 0o777 == 0o600
        assert len((lab / f"{node}.token").read_text()) == 64
    assert (lab / "ca.key").stat().st_mode & 0o777 == 0o600
    before = (lab / "u0.pem").read_bytes(), (lab / CA_CERT).read_bytes()
    made = init_lab(lab, ["u0", "u2"])
    assert made.issued == ("u2",) and made.kept == ("u0",)
    assert ((lab / "u0.pem").read_bytes(), (lab / CA_CERT).read_bytes()) == before
    assert set(json.loads((lab / "tokens.json").read_text())) == {*NODES, "u2"}
    credentials(lab, "u2", "mtls", serves=False)  # signed by the same CA
    with pytest.raises(ConfigError, match="--nodes must name nodes with a letter"):
        init_lab(lab, ["u 3"])


def _bad_copy(lab: Path, tmp_path: Path) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(lab, d)
    return d


def test_a_node_checks_its_own_credentials_before_it_dials(lab: Path, tmp_path: Path) -> None:
    """One line for each: a key that is not the certificate's, another CA's certificate, an
    expired certificate, a token of the wrong length, no lab at all."""
    from cryptography.hazmat.primitives import serialization

    d = _bad_copy(lab, tmp_path)
    shutil.copy(d / "u1.key", d / "u0.key")
    with pytest.raises(ConfigError, match=r"u0\.key must match the certificate"):
        credentials(d, "u0", "mtls", serves=False)
    other = tmp_path / "other"
    init_lab(other, ["u0"])
    shutil.copy(other / "u0.pem", d / "u0.pem")
    with pytest.raises(ConfigError, match="must be issued by the lab's CA"):
        credentials(d, "u0", "mtls", serves=False)
    ca_key = serialization.load_pem_private_key((lab / "ca.key").read_bytes(), password=None)
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((lab / CA_CERT).read_bytes())
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert, key = issue(ca, ca_key, "u0", days=1, not_before=long_ago)  # type: ignore[arg-type]
    (d / "u0.pem").write_bytes(cert)
    (d / "u0.key").write_bytes(key)
    with pytest.raises(ConfigError, match="must be in date, got one that expired on"):
        credentials(d, "u0", "mtls", serves=False)
    (d / "u1.token").write_text("abc123")
    with pytest.raises(ConfigError, match=r"token .* must be 64 hex digits .* got 6 characters"):
        credentials(d, "u1", "token", serves=False)
    with pytest.raises(ConfigError, match="--lab must name the lab's directory"):
        credentials(None, "u1", "mtls", serves=False)
    assert credentials(None, "u1", "insecure", serves=False).auth == "insecure"


class _Tap(trio.abc.Stream):
    """A stream that keeps every byte it sends (to replay them later)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner, self.sent = inner, bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _echo_edge(
    nursery: trio.Nursery, cred: Credentials, **kw: Any
) -> tuple[int, list[dict[str, Any]], list[str | None]]:
    """A Gate on loopback whose handler echoes one message: its port, the refusals it
    recorded (as the edge's run log files them) and whom it served."""
    served: list[str | None] = []

    async def handler(stream: trio.abc.Stream, proved: str | None) -> None:
        served.append(proved)
        with trio.move_on_after(5):
            await stream.send_all(await stream.receive_some())
            await trio.sleep_forever()

    refused: list[dict[str, Any]] = []

    def sink(rec: Mapping[str, Any]) -> None:
        assert rec["ev"] == "refused"
        refused.append({k: v for k, v in rec.items() if k not in ("ev", "code")})

    gate = Gate(cred, handler, sink, handshake_timeout_s=2.0, **kw)
    serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, gate, 0)
    return listeners[0].socket.getsockname()[1], refused, served


async def _refused_after(refused: list[dict[str, Any]], n: int) -> None:
    with trio.fail_after(5):
        while len(refused) < n:
            await trio.sleep(0.01)


async def test_the_gate_admits_the_labs_nodes_and_refuses_strangers_and_replays(
    lab: Path, rogue: Path, tmp_path: Path
) -> None:
    edge = credentials(lab, "edge", "mtls", serves=True)
    async with trio.open_nursery() as nursery:
        port, refused, served = await _echo_edge(nursery, edge)
        # A node of the lab: admitted as the node its certificate names.
        tap = _Tap(await trio.open_tcp_stream("127.0.0.1", port))
        u0 = credentials(lab, "u0", "mtls", serves=False)
        stream = trio.SSLStream(tap, u0.client_context(), server_hostname="edge")
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
        assert served == ["u0"] and refused == []
        # Its handshake's bytes, replayed on a new connection: fresh keys, refused.
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        await raw.send_all(bytes(tap.sent))
        await _refused_after(refused, 1)
        assert "TLS handshake failed" in refused[0]["why"]
        # Another CA's certificate.
        stranger = Credentials("mtls", "u0", rogue)
        with pytest.raises((PeerGone, trio.BrokenResourceError)):
            s = await dial("127.0.0.1", port, stranger)
            await s.send_all(b"x")
            await s.receive_some()
        await _refused_after(refused, 2)
        assert "TLS handshake failed" in refused[1]["why"]
        # No certificate at all, and bytes that are not TLS.
        plain = ssl.create_default_context(cafile=lab / CA_CERT)
        with pytest.raises((PeerGone, trio.BrokenResourceError)):
            s2 = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), plain,
                                server_hostname="edge")  # fmt: skip
            await s2.send_all(b"x")
            await s2.receive_some()
        bare = await trio.open_tcp_stream("127.0.0.1", port)
        await bare.send_all(b"GET / HTTP/1.0\r\n\r\n")
        await _refused_after(refused, 4)
        # A certificate of this lab's CA that has expired (a node that never checked its own).
        expired = tmp_path / "expired"
        shutil.copytree(lab, expired)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca = x509.load_pem_x509_certificate((lab / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((lab / "ca.key").read_bytes(), None)
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
        cert, key = issue(ca, ca_key, "u0", days=1, not_before=long_ago)  # type: ignore[arg-type]
        (expired / "u0.pem").write_bytes(cert)
        (expired / "u0.key").write_bytes(key)
        with pytest.raises((PeerGone, trio.BrokenResourceError)):
            s3 = await dial("127.0.0.1", port, Credentials("mtls", "u0", expired))
            await s3.send_all(b"x")
            await s3.receive_some()
        await _refused_after(refused, 5)
        assert "certificate has expired" in refused[4]["why"]
        assert served == ["u0"]  # none of them reached the handler
        nursery.cancel_scope.cancel()


async def test_the_gate_limits_attempts_and_connections_per_node(lab: Path) -> None:
    edge = credentials(lab, "edge", "mtls", serves=True)
    u1 = credentials(lab, "u1", "mtls", serves=False)
    async with trio.open_nursery() as nursery:
        port, refused, served = await _echo_edge(nursery, edge, per_node=1)
        first = await dial("127.0.0.1", port, u1)
        await first.send_all(b"a")
        assert await first.receive_some() == b"a"
        second = await dial("127.0.0.1", port, u1)
        try:  # closed before anything is read: a clean end of stream, or a broken one
            await second.send_all(b"b")
            got = await second.receive_some()
        except trio.BrokenResourceError:
            got = b""
        assert got == b""
        await _refused_after(refused, 1)
        assert refused[0]["why"] == "u1 already holds 1 connections"
        assert refused[0]["claims"] == "u1" and served == ["u1"]
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        port, refused, served = await _echo_edge(nursery, edge, attempts_per_s=2)
        for _ in range(3):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.aclose()
        await _refused_after(refused, 1)
        assert "more than 2 connection attempts a second" in refused[-1]["why"]
        nursery.cancel_scope.cancel()


async def test_token_mode_proves_the_edge_and_leaves_the_user_to_its_token(lab: Path) -> None:
    """TLS in which only the edge shows a certificate: a user without one gets through the door
    (its token is checked at its Hello, ``nodes.core.verifier``); a user that dials a server
    whose certificate is not the edge's refuses it."""
    edge = credentials(lab, "edge", "token", serves=True)
    assert set(edge.tokens) >= set(NODES)
    u0 = credentials(lab, "u0", "token", serves=False)
    assert u0.token == (lab / "u0.token").read_text()
    async with trio.open_nursery() as nursery:
        port, _, served = await _echo_edge(nursery, edge)
        s = await dial("127.0.0.1", port, u0)
        await s.send_all(b"t")
        assert await s.receive_some() == b"t" and served == [None]
        with pytest.raises(PeerGone, match=r"TLS handshake .* failed"):
            await dial("127.0.0.1", port, u0, server="u1")  # not the name on its certificate
        nursery.cancel_scope.cancel()


def _draftnet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "emu.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def test_the_lab_commands_say_what_is_wrong_in_one_line(lab: Path, tmp_path: Path) -> None:
    bad = tmp_path / "lab.toml"
    bad.write_text('[[node]]\nname = "edge"\nrole = "edge"\nhost = "h"\n'
                   '[[node]]\nname = "u0"\nrole = "sbs"\nhost = "h"\n')  # fmt: skip
    cases = [
        (["lab", "commands", str(bad)],
         "node[1].role must be one of edge, user, router, verifier, drafter, small-cell, "
         "macro-cell, got 'sbs'"),
        (["user", "--connect", "127.0.0.1:1", "--lab", str(tmp_path / "none"), "--id", "0"],
         "--lab must be a directory made by draftnet lab init"),
        (["edge", "--listen", "127.0.0.1:x", "--insecure"], "must be HOST:PORT"),
        (["user", "--connect", "127.0.0.1:1", "--insecure", "--id", "9", "--users", "2"],
         "--id must be in [0, 1]"),
        (["user", "--connect", "127.0.0.1:1", "--insecure", "--id", "0",
          "--set", "limits.reconnect_give_up_s=1", "--set", "models.kind=synthetic"],
         "--connect: no edge answered at 127.0.0.1:1 within 1 s"),
    ]  # fmt: skip
    for args, said in cases:
        out = _draftnet(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert said in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_lab_file_gives_each_machine_its_command(tmp_path: Path) -> None:
    f = tmp_path / "lab.toml"
    f.write_text('scenario = "sc.toml"\nauth = "token"\nport = 7200\n'
                 '[[node]]\nname = "edge"\nrole = "edge"\nhost = "10.1.1.1"\n'
                 '[[node]]\nname = "u3"\nrole = "user"\nhost = "10.1.1.7"\n')  # fmt: skip
    cmds = commands(load_lab(f))
    assert cmds["edge"]["host"] == "10.1.1.1"
    assert cmds["edge"]["command"].startswith(
        f"draftnet edge {tmp_path}/sc.toml --listen 0.0.0.0:7200"
    )
    assert "--auth token" in cmds["u3"]["command"]
    assert "--connect 10.1.1.1:7200" in cmds["u3"]["command"] and "--id 3" in cmds["u3"]["command"]
    f.write_text('[[node]]\nname = "u0"\nrole = "user"\nhost = "h"\n')
    with pytest.raises(ConfigError, match=r'exactly one role = "edge" \(DiP-SD\), "router"'):
        load_lab(f)


def test_a_dsd_lab_file_gives_the_router_the_verifiers_and_the_drafters_their_commands(
    tmp_path: Path,
) -> None:
    f = tmp_path / "lab.toml"
    nodes = [("router", "router", "10.0.0.1"), ("v0", "verifier", "10.0.0.2"),
             ("v1", "verifier", "10.0.0.3"), ("d4", "drafter", "10.0.1.4")]  # fmt: skip
    f.write_text("port = 7300\n" + "".join(
        f'[[node]]\nname = "{n}"\nrole = "{r}"\nhost = "{h}"\n' for n, r, h in nodes
    ))  # fmt: skip
    cmds = commands(load_lab(f))
    assert cmds["router"]["command"].startswith("draftnet router --listen 0.0.0.0:7300 --lab")
    assert "--id 1 --listen 0.0.0.0:7300 --connect 10.0.0.1:7300" in cmds["v1"]["command"]
    d4 = cmds["d4"]["command"]
    assert d4.startswith("draftnet user --id 4 --connect 10.0.0.1:7300")
    assert d4.endswith("--verifier v0=10.0.0.2:7300 --verifier v1=10.0.0.3:7300")
    f.write_text(f.read_text() + '[[node]]\nname = "u0"\nrole = "user"\nhost = "h"\n')
    with pytest.raises(ConfigError, match="node 'u0' is a user, which a lab with the router"):
        load_lab(f)
    f.write_text('[[node]]\nname = "r"\nrole = "router"\nhost = "h"\n')
    with pytest.raises(ConfigError, match="name of a router must be router, got 'r'"):
        load_lab(f)
    hetnet = [("sbs", "small-cell", "10.0.0.1"), ("mbs", "macro-cell", "10.0.0.9"),
              ("u2", "user", "10.0.1.2")]  # fmt: skip
    f.write_text("".join(f'[[node]]\nname = "{n}"\nrole = "{r}"\nhost = "{h}"\n'
                         for n, r, h in hetnet))  # fmt: skip
    cmds = commands(load_lab(f))
    assert cmds["sbs"]["command"].startswith(
        "draftnet small-cell --listen 0.0.0.0:7100 --connect 10.0.0.9:7100"
    )
    assert cmds["mbs"]["command"].startswith("draftnet macro-cell --listen 0.0.0.0:7100 "
                                             "--connect 10.0.0.1:7100")  # fmt: skip
    assert cmds["u2"]["command"].startswith("draftnet user --connect 10.0.0.1:7100")


def test_the_run_directory_files_a_record_sent_again_once_across_an_edge_restart(
    tmp_path: Path,
) -> None:
    """A user's new connection carries again what the last one sent lately (it may have been
    lost with the link or the edge): numbered per user process, each record is filed once, by
    this edge or by one started again on the same directory."""
    from emu.lab.roles import RunLog

    def rec(seq: int, epoch: int = 7) -> dict[str, Any]:
        return {"ev": "round", "t": float(seq), "user": 0, "node": "u0", "epoch": epoch,
                "seq": seq, "drafted": 1, "accepted": 1, "committed": 2,
                "round_ms": 1.0}  # fmt: skip

    log = RunLog(tmp_path, "dipsd")
    for s in (1, 2, 3, 2, 3, 4):
        log(rec(s))
    log.close()
    again = RunLog(tmp_path, "dipsd")  # the edge started again
    for s in (3, 4, 5):
        again(rec(s))
    again(rec(1, epoch=8))  # the user's process started again: its own numbering
    again.close()
    lines = [json.loads(x) for x in (tmp_path / "events-u0.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["seq"]) for r in lines] == [(7, 1), (7, 2), (7, 3), (7, 4), (7, 5),
                                                       (8, 1)]  # fmt: skip


def test_the_edges_lossless_check_reads_every_journalled_session(tmp_path: Path) -> None:
    """The edge's check against a stand-in target that continues every prompt with its last
    token + 1, + 2, ...: a session resumed across a restart is one session, a wrong token is
    found where it is, and a resume that dropped a token is not lossless."""

    def target(prompt: Sequence[int], tokens: Sequence[int]) -> int | None:
        """Where ``tokens`` depart from the stand-in's continuation of ``prompt``."""
        return next((j for j, t in enumerate(tokens) if t != prompt[-1] + 1 + j), None)

    entries = [
        {"u": 0, "s": 0, "prompt": [1, 2], "committed": []},
        {"u": 0, "add": [3, 4]},
        {"u": 1, "s": 0, "prompt": [7], "committed": []},
        {"u": 1, "add": [8]},
        {"u": 0, "s": 0, "prompt": [1, 2], "committed": [3, 4]},  # an edge started again
        {"u": 0, "add": [5, 6]},
    ]
    journal = tmp_path / "sessions.jsonl"

    def check(entries: list[dict[str, Any]]) -> dict[str, Any]:
        journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
        return journal_lossless(journal, 2, target)

    assert check(entries) == {
        "lossless": True,
        "lossless_checked": {"sessions": 2, "tokens": 5, "mismatches": []},
    }
    wrong = check([*entries, {"u": 1, "add": [10]}])
    assert wrong["lossless"] is False
    assert wrong["lossless_checked"]["mismatches"] == [{"user": 1, "session": 0, "position": 1}]
    dropped = check([*entries[:4], {"u": 0, "s": 0, "prompt": [1, 2], "committed": [3]}])
    assert dropped["lossless"] is False
    assert "resumed with 1 tokens, but 2" in dropped["lossless_checked"]["mismatches"][0]["why"]


def test_a_reported_record_without_its_fields_is_filed_and_not_counted(tmp_path: Path) -> None:
    """A node's record that lacks what its kind has (a round without its user) must not take
    the edge's run log, or the edge, down: it is filed, and counted as untallied."""
    log = RunLog(tmp_path, "dipsd")
    log({"ev": "round", "t": 1.0, "node": "u0", "epoch": 1, "seq": 1})  # no user, no counts
    log({"ev": "first_token", "t": "soon", "node": "u0", "epoch": 1, "seq": 2})
    log.close()
    assert len((tmp_path / "events-u0.jsonl").read_text().splitlines()) == 2
    assert log.untallied == 2


def test_a_lab_node_with_nobody_to_dial_says_so_in_one_line(tmp_path: Path) -> None:
    """A DSD drafter with no router, and a task's user with no small cell, at their address:
    one line naming --connect, status 2 (their nurseries must not turn it into a group)."""
    quick = ["--insecure", "--set", "limits.reconnect_give_up_s=1"]
    verifiers = [x for v in ("v0", "v1", "v2", "v4") for x in ("--verifier", f"{v}=127.0.0.1:9")]
    for args in (
        ["user", "--preset", "dsd", "--id", "0", "--connect", "127.0.0.1:9", *verifiers, *quick],
        ["user", "--preset", "hetnet", "--id", "0", "--connect", "127.0.0.1:9", *quick],
    ):
        r = _draftnet(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("draftnet: error: --connect: no ") and r.stderr.count("\n") == 1
