"""The emulated network: a Mininet star with a shaper (userspace or tc) at its access point.

Layer: emu (orchestration; imports Mininet). Everything that starts something is a context
manager that always tears down: ``star_network`` (the hosts, their links and namespaces) and
``userspace_shaping`` (the shaper process, its TUN devices, the access point's policy routes)
and ``tc_shaping`` (the process that drives the access point's qdiscs, which it removes).
``preflight`` refuses, in one line each, what would leave a run half-built: not root, no
``mnexec`` (Debian's ``mininet`` package), no ``/dev/net/tun``.

Nothing a run starts outlives it: every process a host starts (its shell, the nodes, the shaper)
carries a parent-death signal (SIGKILL when the runner dies, even by SIGKILL itself; it survives
``mnexec``'s exec), and, given a ``Manifest`` (``emu.runners.manifest``), the network and the
shapers write down what they make as they make it, for ``clean`` after a runner that was killed.

Shaping (``emu.shaping.tund``): for user i, packets arriving at the access point from the user
(``iif ap-u<i>``) are routed into TUN ``su<i>``, and packets from any server to 10.1.i.0/24 into
``sd<i>``; the shaper writes each back when its link lets it through, and the kernel forwards it
from there (packets out of a TUN device match no shaping rule). Each shaping table has a
blackhole route behind the TUN route: if the shaper dies, the link drops everything rather than
carrying traffic unshaped. A link between two servers (``ServerLink`` j, src to dst) is TUN
``sx<j>``: packets arriving from the source (``iif ap-<src>``) for the destination's subnet.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.errors import ConfigError, ShapingError
from emu.runners.manifest import Manifest
from emu.shaping.spec import LinkPair, ServerLink
from topologies.star import server_subnet, user_subnet

__all__ = [
    "Network",
    "await_ready",
    "preflight",
    "star_network",
    "tail",
    "tc_shaping",
    "userspace_shaping",
]

READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


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
    manifest: Manifest | None = None  # where what the run makes is written down
    servers: tuple[str, ...] = ("edge",)  # the server nodes' hosts, in the topology's order

    def user(self, i: int) -> Any:
        return self.net.get(f"u{i}")

    def server(self, name: str) -> Any:
        return self.net.get(name)

    def addresses(self) -> dict[str, str]:
        """Each server's address, as the topology gave it."""
        return {name: str(self.server(name).IP()) for name in self.servers}

    @property
    def edge(self) -> Any:
        """The first server's host (DiP-SD's one edge)."""
        return self.server(self.servers[0])

    @property
    def edge_ip(self) -> str:
        """The first server's address, as the topology gave it."""
        return str(self.edge.IP())

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


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child is SIGKILLed when ``parent`` (the runner's thread that
    starts it) dies. Set between fork and exec; kept across exec (``mnexec``, ``env``, the
    interpreter: none is set-user-ID), cleared only in the child's own children."""

    def preexec() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the setting took
            os._exit(1)

    return preexec


def _mortal_host() -> type:
    """Mininet's ``Host`` whose every process (its shell; whatever it ``popen``s or
    ``pexec``s) dies with the runner."""
    from mininet.node import Host

    class MortalHost(Host):  # type: ignore[misc]
        def _popen(self, cmd: list[str], **params: Any) -> Any:
            params.setdefault("preexec_fn", _die_with(os.getpid()))
            return super()._popen(cmd, **params)

    return MortalHost


@contextmanager
def star_network(
    users: int, manifest: Manifest | None = None, servers: Sequence[str] = ("edge",)
) -> Iterator[Network]:
    """A star of ``users`` user hosts, the access point (a router) and a host per server
    node (DiP-SD: the one ``edge``); torn down on every exit. ``manifest`` records each
    host's shell (its namespace goes with it) and the interfaces made in it."""
    preflight()
    from mininet.log import setLogLevel
    from mininet.net import Mininet

    from topologies.registry import topology

    setLogLevel("error")
    net = Mininet(
        topo=topology("star", users=users, servers=tuple(servers)),
        host=_mortal_host(),
        controller=None,
        build=False,
    )
    try:
        net.build()
        if manifest is not None:
            for host in net.hosts:
                manifest.process(host.pid, what=f"host {host.name}", match=f"mininet:{host.name}")
                manifest.made("interface", host.intfNames(), where=host.name)
        net.start()
        ap = net.get("ap")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            _run(ap, f"sysctl -qw {key}")
        _run(ap, "sysctl -qw net.ipv4.conf.default.rp_filter=0")
        for k, name in enumerate(servers):
            _run(net.get(name), f"ip route replace 10.1.0.0/16 via 10.0.{k}.1")
        yield Network(net, users, manifest, tuple(servers))
    finally:
        net.stop()


