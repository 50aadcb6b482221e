#!/usr/bin/env python3
"""Attack benchmark (issue 13): an honest user's throughput and the edge's memory, before, during
and after each attack from a client on loopback against a live edge.

The edge and ONE honest user run as their own processes (``python -m emu.runners.node``, synthetic
models, profile timing, dipsd) on 127.0.0.1. Each attack is a phase: ``--before`` seconds,
``--during`` seconds of attack from threads in this process (plain sockets; frames built with
msgpack, some of them frames the event classes would refuse), ``--after`` seconds. The honest
user's throughput is its committed tokens per second from the ``round`` records of its
``events-u0.jsonl`` (``t`` is the machine's monotonic clock, as here); the edge's memory is its
VmRSS, sampled every 50 ms. An edge that dies is recorded (when, its exit status, the last line
of its log) and restarted with a new honest user for the next attack.

Attacks: (a) garbage: random bytes on many connections; (b) slowloris: 300 connections each
holding half a Hello, and 300 holding a frame whose header says 1 MiB and whose body stops one
byte short; (c) heartbeat flood on one connection after a valid Hello; (d) id churn: 200
connections, each a Hello with a new user id, then SessionStart and Drafts as asked; (e) huge
frames: a 1 MiB Draft-like frame, again and again; (f) deep nesting: a ~1 KB frame holding a list
nested 500 deep; (g) protocol break after Hello, on a fresh id each time: a Draft right after
the Welcome, a 40,000-token prompt, a Draft for a round that is not current.

``--outage`` adds a last row on Mininet (root): the edge and user 0 in a one-user star,
``u0-eth0`` down for 3 s, then up (u0's default route restored), and the time from link-up to
the user's next committed round ("never" within 30 s). Anything that builds a Mininet network
on a shared host runs under the lock, and Mininet's shell=True reads $SHELL:

    .venv/bin/python scripts/bench_attacks.py [--during 5] [--attacks a,b,...] [--json]
    flock /tmp/draftnet-mininet.lock env -u SHELL .venv/bin/python scripts/bench_attacks.py \\
        --attacks none --outage

``--root DIR`` runs the nodes from another source tree (e.g. ``git archive HEAD`` unpacked, to
measure the edge before and after a change); the report names the edge's sources each row ran
(a hash of nodes/edge.py, nodes/peers.py and nodes/core/verifier.py).
The attacker shares the host (and its cores) with both nodes. With profile timing every step
is padded to its modelled time, so the edge has slack: an attack shows first in the honest
user's time per round, which is also less noisy than its tokens per second (those carry the
acceptance's randomness: ~20% over 3 s).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import re
import select
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from emu.errors import LocalProtocolError, RemoteProtocolError  # noqa: E402
from nodes.protocol import (  # noqa: E402
    NEED_DATA,
    PROTOCOL_VERSION,
    Closed,
    Connection,
    Draft,
    Error,
    Heartbeat,
    Hello,
    Role,
    SessionStart,
    Verdict,
    Welcome,
)

HOST = "127.0.0.1"
MAX_FRAME = 1 << 20
READY_TIMEOUT_S = 30.0
FIRST_ROUND_TIMEOUT_S = 20.0
WARMUP_S = 1.0
RSS_PERIOD_S = 0.05
OUTAGE_S = 3.0
RECOVERY_LIMIT_S = 30.0
_HEADER = struct.Struct(">I")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Gone|Infeasible)\b")


# --- frames ----------------------------------------------------------------------------------
def frame(obj: object) -> bytes:
    """One frame: a 4-byte big-endian length, then ``obj`` as msgpack (no validation)."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def hello(uid: int) -> bytes:
    return frame(Hello(version=PROTOCOL_VERSION, user_id=uid, device={}, auth="").to_wire())


def huge_draft() -> bytes:
    """A Draft-like frame of just under 1 MiB: ~210k token ids of 5 bytes each."""
    n = (MAX_FRAME - 64) // 5
    return frame([Draft.code, 1, 1, [0x7FFFFFFF] * n, 0.0, [], []])


