"""The emulated network: a Mininet star with a shaper (userspace or tc) at its access point.

Layer: emu (orchestration; imports Mininet). Everything that starts something is a context
manager that always tears down: ``star_network`` (the hosts, their links and namespaces) and
``userspace_shaping`` (the shaper process, its TUN devices, the access point's policy routes)
and ``tc_shaping`` (the process that drives the access point's qdiscs, which it removes).
``preflight`` refuses, in one line each, what would leave a run half-built: not root, no
``mnexec`` (Debian's ``mininet`` package), no ``/dev/net/tun``. ``clean`` removes what a killed
run left behind.

Shaping (``emu.shaping.tund``): for user i, packets arriving at the access point from the user
(``iif ap-u<i>``) are routed into TUN ``su<i>``, and packets from the edge to 10.1.i.0/24 into
``sd<i>``; the shaper writes each back when its link lets it through, and the kernel forwards it
from there (packets out of a TUN device match no shaping rule). Each shaping table has a
blackhole route behind the TUN route: if the shaper dies, the link drops everything rather than
carrying traffic unshaped.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.errors import ConfigError, ShapingError
from topologies.star import user_subnet

__all__ = [
    "Network",
    "await_ready",
    "clean",
    "preflight",
    "shaping",
    "star_network",
    "tail",
    "tc_shaping",
    "userspace_shaping",
]

READY_TIMEOUT_S = 20.0


def preflight() -> None:
    """One-line ConfigErrors for what the emulation cannot run without."""
    if os.geteuid() != 0:
        raise ConfigError("the emulation must run as root: Mininet creates network namespaces")
    if shutil.which("mnexec") is None:
        raise ConfigError(
            "mnexec is missing: install Debian's mininet package (apt-get install mininet; "
            "the README's set-up does this)"
        )
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the Mininet Python API is missing: pip install 'draftnet[emu]' "
            "(the README's set-up does this)"
        ) from None
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise ConfigError("/dev/net/tun must exist and be writable for the userspace shaper")


@dataclass(slots=True)
class Network:
    net: Any  # mininet.net.Mininet
    users: int

    def host(self, name: str) -> Any:
        return self.net.get(name)

    def user(self, i: int) -> Any:
        return self.net.get(f"u{i}")

    @property
    def edge(self) -> Any:
        return self.net.get("edge")

    @property
    def ap(self) -> Any:
        return self.net.get("ap")

    def prompt(self) -> None:
        """Mininet's interactive prompt on this network (until the user leaves it)."""
        from mininet.cli import CLI

        CLI(self.net)


def _pexec(host: Any, cmd: str) -> tuple[str, str, int]:
    """Run ``cmd`` in ``host`` as an argument list: Mininet's ``shell=True`` reads ``$SHELL``,
    which a CI runner's root shell need not set."""
    out, err, code = host.pexec(shlex.split(cmd))
    return str(out), str(err), int(code)


def _run(host: Any, cmd: str) -> str:
    out, err, code = _pexec(host, cmd)
    if code != 0:
        raise ShapingError(f"{host.name}: `{cmd}` failed ({code}): {(err or out).strip()}")
    return str(out)


@contextmanager
def star_network(users: int) -> Iterator[Network]:
    """A star of ``users`` user hosts, the access point (a router) and the edge; torn down
    on every exit."""
    preflight()
    from mininet.log import setLogLevel
    from mininet.net import Mininet

    from topologies.registry import topology

    setLogLevel("error")
    net = Mininet(topo=topology("star", users=users), controller=None, build=False)
    try:
        net.build()
        net.start()
        ap = net.get("ap")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            _run(ap, f"sysctl -qw {key}")
        _run(ap, "sysctl -qw net.ipv4.conf.default.rp_filter=0")
        _run(net.get("edge"), "ip route replace 10.1.0.0/16 via 10.0.0.1")
        yield Network(net, users)
    finally:
        net.stop()