@contextmanager
def _shaper(network: Network, module: str, config: dict[str, Any], run_dir: Path) -> Iterator[None]:
    """Run a shaper process (``python -m module CONFIG``) in the access point until the block
    ends; its config in ``shaper.json``, its output in ``shaper.log``."""
    cfg_path = run_dir / "shaper.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    with (run_dir / "shaper.log").open("w") as log:
        proc = network.ap.popen(
            [sys.executable, "-m", module, str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            if network.manifest is not None:
                network.manifest.process(proc.pid, what=f"shaper {module}", match=str(cfg_path))
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


def _check_links(network: Network, links: Sequence[LinkPair]) -> None:
    if len(links) != network.users:
        raise ValueError(f"{len(links)} link specs for {network.users} users")


SERVER_LINK_TABLE = 2100  # user i's tables are 100 + i and 1100 + i (i < 250)


@contextmanager
def userspace_shaping(
    network: Network,
    links: Sequence[LinkPair],
    run_dir: Path,
    *,
    seed: int = 0,
    between: Sequence[ServerLink] = (),
) -> Iterator[Path]:
    """Shape every user's link both ways (``links[i]``: user i's) and every link between
    servers with ``emu.shaping.tund`` in the access point. Yields the path of the shaper's
    counters (JSON)."""
    _check_links(network, links)
    ap = network.ap
    stats = run_dir / "shaper-stats.json"
    config = {
        "seed": seed,
        "stats": str(stats),
        "links": [
            *(
                {**spec.config(), "tun": f"s{d[0]}{i}"}
                for i, pair in enumerate(links)
                for d, spec in (("up", pair.up), ("down", pair.down))
            ),
            *({**link.spec.config(), "tun": f"sx{j}"} for j, link in enumerate(between)),
        ],
    }
    tables = _tables(network, len(between))
    if network.manifest is not None:
        tuns = [f"s{d}{i}" for i in range(network.users) for d in "ud"]
        tuns += [f"sx{j}" for j in range(len(between))]
        network.manifest.made("TUN", tuns, where="ap")
        network.manifest.made("route table", [str(t) for t in tables], where="ap")
        network.manifest.made("rule", ["pref 100"], where="ap")
    index = {name: k for k, name in enumerate(network.servers)}
    try:
        with _shaper(network, "emu.shaping.tund", config, run_dir):
            for i in range(network.users):
                up, down = 100 + i, 1100 + i
                for cmd in (
                    f"ip rule add iif ap-u{i} lookup {up} pref 100",
                    *_tun_route(f"su{i}", up),
                    *(
                        f"ip rule add iif ap-{name} to {user_subnet(i)} lookup {down} pref 100"
                        for name in network.servers
                    ),
                    *_tun_route(f"sd{i}", down),
                ):
                    _run(ap, cmd)
            for j, link in enumerate(between):
                table, dst = SERVER_LINK_TABLE + j, server_subnet(index[link.dst])
                for cmd in (
                    f"ip rule add iif ap-{link.src} to {dst} lookup {table} pref 100",
                    *_tun_route(f"sx{j}", table),
                ):
                    _run(ap, cmd)
            yield stats
    finally:
        _unroute(network, tables)


def _tun_route(tun: str, table: int) -> tuple[str, str]:
    """A shaping table: into the TUN device, and nowhere if the device is gone."""
    return (
        f"ip route add default dev {tun} table {table}",
        f"ip route add blackhole default metric 4000 table {table}",
    )


def _tables(network: Network, server_links: int) -> list[int]:
    users = [t for i in range(network.users) for t in (100 + i, 1100 + i)]
    return users + [SERVER_LINK_TABLE + j for j in range(server_links)]


@contextmanager
def tc_shaping(
    network: Network,
    links: Sequence[LinkPair],
    run_dir: Path,
    *,
    tick_s: float = 0.01,
    between: Sequence[ServerLink] = (),
) -> Iterator[Path]:
    """Shape every user's link both ways with kernel qdiscs (``emu.shaping.tcd``): HTB classes,
    netem beneath where a link has delay, jitter or loss. The uplinks are classes on the
    access point's edge interface, picked by source subnet; each downlink a class on its
    user's interface. Yields the path of the counters (JSON)."""
    _check_links(network, links)
    if between:
        raise ConfigError(
            f"emu.shaping = tc shapes the users' links only, and this deployment links servers "
            f"({', '.join(link.name for link in between)}): use userspace"
        )
    if len(network.servers) > 1:
        raise ConfigError(
            f"emu.shaping = tc shapes the uplinks on one server's interface, and this deployment "
            f"has {len(network.servers)} servers ({', '.join(network.servers)}): use userspace"
        )
    stats = run_dir / "shaper-stats.json"
    config = {
        "stats": str(stats),
        "tick_s": tick_s,
        "links": [
            entry
            for i, pair in enumerate(links)
            for entry in (
                {
                    **pair.up.config(),
                    "name": f"su{i}",
                    "dev": f"ap-{network.servers[0]}",
                    "minor": i + 1,
                    "match": "src",
                    "subnet": user_subnet(i),
                },
                {
                    **pair.down.config(),
                    "name": f"sd{i}",
                    "dev": f"ap-u{i}",
                    "minor": 1,
                    "match": "dst",
                    "subnet": user_subnet(i),
                },
            )
        ],
    }
    if network.manifest is not None:
        devs = [f"ap-{network.servers[0]}", *(f"ap-u{i}" for i in range(network.users))]
        network.manifest.made("qdisc", devs, where="ap")
    with _shaper(network, "emu.shaping.tcd", config, run_dir):
        yield stats


def _unroute(network: Network, tables: Sequence[int]) -> None:
    """Remove the shaping rules and tables (the network may be shaped again)."""
    ap = network.ap
    for table in tables:
        _pexec(ap, f"ip route flush table {table}")
    while _pexec(ap, "ip rule del pref 100")[2] == 0:
        pass


def stop_processes(procs: Sequence[Any], timeout_s: float = 15.0) -> None:
    """Stop node processes in the order given: each still running is continued (a stopped
    process could not stop) and terminated; then each is waited for, and killed after
    ``timeout_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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