def deep_nesting(depth: int = 500) -> bytes:
    """A ~1 KB Draft-like frame whose tokens field is a list nested ``depth`` deep."""
    nested: object = [1]
    for _ in range(depth - 1):
        nested = [nested]
    body = frame([Draft.code, 1, 1, nested, 0.0, [0] * 480, []])
    assert len(body) < 1200
    return body


# --- the nodes on loopback -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def await_ready(what: str, proc: subprocess.Popen[str], log: Path, timeout_s: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = ""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            break
        line = proc.stdout.readline()
        if line.strip() == "ready" or not line:
            break
    if line.strip() != "ready":
        raise RuntimeError(f"{what} did not start: {last_line(log) or repr(line)}")


def last_line(log: Path) -> str:
    """The exception a node's log ends with (trio's exception groups draw boxes around it),
    else its last line."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    plain = [ln.strip().lstrip("|+ ").strip() for ln in lines]
    plain = [ln for ln in plain if ln and not set(ln) <= set("-+|")]
    for ln in reversed(plain):
        if _EXCEPTION.match(ln) and not ln.startswith(("ExceptionGroup", "BaseExceptionGroup")):
            return ln
    return plain[-1] if plain else ""


def read_rounds(path: Path) -> list[tuple[float, int]]:
    """(t, committed) of every round record the honest user has written so far."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line being written
        if r.get("ev") == "round":
            out.append((float(r["t"]), int(r["committed"])))
    return out


def rate(rounds: list[tuple[float, int]], t0: float, t1: float) -> float:
    if t1 <= t0:
        return 0.0
    return sum(c for t, c in rounds if t0 <= t < t1) / (t1 - t0)


def round_ms(rounds: list[tuple[float, int]], t0: float, t1: float) -> float | None:
    """The honest user's mean time per round in [t0, t1) [ms] (less noisy than tokens per
    second, which carry the acceptance's randomness)."""
    ts = [t for t, _ in rounds if t0 <= t < t1]
    return (ts[-1] - ts[0]) / (len(ts) - 1) * 1e3 if len(ts) > 1 else None


def max_gap(rounds: list[tuple[float, int]], t0: float, t1: float) -> float:
    """The longest stretch of [t0, t1) without an honest round [s]."""
    ts = [t0, *(t for t, _ in rounds if t0 <= t < t1), t1]
    return max(b - a for a, b in itertools.pairwise(ts))


# The resolved scenario is written by the tree whose nodes run (``--root``), which may know
# other scenario fields than this checkout.
_SCENARIO = """import sys
from emu.scenario import load_scenario, scenario_toml
sc = load_scenario(
    overrides={"models.kind": "synthetic", "users.count": 1, "network.model": "fixed"}
)
open(sys.argv[1], "w").write(scenario_toml(sc))
"""


def node_env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


@dataclass(frozen=True)
class NodeConfig:
    """What the pair's nodes run: the resolved scenario (policy dipsd, profile timing, scale 1)
    in the run directory, and the edge's address."""

    scenario: Path
    edge_ip: str
    port: int


def write_config(run_dir: Path, root: Path, edge_ip: str, port: int) -> NodeConfig:
    subprocess.run(
        [sys.executable, "-c", _SCENARIO, str(run_dir / "scenario.toml")],
        cwd=root,
        env=node_env(root),
        check=True,
    )
    return NodeConfig(run_dir / "scenario.toml", edge_ip, port)


def node_cmd(cfg: NodeConfig, *role: str) -> list[str]:
    """``role``: ``("edge",)`` or ``("user", I)``."""
    where = (
        ["--port", str(cfg.port)] if role[0] == "edge" else ["--edge", f"{cfg.edge_ip}:{cfg.port}"]
    )
    return [sys.executable, "-m", "emu.runners.node", str(cfg.scenario), *role, *where]


