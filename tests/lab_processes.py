"""Lab commands as processes on loopback, for the lab tests: a free port, a command started
as a lab would start it on its machine, its ``ready`` line awaited, and a condition on what
the nodes wrote awaited."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str, log: Path) -> subprocess.Popen[str]:
    """``draftnet ARGS`` (as ``python -m emu.cli``), its stderr into ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "emu.cli", *args],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env,
    )  # fmt: skip


def await_ready(p: subprocess.Popen[str], log: Path) -> None:
    """The command's first line says it is ready (its log's tail in the failure if not)."""
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith("ready"), log.read_text()[-2000:]


def kill_left(procs: dict[str, subprocess.Popen[str]]) -> None:
    """Kill whatever is still running (a test that failed half-way leaves nothing behind)."""
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll ``cond`` every 0.1 s until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