@contextmanager
def _shaper(ap: Any, module: str, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
    """Run a shaper process (``python -m module CONFIG``) in the access point until the block
    ends; its config in ``shaper.json``, its output in ``shaper.log``."""
    cfg_path = run_dir / "shaper.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    with (run_dir / "shaper.log").open("w") as log:
        proc = ap.popen(
            [sys.executable, "-m", module, str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            await_ready(f"the shaper ({module})", proc, run_dir / "shaper.log", READY_TIMEOUT_S)
            yield
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _check_links(network: Network, links: list[dict[str, Any]]) -> None:
    if len(links) != network.users:
        raise ValueError(f"{len(links)} link specs for {network.users} users")


@contextmanager
def userspace_shaping(
    network: Network, links: list[dict[str, Any]], run_dir: Path, *, seed: int = 0
) -> Iterator[Path]:
    """Shape every user's link both ways with ``emu.shaping.tund`` in the access point.

    ``links[i]`` is ``{"up": spec, "down": spec}`` for user i, a spec as tund's config takes
    (without its ``tun``). Yields the path of the shaper's counters (JSON)."""
    _check_links(network, links)
    ap = network.ap
    stats = run_dir / "shaper-stats.json"
    config = {
        "seed": seed,
        "stats": str(stats),
        "links": [
            {**spec, "tun": f"s{d[0]}{i}"}
            for i, pair in enumerate(links)
            for d, spec in (("up", pair["up"]), ("down", pair["down"]))
        ],
    }
    try:
        with _shaper(ap, "emu.shaping.tund", config, run_dir):
            for i in range(network.users):
                up, down = 100 + i, 1100 + i
                for cmd in (
                    f"ip rule add iif ap-u{i} lookup {up} pref 100",
                    f"ip route add default dev su{i} table {up}",
                    f"ip route add blackhole default metric 4000 table {up}",
                    f"ip rule add iif ap-edge to {user_subnet(i)} lookup {down} pref 100",
                    f"ip route add default dev sd{i} table {down}",
                    f"ip route add blackhole default metric 4000 table {down}",
                ):
                    _run(ap, cmd)
            yield stats
    finally:
        _unroute(network)


@contextmanager
def tc_shaping(
    network: Network, links: list[dict[str, Any]], run_dir: Path, *, tick_s: float = 0.01
) -> Iterator[Path]:
    """Shape every user's link both ways with kernel qdiscs (``emu.shaping.tcd``): HTB classes,
    netem beneath where a link has delay, jitter or loss. The uplinks are classes on the
    access point's edge interface, picked by source subnet; each downlink a class on its
    user's interface. Yields the path of the counters (JSON)."""
    _check_links(network, links)
    stats = run_dir / "shaper-stats.json"
    config = {
        "stats": str(stats),
        "tick_s": tick_s,
        "links": [
            entry
            for i, pair in enumerate(links)
            for entry in (
                {
                    **pair["up"],
                    "name": f"su{i}",
                    "dev": "ap-edge",
                    "minor": i + 1,
                    "match": "src",
                    "subnet": user_subnet(i),
                },
                {
                    **pair["down"],
                    "name": f"sd{i}",
                    "dev": f"ap-u{i}",
                    "minor": 1,
                    "match": "dst",
                    "subnet": user_subnet(i),
                },
            )
        ],
    }
    with _shaper(network.ap, "emu.shaping.tcd", config, run_dir):
        yield stats


@contextmanager
def shaping(
    backend: str, network: Network, links: list[dict[str, Any]], run_dir: Path, *, seed: int = 0
) -> Iterator[Path]:
    """The chosen backend (``userspace`` or ``tc``) on every user's link, both ways."""
    if backend == "tc":
        with tc_shaping(network, links, run_dir) as stats:
            yield stats
    else:
        with userspace_shaping(network, links, run_dir, seed=seed) as stats:
            yield stats


def _unroute(network: Network) -> None:
    """Remove the shaping rules and tables (the network may be shaped again)."""
    ap = network.ap
    for i in range(network.users):
        for table in (100 + i, 1100 + i):
            _pexec(ap, f"ip route flush table {table}")
    while _pexec(ap, "ip rule del pref 100")[2] == 0:
        pass


def tail(path: Path, lines: int = 5) -> list[str]:
    """The last lines a process wrote to its log (none if it wrote nothing)."""
    try:
        return path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []


def await_ready(what: str, proc: Any, log: Path, timeout_s: float) -> None:
    """Wait for a process's ``ready`` line on its stdout; ShapingError with the last lines of
    its log if it exits, says something else, or stays silent past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    line = ""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            break  # silent past the deadline
        line = proc.stdout.readline()
        if line.strip() == "ready" or not line:
            break
    if line.strip() != "ready":
        said = " | ".join(tail(log, 3)) or f"said {line!r}"
        raise ShapingError(f"{what} did not start: {said}")


def clean() -> list[str]:
    """Remove what a killed run left behind: Mininet's namespaces, links and processes."""
    from mininet.clean import cleanup

    done = []
    out = subprocess.run(["pkill", "-f", "emu.shaping.tund"], check=False, capture_output=True)
    if out.returncode == 0:
        done.append("killed leftover shaper processes")
    # Mininet's cleanup also asks Open vSwitch, which draftnet does not use: hush its errors.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            cleanup()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    done.append("mininet cleanup (namespaces, links, processes)")
    return done