def wait_first_round(events: Path, procs: list[subprocess.Popen[str]], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rounds = read_rounds(events)
        if rounds:
            return rounds[0][0]
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    raise RuntimeError("the honest user committed no round")


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Pair:
    """The edge and the honest user 0 on loopback; a fresh pair (and directory) per start."""

    def __init__(self, base: Path, root: Path) -> None:
        self.base = base
        self.root = root
        self.edge_src = ""
        self.starts = 0
        self.edge: subprocess.Popen[str] | None = None
        self.user: subprocess.Popen[str] | None = None
        self.port = 0
        self.dir = base
        self._logs: list[IO[str]] = []

    def start(self) -> None:
        self.starts += 1
        self.dir = self.base / f"pair{self.starts}"
        self.dir.mkdir()
        self.port = free_port()
        cfg = write_config(self.dir, self.root, HOST, self.port)
        self.edge_src = edge_hash(self.root)
        self.edge = self._spawn(cfg, "edge")
        await_ready("the edge", self.edge, self.dir / "edge.log", READY_TIMEOUT_S)
        self.user = self._spawn(cfg, "user", "0")
        await_ready("the user", self.user, self.dir / "u0.log", READY_TIMEOUT_S)
        wait_first_round(self.events, [self.edge, self.user], FIRST_ROUND_TIMEOUT_S)
        time.sleep(WARMUP_S)

    def _spawn(self, cfg: NodeConfig, *role: str) -> subprocess.Popen[str]:
        log = (self.dir / f"{'edge' if role[0] == 'edge' else 'u0'}.log").open("w")
        self._logs.append(log)
        return subprocess.Popen(
            node_cmd(cfg, *role),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=self.root,
            env=node_env(self.root),
        )

    @property
    def events(self) -> Path:
        return self.dir / "events-u0.jsonl"

    def alive(self) -> tuple[bool, bool]:
        return (
            self.edge is not None and self.edge.poll() is None,
            self.user is not None and self.user.poll() is None,
        )

    def stop(self) -> None:
        stop([p for p in (self.user, self.edge) if p is not None])  # the user first
        for f in self._logs:
            f.close()
        self._logs.clear()


class RssSampler(threading.Thread):
    """VmRSS of whatever process ``pid()`` names, every 50 ms; notes when it stops having one
    (a dead process, even a zombie not yet reaped, has no VmRSS line)."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, float]] = []  # (t, pid, MB)
        self.gone: dict[int, float] = {}  # pid -> when its VmRSS was first missing
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(RSS_PERIOD_S):
            pid = self.pid()
            if pid is None:
                continue
            kb = vm_rss_kb(pid)
            now = time.monotonic()
            if kb is None:
                self.gone.setdefault(pid, now)
            else:
                self.samples.append((now, pid, kb / 1024))

    def finish(self) -> None:
        self._done.set()
        self.join()

    def window(self, pid: int, t0: float, t1: float) -> list[float]:
        return [mb for t, p, mb in self.samples if p == pid and t0 <= t < t1]


def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --- attacks -----------------------------------------------------------------------------
@dataclass
class Attack:
    """What one attack did (counters), and the state its threads share."""

    port: int
    stop: threading.Event
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    socks: list[socket.socket] = field(default_factory=list)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def connect(self, timeout: float = 2.0) -> socket.socket | None:
        try:
            s = socket.create_connection((HOST, self.port), timeout=timeout)
        except OSError:
            self.count("connect_failed")
            self.stop.wait(0.05)  # the edge is gone or full: do not spin
            return None
        self.count("connections")
        with self.lock:
            self.socks.append(s)
        return s

    def close(self, s: socket.socket) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self.socks.remove(s)
        s.close()

    def close_all(self) -> None:
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            s.close()

    def send(self, s: socket.socket, data: bytes, what: str = "bytes") -> bool:
        try:
            s.sendall(data)
        except OSError as exc:
            self.count(f"send_failed({type(exc).__name__})")
            return False
        self.count(what, len(data) if what == "bytes" else 1)
        return True

    def await_close(self, s: socket.socket, timeout: float) -> None:
        """Read until the edge closes (after its Error, if it sends one) or ``timeout``."""
        deadline = time.monotonic() + timeout
        got = b""
        try:
            while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
                s.settimeout(min(left, 0.25))
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    self.count("closed_by_edge")
                    break
                got += data
        except OSError:
            self.count("reset_by_edge")
        if got:
            self.count("answered")
        self.close(s)


def drain(s: socket.socket) -> bool:
    """Discard what the edge sent, without blocking; False once it closed."""
    try:
        while select.select([s], [], [], 0)[0]:
            if not s.recv(65536):
                return False
    except OSError:
        return False
    return True


def in_threads(a: Attack, n: int, body: Callable[[Attack, int], None]) -> None:
    threads = [threading.Thread(target=body, args=(a, k), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def garbage(a: Attack) -> None:
    """Eight clients, each connection 4 KiB of random bytes (half of them behind a valid length
    prefix, so that the body reaches the decoder), then wait for the edge to close it."""

    def client(a: Attack, k: int) -> None:
        rng = random.Random(k)
        i = 0
        while not a.stop.is_set():
            s = a.connect()
            if s is None:
                continue
            body = rng.randbytes(4096)
            data = _HEADER.pack(len(body)) + body if i % 2 else body
            i += 1
            if a.send(s, data):
                a.await_close(s, 1.0)
            else:
                a.close(s)

    in_threads(a, 8, client)


def slowloris(a: Attack, during: float) -> None:
    """300 connections each holding half a Hello frame, and 300 each holding a frame whose
    header says 1 MiB: its body sent in 16 steps over 60% of the phase, all but the last byte."""
    half = hello(1)[: len(hello(1)) // 2]
    for _ in range(300):
        if a.stop.is_set():
            return
        s = a.connect()
        if s is not None:
            a.send(s, half)
    bigs = []
    for _ in range(300):
        if a.stop.is_set():
            return
        s = a.connect()
        if s is not None and a.send(s, _HEADER.pack(MAX_FRAME)):
            bigs.append(s)
    chunk = b"\x00" * (MAX_FRAME // 16)
    step = 0.6 * during / 16
    for k in range(16):
        t0 = time.monotonic()
        piece = chunk if k < 15 else chunk[:-1]
        for s in list(bigs):
            if a.stop.is_set():
                return
            if not a.send(s, piece):
                bigs.remove(s)
        a.stop.wait(max(0.0, step - (time.monotonic() - t0)))
    a.count("partial_frames_held", len(bigs))
    a.stop.wait()


def heartbeat_flood(a: Attack) -> None:
    """One connection: a valid Hello (a new user id), then Heartbeats as fast as it can send
    them, 1000 frames to a write; a new connection (and id) if the edge closes it."""
    batch = frame(Heartbeat(sent_ms=1.0).to_wire()) * 1000
    uid = 40000
    while not a.stop.is_set():
        s = a.connect()
        if s is None:
            continue
        uid += 1
        ok = a.send(s, hello(uid), "hellos")
        while ok and not a.stop.is_set():
            ok = a.send(s, batch, "writes") and drain(s)
            if ok:
                a.count("heartbeats_written", 1000)
        a.close(s)


def id_churn(a: Attack) -> None:
    """200 connections, each a Hello with a new user id, then SessionStart, then a Draft
    whenever a Verdict asks for one (a well-formed client in every other respect)."""
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, Connection] = {}
    for k in range(200):
        if a.stop.is_set():
            break
        s = a.connect()
        if s is None:
            continue
        conn = Connection(Role.USER)
        if a.send(s, conn.send(Hello(version=PROTOCOL_VERSION, user_id=20000 + k)), "hellos"):
            s.setblocking(False)
            conns[s] = conn
            sel.register(s, selectors.EVENT_READ)
        else:
            a.close(s)

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        del conns[s]
        a.close(s)

    def answer(s: socket.socket, conn: Connection, ev: object) -> None:
        if isinstance(ev, Welcome):
            a.count("welcomed")
            out = conn.send(SessionStart(session=0, prompt=(1,) * 16, max_new_tokens=0))
        elif isinstance(ev, Verdict):
            a.count("verdicts")
            n = ev.next_draft_len
            if ev.done or n == 0:
                return
            out = conn.send(
                Draft(round=conn.round + 1, base_len=conn.position, tokens=(1,) * n, draft_ms=1.0)
            )
        else:
            return
        s.setblocking(True)
        s.settimeout(1.0)
        a.send(s, out, "messages")
        s.setblocking(False)

    while conns and not a.stop.is_set():
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            s = sock
            conn = conns[s]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            try:
                conn.receive_data(data)
                while (ev := conn.next_event()) is not NEED_DATA:
                    if isinstance(ev, Error | Closed):
                        a.count("refused_by_edge" if isinstance(ev, Error) else "closed_by_edge")
                        drop(s)
                        break
                    answer(s, conn, ev)
            except (RemoteProtocolError, LocalProtocolError):
                a.count("edge_broke_protocol")
                drop(s)
    a.count("held_at_end", len(conns))
    a.stop.wait()
    sel.close()


def huge_frames(a: Attack) -> None:
    """Two clients, each sending a ~1 MiB Draft-like frame (210k token ids) on a fresh
    connection, waiting for the edge to close it, and again."""
    data = huge_draft()

    def client(a: Attack, _k: int) -> None:
        while not a.stop.is_set():
            s = a.connect(timeout=5.0)
            if s is None:
                continue
            if a.send(s, data, "frames_sent"):
                a.await_close(s, 5.0)
            else:
                a.close(s)

    in_threads(a, 2, client)


def deep_nest(a: Attack) -> None:
    """A ~1 KB frame with a list nested 500 deep, on a fresh connection, again and again."""
    data = deep_nesting()
    while not a.stop.is_set():
        s = a.connect()
        if s is None:
            continue
        if a.send(s, data, "frames_sent"):
            a.await_close(s, 1.0)
        else:
            a.close(s)


def protocol_break(a: Attack) -> None:
    """On a fresh user id each time, after a valid Hello: a Draft right after the Welcome, a
    SessionStart of 40,000 tokens, or a SessionStart then a Draft for round 7 (not current)."""
    uid = 30000
    variant = 0
    while not a.stop.is_set():
        s = a.connect()
        if s is None:
            continue
        uid += 1
        kind = ("early_draft", "huge_prompt", "wrong_round")[variant % 3]
        variant += 1
        conn = Connection(Role.USER)
        if not a.send(s, conn.send(Hello(version=PROTOCOL_VERSION, user_id=uid)), "hellos"):
            a.close(s)
            continue
        if kind == "early_draft":
            data = frame([Draft.code, 1, 1, [1, 2, 3], 1.0, [], []])
        elif kind == "huge_prompt":
            data = frame([SessionStart.code, 0, [1] * 40000, 0])
        else:  # a valid session start, its first Verdict, then a Draft 5 rounds ahead
            ok = read_until(s, conn, Welcome, 2.0) and a.send(
                s, conn.send(SessionStart(session=0, prompt=(1,) * 16, max_new_tokens=0))
            )
            if not (ok and read_until(s, conn, Verdict, 2.0)):
                a.count("wrong_round_not_reached")
                a.close(s)
                continue
            data = frame([Draft.code, conn.round + 5, conn.position, [1, 2, 3], 1.0, [], []])
        if a.send(s, data, kind):
            a.await_close(s, 1.0)
        else:
            a.close(s)
        a.stop.wait(0.1)


def read_until(s: socket.socket, conn: Connection, want: type, timeout: float) -> bool:
    """Read (as a user) until an event of type ``want``; False on an Error, the end of the
    stream, a protocol error or ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            while (ev := conn.next_event()) is not NEED_DATA:
                if isinstance(ev, want):
                    return True
                if isinstance(ev, Error | Closed):
                    return False
            s.settimeout(left)
            conn.receive_data(s.recv(65536))
    except (OSError, RemoteProtocolError, LocalProtocolError):
        return False
    return False


ATTACKS: dict[str, tuple[str, Callable[[Attack, float], None]]] = {
    "a": ("garbage", lambda a, _d: garbage(a)),
    "b": ("slowloris", slowloris),
    "c": ("heartbeat flood", lambda a, _d: heartbeat_flood(a)),
    "d": ("id churn", lambda a, _d: id_churn(a)),
    "e": ("huge frames", lambda a, _d: huge_frames(a)),
    "f": ("deep nesting", lambda a, _d: deep_nest(a)),
    "g": ("protocol break", lambda a, _d: protocol_break(a)),
}


# --- the phases --------------------------------------------------------------------------
def exit_line(p: subprocess.Popen[str] | None, log: Path) -> str:
    if p is None or p.poll() is None:
        return ""
    said = last_line(log)[:160]
    return f"exit {p.returncode}: {said}" if said else f"exit {p.returncode}"


def run_attack(key: str, pair: Pair, rss: RssSampler, args: argparse.Namespace) -> dict[str, Any]:
    name, body = ATTACKS[key]
    if not all(pair.alive()):
        pair.stop()
        pair.start()
    assert pair.edge is not None
    pid = pair.edge.pid
    log(f"[{key}] {name}: before {args.before:g} s")
    time.sleep(args.before)
    a = Attack(pair.port, threading.Event())
    t_a = time.monotonic()
    thread = threading.Thread(target=body, args=(a, args.during), daemon=True)
    thread.start()
    time.sleep(args.during)
    a.stop.set()
    thread.join(timeout=10)
    a.close_all()
    t_b = time.monotonic()
    log(f"[{key}] {name}: attack over, after {args.after:g} s")
    time.sleep(args.after)
    t_c = time.monotonic()
    edge_alive, user_alive = pair.alive()
    rounds = read_rounds(pair.events)
    died = rss.gone.get(pid)
    before_mb = rss.window(pid, t_a - args.before, t_a)
    during_mb = rss.window(pid, t_a, t_b)
    after_mb = rss.window(pid, t_b, t_c)
    row = {
        "attack": key,
        "name": name,
        "edge_alive": edge_alive,
        "user_alive": user_alive,
        "edge_died_after_s": None if died is None else round(died - t_a, 2),
        "edge_exit": exit_line(pair.edge, pair.dir / "edge.log"),
        "user_exit": exit_line(pair.user, pair.dir / "u0.log"),
        "before_tok_s": rate(rounds, t_a - args.before, t_a),
        "during_tok_s": rate(rounds, t_a, t_b),
        "after_tok_s": rate(rounds, t_b, t_c),
        "before_round_ms": round_ms(rounds, t_a - args.before, t_a),
        "during_round_ms": round_ms(rounds, t_a, t_b),
        "after_round_ms": round_ms(rounds, t_b, t_c),
        "max_stall_s": max_gap(rounds, t_a, t_c),
        "rss_before_mb": max(before_mb, default=None),
        "rss_peak_during_mb": max(during_mb, default=None),
        "rss_peak_after_mb": max(after_mb, default=None),
        "rss_end_mb": after_mb[-1] if after_mb else None,
        "attack_s": t_b - t_a,
        "sent": dict(sorted(a.counts.items())),
        "edge_py_sha256": pair.edge_src,
        "run_dir": str(pair.dir),
    }
    if not edge_alive:
        log(f"[{key}] the edge died {row['edge_died_after_s']} s in: {row['edge_exit']}")
    return row


def outage(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The honest user's recovery after its own interface is down for ``--outage-s`` (Mininet);
    past the edge's idle timeout the edge drops it, and it must redial and resume."""
    from emu.runners.network import await_ready as mn_ready
    from emu.runners.network import star_network

    run_dir = base / "outage"
    run_dir.mkdir()
    cfg = write_config(run_dir, args.root, "10.0.0.2", 7000)
    row: dict[str, Any] = {
        "attack": "outage",
        "name": f"{args.outage_s:g} s link outage",
        "edge_py_sha256": edge_hash(args.root),
    }
    procs: list[subprocess.Popen[str]] = []
    with star_network(1) as nw, contextlib.ExitStack() as logs:
        try:

            def start(host: Any, name: str, *role: str) -> subprocess.Popen[str]:
                err = logs.enter_context((run_dir / f"{name}.log").open("w"))
                p: subprocess.Popen[str] = host.popen(
                    node_cmd(cfg, *role),
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=args.root,
                    env=node_env(args.root),
                )
                procs.append(p)
                mn_ready(f"node {name}", p, run_dir / f"{name}.log", READY_TIMEOUT_S)
                return p

            edge = start(nw.edge, "edge", "edge")
            user = start(nw.user(0), "u0", "user", "0")
            events = run_dir / "events-u0.jsonl"
            wait_first_round(events, procs, FIRST_ROUND_TIMEOUT_S)
            time.sleep(WARMUP_S + args.before)
            u0 = nw.user(0)
            t_down = time.monotonic()
            log(f"[outage] u0-eth0 down for {args.outage_s:g} s")
            failed = []

            def ip(*cmd: str) -> None:
                out, err, code = u0.pexec(["ip", *cmd])
                if code != 0:
                    failed.append(f"ip {' '.join(cmd)}: {(err or out).strip()}")

            ip("link", "set", "u0-eth0", "down")
            time.sleep(args.outage_s)
            ip("link", "set", "u0-eth0", "up")
            t_up = time.monotonic()
            ip("route", "replace", "default", "via", "10.1.0.1")
            row["ip_failed"] = failed
            recovered = None
            while time.monotonic() < t_up + RECOVERY_LIMIT_S:
                later = [t for t, _ in read_rounds(events) if t > t_up]
                if later:
                    recovered = later[0]
                    break
                if edge.poll() is not None or user.poll() is not None:
                    break
                time.sleep(0.05)
            t_after = time.monotonic()
            if recovered is not None:
                time.sleep(args.after)
                t_after = time.monotonic()
            rounds = read_rounds(events)
            row.update(
                edge_alive=edge.poll() is None,
                user_alive=user.poll() is None,
                edge_exit=exit_line(edge, run_dir / "edge.log"),
                user_exit=exit_line(user, run_dir / "u0.log"),
                before_tok_s=rate(rounds, t_down - args.before, t_down),
                during_tok_s=rate(rounds, t_down, t_up),
                after_tok_s=rate(rounds, recovered or t_up, t_after),
                recovery_s=None if recovered is None else recovered - t_up,
                run_dir=str(run_dir),
            )
        finally:
            stop(procs[::-1])
    return row


# --- report ------------------------------------------------------------------------------
VERIFIER_SOURCES = ("nodes/edge.py", "nodes/peers.py", "nodes/core/verifier.py")


def edge_hash(root: Path) -> str:
    """Which edge ran: the first 12 hex digits of the SHA-256 of its sources (the pipeline,
    the connections the attacks reach, and the core)."""
    digest = hashlib.sha256()
    for name in VERIFIER_SOURCES:
        path = root / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:12]


def machine(root: Path) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    if shutil.which("git"):  # read only: the commit the nodes' tree is at, if it is a checkout
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        commit = r.stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "nodes_from": str(root),
        "commit": commit,
    }


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    rows = doc["attacks"]
    outs = [doc["outage"]] if "outage" in doc else []
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; {m['date']}; python {m['python']}",
        f"nodes from {m['nodes_from']} (commit {m['commit'] or '?'}); nodes/edge.py sha256 "
        + ", ".join(sorted({r["edge_py_sha256"] for r in [*rows, *outs]})),
        f"phases: {doc['before_s']:g} s before, {doc['during_s']:g} s attack, "
        f"{doc['after_s']:g} s after; one honest user (synthetic, profile timing, dipsd) on "
        "loopback; the edge's RSS in MB; the attacker shares the host",
    ]
    if rows:
        lines += [
            "",
            "| attack | edge | tok/s before | during | after | round ms b/d/a | longest stall s "
            "| RSS before | peak during | peak after | what the attack did |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        if r["edge_alive"]:
            edge = "alive" if r["user_alive"] else "alive, user died"
        else:
            edge = f"DIED at +{r['edge_died_after_s']} s"
        sent = ", ".join(f"{k} {v}" for k, v in r["sent"].items())
        ms = "/".join(fmt(r[f"{p}_round_ms"], ".0f") for p in ("before", "during", "after"))
        lines.append(
            f"| {r['attack']} {r['name']} | {edge} | {fmt(r['before_tok_s'])} | "
            f"{fmt(r['during_tok_s'])} | {fmt(r['after_tok_s'])} | {ms} | "
            f"{fmt(r['max_stall_s'])} | {fmt(r['rss_before_mb'], '.0f')} | "
            f"{fmt(r['rss_peak_during_mb'], '.0f')} | {fmt(r['rss_peak_after_mb'], '.0f')} | "
            f"{sent} |"
        )
    ended = [r for r in rows if r["edge_exit"] or r["user_exit"]]
    if ended:
        lines.append("")
    for r in ended:
        for who in ("edge", "user"):
            if r[f"{who}_exit"]:
                lines.append(f"- {r['attack']}: {who} {r[f'{who}_exit']}")
    for o in outs:
        rec = "never" if o.get("recovery_s") is None else f"{o['recovery_s']:.2f} s"
        lines += [
            "",
            f"| {o['name']} (Mininet) | tok/s before | link down | after | link-up to next round |",
            "|---|---|---|---|---|",
            f"| user 0 | {fmt(o.get('before_tok_s'))} | {fmt(o.get('during_tok_s'))} | "
            f"{fmt(o.get('after_tok_s'))} | {rec} (within {RECOVERY_LIMIT_S:g} s) |",
        ]
        for who in ("edge", "user"):
            if o.get(f"{who}_exit"):
                lines.append(f"- {who} {o[f'{who}_exit']}")
        lines += [f"- failed: {f}" for f in o.get("ip_failed", [])]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_attacks(spec: str) -> list[str]:
    if spec.strip().lower() in ("", "none"):
        return []
    names = {v[0].replace(" ", "-"): k for k, v in ATTACKS.items()}
    out = []
    for part in spec.split(","):
        p = part.strip().lower()
        key = p if p in ATTACKS else names.get(p.replace(" ", "-"))
        if key is None:
            raise SystemExit(f"unknown attack {part!r}: one of {', '.join(ATTACKS)} or none")
        out.append(key)
    return out


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="draftnet-bench-attacks-") as tmp:
        yield Path(tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=float, default=3.0, help="seconds before each attack")
    ap.add_argument("--during", type=float, default=5.0, help="seconds of each attack")
    ap.add_argument("--after", type=float, default=3.0, help="seconds after each attack")
    ap.add_argument(
        "--attacks", default=",".join(ATTACKS), help="a,b,... (or names; none: no attack)"
    )
    ap.add_argument("--outage", action="store_true", help="add the link-outage row (Mininet)")
    ap.add_argument(
        "--outage-s", type=float, default=OUTAGE_S, help="how long the user's link is down"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    ap.add_argument("--keep", type=Path, help="keep the nodes' logs and events in this folder")
    ap.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the source tree whose emu.runners.node runs the edge and the user "
        "(default: this one)",
    )
    args = ap.parse_args()
    keys = parse_attacks(args.attacks)
    args.root = args.root.resolve()
    doc: dict[str, Any] = {
        "machine": machine(args.root),
        "before_s": args.before,
        "during_s": args.during,
        "after_s": args.after,
        "attacks": [],
    }
    t0 = time.monotonic()
    with scratch() as tmp:
        base = args.keep or tmp
        base.mkdir(parents=True, exist_ok=True)
        if keys:
            pair = Pair(base, args.root)
            rss = RssSampler(lambda: pair.edge.pid if pair.edge is not None else None)
            rss.start()
            try:
                pair.start()
                for key in keys:
                    doc["attacks"].append(run_attack(key, pair, rss, args))
            finally:
                pair.stop()
                rss.finish()
            doc["restarts"] = pair.starts - 1
        if args.outage:
            doc["outage"] = outage(args, base)
    doc["wall_s"] = time.monotonic() - t0
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
