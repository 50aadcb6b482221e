"""``draftnet run``: the main job. Mininet hosts, shaped links, one process per node.

Layer: emu (orchestration; Mininet through ``emu.runners.network``). For each policy: a fresh shaper
on the users' links and the links between servers, every server node (verifiers, a router) and
every user started as their own processes in their hosts (``emu.runners.node``), the workload for
``sim.duration_s`` seconds, then every process stopped and the records summarised; the result is
typed (``RunSummary``). Before the first policy each link is probed (RTT, one-way delay, rate where
one is configured) and configured is compared with measured: ``fidelity`` lists every link, and
``strict`` fails the run on a link outside tolerance. A node that dies mid-run is recorded with the
last lines it wrote, and so is one that stalls (alive, recording nothing); the run goes on with the
others. An edge that dies ends its policy there: that policy's result is no result (``valid`` false,
with ``invalid_reason``; so is the run's top-level ``valid``).

Lifecycle: SIGTERM and SIGHUP stop a run as SIGINT does (``Interrupted``, a KeyboardInterrupt,
raised in the main thread; a second signal is ignored while it tears down). Every ``with`` tears
down (nodes, shaper, network), then ``summary.json`` and ``report.md`` are written from what the
nodes recorded so far, marked ``partial`` with where the run ``stopped``. Every process the run
starts dies with the runner, even a runner killed by SIGKILL (``emu.runners.network``), and what the
run makes is written down as it is made, for ``draftnet clean`` (``emu.runners.manifest``).

Shaping backends: ``userspace`` (``emu.shaping.tund``, a TUN forwarder) works on any kernel;
``tc`` (``emu.shaping.tcd``: HTB, netem beneath) needs netem for delay, jitter and loss, which
is probed. ``auto`` picks tc where netem is and tc can give every link what it needs (not a
Mahimahi trace, not burst loss, not a link between servers), else userspace; ``shaping_why``
says why.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from channel_models.link import LinkState
from channel_models.trace import rate_bps
from emu.deploy.deployment import Deployment, assemble
from emu.deploy.runtime import (
    memo_planner,
    model_setup,
    node_problem,
    node_scenario,
    radio_comm_ms,
    radio_comm_noise,
    with_comm,
)
from emu.errors import ShapingError
from emu.files import write_atomic
from emu.models.build import GreedyReference, check_sessions, read_sessions
from emu.planner import Problem
from emu.planner.lattice import Lattice
from emu.results.metrics import Recorder
from emu.results.runreport import stopped_line, write_run_report
from emu.results.types import LinkCheck, Measured, RunResult, RunSummary
from emu.runners.faults import Injector, cut_paths
from emu.runners.manifest import run_manifest
from emu.runners.network import (
    Network,
    await_ready,
    preflight,
    star_network,
    stop_processes,
    tail,
)
from emu.runners.shapers import Shaper, choose_shaper
from emu.runners.timescale import TimeScale, auto_time_scale
from emu.scenario import Scenario, scenario_toml
from emu.shaping.probe import IP_UDP_HEADERS
from emu.shaping.sources import load_series
from emu.shaping.spec import LinkPair, LinkSpec, SeriesRef, ServerLink
from topologies.registry import check as check_topology

__all__ = ["STOP_SIGNALS", "Interrupted", "emulate"]

PROBE_PORT = 9000
READY_TIMEOUT_S = 120.0  # a user loads its model before it connects
Progress = Callable[[str, float], None]
MEASURED = ("rtt_ms", "up_ms", "down_ms", "up_rate_bps")
SERIES_FIELDS = ("rate_bps", "delay_ms", "jitter_ms", "loss")
STALL_S = 10.0  # a live node that records nothing for this long (modelled) has stalled
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


Specs = list[LinkPair]
Configured = list[dict[str, float]]


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (``STOP_SIGNALS``): raised in the main thread where it was,
    so that every ``finally`` tears down as for Ctrl-C. ``said`` is where the run stopped and
    where its partial results are, once they are written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.at = time.monotonic()
        self.said = ""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP handled as SIGINT for the block (restored after): the first raises
    ``Interrupted``; the next are ignored, so that they cannot cut the teardown short."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread only: its own caller handles them
        return
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise Interrupted(signum)

    # A signal the caller chose to ignore (nohup, a background job) stays ignored.
    saved = {
        s: signal.signal(s, stop) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@dataclass(slots=True)
class _Where:
    """Where a run is, for a report of how far it got should it be stopped."""

    phase: str = "starting"
    policy: str | None = None  # the policy running, until its result is in
    t0: float | None = None  # when its workload started (monotonic), once every node was ready
    watch: _Watch | None = None


def radio_priors(
    sc: Scenario, out_dir: Path
) -> tuple[str | None, tuple[float, ...] | None, tuple[Lattice, ...] | None]:
    """On radio links: the radio model's series (``channel/linkstates.npz``, the trace the
    simulation draws from the same seed), and each user's communication prior and its noise
    from it, as the simulation takes them."""
    if sc.network.model != "radio":
        return None, None, None
    from emu.runners.channel import run_channel

    channel_dir = out_dir / "channel"
    channel_dir.mkdir(exist_ok=True)
    run_channel(sc, channel_dir)
    npz = str(channel_dir / "linkstates.npz")
    up, down = load_series(npz, "up"), load_series(npz, "down")
    comm = radio_comm_ms(sc, up, down)
    return npz, comm, radio_comm_noise(sc, up, down, comm)


def _links(
    sc: Scenario, problem: Problem, npz: str | None, scale: float = 1.0
) -> tuple[Specs, Specs, Configured]:
    """Per user the shaper's specs both ways, the specs to probe the links at, and what each
    link is configured to give (on the wall: stretched by the time scale). A radio series is
    probed at its mean state held still (a probe takes a second or two; what it checks is that
    the shaper gives a link what it is told to)."""
    specs, probed, configured = _modelled_links(sc, problem, npz)
    if scale == 1.0:
        return specs, probed, configured

    def scaled(pairs: Specs) -> Specs:
        return [pair.scaled(scale) for pair in pairs]

    wall = [
        {**c, "rtt_ms": c["rtt_ms"] * scale, "up_rate_bps": c["up_rate_bps"] / scale}
        for c in configured
    ]
    return scaled(specs), scaled(probed), wall


def _modelled_links(
    sc: Scenario, problem: Problem, npz: str | None
) -> tuple[Specs, Specs, Configured]:
    net = sc.network
    specs: Specs = []
    probed: Specs = []
    configured: Configured = []
    if npz is not None:
        data = np.load(npz)
        for i in range(problem.size):
            specs.append(
                LinkPair(
                    LinkSpec(series=SeriesRef(npz, "up", i)),
                    LinkSpec(series=SeriesRef(npz, "down", i)),
                )
            )
            mean = {
                d: {k: float(data[f"{d}_{k}"][i].mean()) for k in SERIES_FIELDS}
                for d in ("up", "down")
            }
            # Loss left out of the probe's links: ten echoes cannot measure it.
            held = {d: {k: v for k, v in m.items() if k != "loss"} for d, m in mean.items()}
            probed.append(LinkPair(LinkSpec.fixed(**held["up"]), LinkSpec.fixed(**held["down"])))
            configured.append(
                {
                    "rtt_ms": _expected_rtt(
                        mean["up"]["delay_ms"] + mean["down"]["delay_ms"],
                        mean["up"]["jitter_ms"] + mean["down"]["jitter_ms"],
                    ),
                    "up_rate_bps": mean["up"]["rate_bps"],
                    "up_loss": mean["up"]["loss"],
                }
            )
        return specs, probed, configured
    # A fixed link for every user, each direction at the rate of its trace where it has one.
    up_trace, down_trace = (
        str(Path(t).resolve()) if t else "" for t in (net.trace_up, net.trace_down)
    )
    up_per_ms = net.trace("trace_up")
    # A trace's rate: its opportunities' bytes (mm-link's 1504 each) a second, on average.
    up_rate = 0.0 if up_per_ms is None else float(rate_bps(up_per_ms).mean())
    for i, u in enumerate(problem.users):
        noise = sc.link_noise(i)
        state = LinkState(
            rate_bps=net.rate_bps,
            delay_ms=u.comm_ms / 2,
            jitter_ms=noise.jitter_ms,
            loss=noise.loss,
        )
        specs.append(
            LinkPair(LinkSpec(state=state, trace=up_trace), LinkSpec(state=state, trace=down_trace))
        )
        configured.append(
            {
                "rtt_ms": _expected_rtt(u.comm_ms, 2 * noise.jitter_ms),
                "up_rate_bps": up_rate if up_trace else net.rate_bps,
                "up_loss": noise.loss,
            }
        )
    return specs, specs, configured


def _configured_between(
    between: Sequence[ServerLink],
) -> list[tuple[ServerLink, dict[str, float]]]:
    """What each link between servers is configured to give, probed from its source: the round
    trip over it and back (the way back is the reverse link's, if any: else unshaped), and its
    own rate and loss (on the wall: stretched by its time scale)."""
    state = {(link.src, link.dst): link.spec.state for link in between}
    out = []
    for link in between:
        there, back = link.spec.state, state.get((link.dst, link.src))
        assert there is not None  # a link between servers is a fixed state
        delay, jitter = there.delay_ms, there.jitter_ms
        if back is not None:
            delay, jitter = delay + back.delay_ms, jitter + back.jitter_ms
        scale = link.spec.time_scale
        conf = {
            "rtt_ms": _expected_rtt(delay * scale, jitter * scale),
            "up_rate_bps": there.rate_bps / scale,
            "up_loss": there.loss,
        }
        out.append((link, conf))
    return out


def _expected_rtt(delays_ms: float, jitters_ms: float) -> float:
    """The one-way delays both ways plus each half-normal jitter's mean (sigma sqrt(2/pi))."""
    return delays_ms + jitters_ms * math.sqrt(2.0 / math.pi)


def _burst_packets(rate_bps: float) -> int:
    """A rate probe's burst: 200 ms of the link (so that a scheduling hiccup of the host, which
    bunches the packets due meanwhile, is a small share of it), 100 to 600 datagrams (the most
    that fit the userspace shaper's 1 MB queue). None for an unlimited link."""
    if rate_bps <= 0:
        return 0
    return int(np.clip(rate_bps * 0.2 / ((1200 + IP_UDP_HEADERS) * 8), 100, 600))


PROBE_TRIES = 3  # a probe out of tolerance is made again, up to this many times in all


def _probe(near: Any, address: str, conf: Mapping[str, float]) -> tuple[dict[str, Any], bool]:
    """One probe of a link from ``near`` to ``address``: what it measured, and whether that is
    within the tolerance (``_fidelity``)."""
    burst = _burst_packets(conf["up_rate_bps"])
    line = f"{sys.executable} -m emu.shaping.probe measure {address} {PROBE_PORT} "
    line += f"--echoes 10 --burst {burst} --burst-bps {2 * conf['up_rate_bps']} --packets 0"
    text = near.cmd(line).strip().splitlines()
    try:
        meas = json.loads(text[-1])
    except (IndexError, ValueError):
        meas = {"rtt_ms": None, "up_rate_bps": None}
    rtt = meas.get("rtt_ms")
    ok = rtt is not None and abs(rtt - conf["rtt_ms"]) <= max(2.0, 0.1 * conf["rtt_ms"])
    if burst and meas.get("up_rate_bps"):
        ok = ok and abs(meas["up_rate_bps"] / conf["up_rate_bps"] - 1.0) <= 0.1
    return {k: meas.get(k) for k in MEASURED}, bool(ok)


def _fidelity(
    nw: Network, configured: Configured, between: Sequence[ServerLink] = ()
) -> tuple[LinkCheck, ...]:
    """Probe every user's link (to the first server) and every link between servers (from its
    source); ok when the RTT is within 2 ms (or 10%) of what the link is configured to give
    (delays and the jitters' means, both ways), and the rate within 10%. A probe out of
    tolerance is made again (up to ``PROBE_TRIES`` in all): a shaper in user space on a busy
    host can miss one probe's timing without the link being wrong; one that fails every time
    is reported as it measured (``tries`` says how many were made)."""
    probes = [
        (f"u{i}<->{nw.servers[0]}", nw.user(i), nw.servers[0], conf)
        for i, conf in enumerate(configured)
    ]
    probes += [
        (link.name, nw.server(link.src), link.dst, conf)
        for link, conf in _configured_between(between)
    ]
    servers = []
    for far in dict.fromkeys(p[2] for p in probes):
        cmd = [sys.executable, "-m", "emu.shaping.probe", "serve", str(PROBE_PORT)]
        servers.append(nw.server(far).popen(cmd))
        if nw.manifest is not None:
            nw.manifest.process(servers[-1].pid, what="link probe", match=" ".join(cmd[1:]))
    time.sleep(0.3)
    at = nw.addresses()
    out = []
    try:
        for label, near, far, conf in probes:
            tries = 0
            ok = False
            while not ok and tries < PROBE_TRIES:
                measured, ok = _probe(near, at[far], conf)
                tries += 1
            out.append(
                LinkCheck(link=label, configured=conf, measured=measured, ok=ok, tries=tries)
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    return tuple(out)


class _Watch:
    """The node processes' faults while a policy runs: a node that exits is a death; one whose
    records stop growing for ``STALL_S`` modelled seconds while it lives is a stall (it is left
    to run: the edge's deadlines already route around a user that goes quiet). A router
    records only when a user dials it, and a verifier with no users never: such nodes are
    ``quiet``, and only their death counts. Each is recorded once, with the node's last
    output."""

    def __init__(self, pdir: Path, scale: float, quiet: frozenset[str] = frozenset()) -> None:
        self.pdir, self.scale, self.quiet = pdir, scale, quiet
        self.deaths: list[dict[str, Any]] = []
        self.stalls: list[dict[str, Any]] = []
        self.restarting: set[str] = set()  # killed by [faults], to be started again: no death
        self.injected: list[dict[str, Any]] = []  # what [faults] did, and when
        self._seen: dict[str, tuple[int, float]] = {}  # records' size, and since when

    def check(self, procs: dict[str, Any], t_s: float) -> None:
        now = time.monotonic()
        for name, p in procs.items():
            log = self.pdir / f"{name}.log"
            if name in self.restarting:
                continue
            if p.poll() is not None:
                if not any(d["node"] == name for d in self.deaths):
                    self.deaths.append(
                        {"node": name, "exit": p.returncode, "t_s": t_s, "last_output": tail(log)}
                    )
                continue
            if name in self.quiet:
                continue
            records = self.pdir / f"events-{name}.jsonl"
            size = records.stat().st_size if records.exists() else 0
            last = self._seen.get(name)
            if last is None or last[0] != size:
                self._seen[name] = (size, now)
            elif (now - last[1]) / self.scale > STALL_S and not any(
                d["node"] == name for d in self.stalls
            ):
                self.stalls.append(
                    {
                        "node": name,
                        "t_s": t_s,
                        "silent_s": (now - last[1]) / self.scale,
                        "last_output": tail(log),
                    }
                )


def _run_policy(
    dep: Deployment,
    nw: Network,
    policy: str,
    specs: Specs,
    pdir: Path,
    *,
    between: Sequence[ServerLink],
    where: _Where,
    shaper: Shaper,
    scale: float,
    comm: tuple[float, ...] | None,
    noise: tuple[Lattice, ...] | None,
    progress: Progress | None,
) -> tuple[float, float]:
    """Run one policy's nodes for the scenario's duration, or until a server node (a verifier
    or the router) dies, on the users' links ``specs`` and the servers' ``between``; when the
    workload started and ended (monotonic). ``where`` follows the run as it goes."""
    sc = dep.scenario
    pdir.mkdir(parents=True, exist_ok=True)
    at = nw.addresses()
    mine = node_scenario(
        sc, policy=policy, time_scale=scale, comm_ms=comm, comm_noise=noise, addresses=at
    )
    port = str(sc.deployment.port)
    (pdir / "scenario.toml").write_text(scenario_toml(mine))
    node = [sys.executable, "-m", "emu.runners.node", str(pdir / "scenario.toml")]
    # A router records only when a user dials it, and a verifier with no users never.
    idle = {v for v, users in dep.groups.items() if not users}
    quiet = frozenset(s.name for s in dep.servers if s.role == "router" or s.name in idle)
    watch = where.watch = _Watch(pdir, scale, quiet=quiet)
    where.phase = "shaping the links"
    with shaper.running(nw, specs, pdir, seed=sc.sim.seed, between=between):
        procs: dict[str, Any] = {}
        logs: dict[str, Path] = {}

        started: dict[str, tuple[Any, tuple[str, ...]]] = {}

        def start(name: str, host: Any, *extra: str) -> Any:
            logs[name] = pdir / f"{name}.log"
            p = host.popen(
                [*node, *extra],
                stdout=subprocess.PIPE,
                stderr=logs[name].open("a"),  # a node started again by [faults] goes on
                text=True,
            )
            procs[name] = p
            started[name] = (host, extra)
            if nw.manifest is not None:
                nw.manifest.process(p.pid, what=f"node {name}", match=str(pdir / "scenario.toml"))
            return p

        def act(kind: str, target: str) -> None:
            """One of [faults]'s actions on this network and these nodes."""
            if kind in ("cut", "restore"):
                cut_paths(nw.user(int(target.removeprefix("u"))), kind == "cut")
            elif kind == "kill":
                procs[target].kill()
                procs[target].wait()
            else:
                start(target, *started[target][:1], *started[target][1])

        injector = Injector(sc.faults, act)
        watch.restarting = injector.restarting
        watch.injected = injector.done
        # A run directory used before: the journals and token logs are this run's alone (a
        # node started again by [faults] appends to them; a stale journal would hand the users
        # the last run's sessions).
        for stale in (*pdir.glob("sessions-*.jsonl"), *pdir.glob("tokens-u*.jsonl")):
            stale.unlink()
        try:
            where.phase = "starting the nodes"
            for s in dep.servers:  # verifiers first: the router sends users on to them
                role = "edge" if s.role == "verifier" else "router"
                p = start(s.name, nw.server(s.name), role, "--port", port, "--name", s.name)
                await_ready(f"node {s.name}", p, logs[s.name], READY_TIMEOUT_S)
            how = "--router" if dep.router is not None else "--edge"
            users = [
                start(f"u{i}", nw.user(i), "user", str(i), how, f"{at[dep.entry]}:{port}")
                for i in range(nw.users)
            ]
            # The workload's clock starts when every user has loaded its model and connected.
            for i, p in enumerate(users):
                await_ready(f"node u{i}", p, logs[f"u{i}"], READY_TIMEOUT_S)
            t0 = where.t0 = time.monotonic()
            where.phase = "running the workload"
            end = t0 + sc.sim.duration_s * scale  # modelled seconds, each scale wall seconds
            while (now := time.monotonic()) < end:
                nxt = injector.next_at()
                wake = end if nxt is None else min(end, t0 + nxt * scale)
                time.sleep(max(0.0, min(0.5, wake - now)))
                injector.due((time.monotonic() - t0) / scale)
                if progress is not None:
                    progress(policy, (time.monotonic() - t0) / scale)
                watch.check(procs, (time.monotonic() - t0) / scale)
                if _server_death(dep, watch.deaths) is not None:
                    break  # a server is gone: the run no longer measures the deployment
            t_end = time.monotonic()
            watch.check(procs, (t_end - t0) / scale)  # a death in the last half second
            where.phase = "stopping the nodes"
        finally:
            injector.undo()
            # The users first, and gone before the servers stop: a user still running when
            # its edge closed would record a lost link that was only the run's end.
            servers = {s.name for s in dep.servers}
            stop_processes([p for name, p in procs.items() if name not in servers])
            stop_processes([p for name, p in procs.items() if name in servers])
    return t0, t_end


@dataclass(frozen=True, slots=True)
class _Summarised:
    measured: Measured
    overruns: dict[str, int]  # steps past their profile, by node
    protocol_errors: int  # every verifier's


def _summarise(dep: Deployment, pdir: Path, policy: str, *, t_end: float) -> _Summarised:
    """A policy's summary from what its nodes recorded (``t_end`` on the nodes' clock)."""
    nodes = {}
    for f in sorted(pdir.glob("node-*.json")):
        with contextlib.suppress(ValueError):  # a node killed while writing it
            nodes[f.stem.removeprefix("node-")] = json.loads(f.read_text())
    rec = Recorder(None)
    rec.policy = policy
    for f in sorted(pdir.glob("events-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed node
            r.pop("policy", None)
            rec(r)
    measured = rec.summary(
        policy, t_end=t_end, users=dep.problem.size, verifiers=len(dep.verifiers)
    )
    return _Summarised(
        measured,
        # Steps that ran longer than their profile (the host was too slow to stand in for it).
        overruns={name: int(n.get("overruns", 0)) for name, n in nodes.items()},
        protocol_errors=sum(int(nodes.get(v, {}).get("protocol_errors", 0)) for v in dep.verifiers),
    )


def _server_death(dep: Deployment, deaths: list[dict[str, Any]]) -> dict[str, Any] | None:
    servers = {s.name for s in dep.servers}
    return next((d for d in deaths if d["node"] in servers), None)


def _result(
    dep: Deployment,
    policy: str,
    summary: _Summarised,
    watch: _Watch | None,
    *,
    duration_s: float,
    span_s: float,
    lossless: dict[str, Any],
    partial: bool | None = None,
) -> RunResult:
    """A policy's entry in ``results``: its summary, the planners' prediction, its nodes'
    faults, and whether it is a result at all (a server that died leaves none)."""
    deaths = tuple(watch.deaths) if watch else ()
    invalid = None
    if (dead := _server_death(dep, list(deaths))) is not None:
        what = "the edge" if dead["node"] == "edge" else f"server {dead['node']}"
        invalid = (
            f"{what} exited (status {dead['exit']}) at {dead['t_s']:.1f} s of "
            f"{duration_s:g} s: its users had no verifier after that, and the throughput is "
            "no measure"
        )
    return RunResult(
        measured=summary.measured,
        predicted_tok_s=dep.predicted_tok_s(memo_planner(policy)),
        protocol_errors=summary.protocol_errors,
        overruns=summary.overruns,
        deaths=deaths,
        faults_injected=tuple(watch.injected) if watch else (),
        stalls=tuple(watch.stalls) if watch else (),
        valid=invalid is None,
        invalid_reason=invalid,
        span_s=span_s,
        partial=partial,
        **lossless,
    )


def emulate(
    sc: Scenario,
    policies: list[str],
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every policy on the emulated network as the scenario's ``[emu]`` says; the
    ``run --json`` object. ``emu.time_scale`` runs every modelled time that many times slower
    on the wall (compute, link delays, the duration; rates slower by as much) and reports in
    modelled time; 0 chooses it from a calibration of this host (``emu.runners.timescale``)."""
    own = _OWN_EMULATIONS.get(sc.deployment.system)
    if own is not None:  # a system with nodes of its own (the heterogeneous edge's)
        return own(sc, policies, out_dir, progress=progress)
    timing = sc.emu.timing
    dep = assemble(sc)
    for p in policies:
        dep.system.check_policy(p, where="--policy")
    problem = dep.problem
    servers = tuple(s.name for s in dep.servers)
    check_topology("star", users=problem.size, servers=len(servers))  # before anything is built
    preflight()
    t_wall = time.perf_counter()
    with _stop_on_signals():
        npz, comm, noise = radio_priors(sc, out_dir)
        # A shaper that cannot give these links what they need refuses them now, before the
        # models are checked and timed (seconds to minutes); the time scale does not change
        # what a link needs.
        choose_shaper(sc.emu.shaping, _links(sc, problem, npz)[0], dep.links)
        if sc.models.kind != "synthetic":
            problem = node_problem(sc)  # checks the models (one line each) before any host
        if comm is not None:
            problem = with_comm(
                problem, comm, noise
            )  # the simulation's priors (emu.deploy.runtime)
        if sc.emu.time_scale == 0.0:
            verifiers = [dep.edge(v) for v in dep.verifiers]
            chosen = auto_time_scale(sc, problem, policies, timing, verifiers)
        else:
            chosen = TimeScale(scale=sc.emu.time_scale, why="given (emu.time_scale)")
        scale = chosen.scale
        dep = dep.with_problem(problem)
        (out_dir / "scenario.toml").write_text(scenario_toml(sc))
        specs, probed, configured = _links(sc, problem, npz, scale)
        between = tuple(link.scaled(scale) for link in dep.links)
        shaper, why = choose_shaper(sc.emu.shaping, specs, between)
        run = RunSummary(
            scenario=sc.name,
            users=problem.size,
            deployment=dep.describe(),
            duration_s=sc.sim.duration_s,
            shaping=shaper.name,
            shaping_why=why,
            timing=timing,
            time_scale=scale,
            time_scale_why=chosen.why,
            models=sc.models.kind,
        )
        lossless = _LosslessCheck(sc, out_dir, problem.size)
        where = _Where()
        try:
            with (
                run_manifest(out_dir) as manifest,
                star_network(problem.size, manifest, servers) as nw,
            ):
                where.phase = "probing the links"
                with shaper.running(nw, probed, out_dir, seed=sc.sim.seed, between=between):
                    run = replace(run, fidelity=_fidelity(nw, configured, between))
                _write(out_dir, run, t_wall)
                bad = [f.link for f in run.fidelity if not f.ok]
                if bad and sc.emu.strict:
                    raise ShapingError(f"links outside tolerance (emu.strict): {', '.join(bad)}")
                for policy in policies:
                    where.policy, where.t0, where.watch = policy, None, None
                    t0, t_end = _run_policy(
                        dep,
                        nw,
                        policy,
                        specs,
                        out_dir / policy,
                        between=between,
                        where=where,
                        shaper=shaper,
                        scale=scale,
                        comm=comm,
                        noise=noise,
                        progress=progress,
                    )
                    where.phase = f"summarising {policy}"
                    summary = _summarise(
                        dep, out_dir / policy, policy, t_end=t_end / scale
                    )  # on the nodes' clock
                    result = _result(
                        dep,
                        policy,
                        summary,
                        where.watch,
                        duration_s=sc.sim.duration_s,
                        span_s=t_end - t0,
                        lossless=lossless(policy),
                    )
                    run = run.with_result(policy, result)
                    where.policy = None
                    _write(out_dir, run, t_wall)
        except KeyboardInterrupt as exc:
            _stopped(
                run,
                where,
                exc,
                dep=dep,
                policies=policies,
                out_dir=out_dir,
                t_wall=t_wall,
            )
            raise
        doc = _write(out_dir, run, t_wall)
        write_run_report(out_dir, doc)
    return doc


def _emulate_hetnet(
    sc: Scenario, policies: list[str], out_dir: Path, *, progress: Progress | None
) -> dict[str, Any]:
    from emu.runners.emulate_hetnet import emulate_hetnet

    return emulate_hetnet(sc, policies, out_dir, progress=progress)


def _emulate_dsd(
    sc: Scenario, policies: list[str], out_dir: Path, *, progress: Progress | None
) -> dict[str, Any]:
    from emu.runners.emulate_dsd import emulate_dsd

    return emulate_dsd(sc, policies, out_dir, progress=progress)


_OWN_EMULATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "hetnet": _emulate_hetnet,
    "dsd": _emulate_dsd,
}


def _stopped(
    run: RunSummary,
    where: _Where,
    exc: KeyboardInterrupt,
    *,
    dep: Deployment,
    policies: list[str],
    out_dir: Path,
    t_wall: float,
) -> None:
    """After a run stopped by a signal has torn down: its summary and report from what the
    nodes recorded so far, marked partial with where it stopped (also said on ``exc``)."""
    at = getattr(exc, "at", time.monotonic())
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    t_s = None if where.t0 is None else (at - where.t0) / run.time_scale
    if where.policy is not None and where.policy not in run.results:
        pdir = out_dir / where.policy
        summary = _summarise(dep, pdir, where.policy, t_end=at / run.time_scale)
        result = _result(
            dep,
            where.policy,
            summary,
            where.watch,
            duration_s=run.duration_s,
            span_s=0.0 if where.t0 is None else at - where.t0,
            lossless={"lossless": None},
            partial=True,
        )
        run = run.with_result(where.policy, result)
    stopped = {
        "signal": name,
        "phase": where.phase,
        "policy": where.policy,
        "t_s": t_s,
        "not_run": [p for p in policies if p not in run.results],
    }
    doc = _write(out_dir, replace(run, partial=True, stopped=stopped), t_wall)
    write_run_report(out_dir, doc)
    if isinstance(exc, Interrupted):
        exc.said = f"{stopped_line(doc)}; partial results in {out_dir}"


class _LosslessCheck:
    """``lossless`` of a policy's run: every session each user node logged against what the
    target alone decodes greedily (the target loaded once here, in the runner, on first use;
    its decodings cached per prompt, and every policy decodes the same prompts)."""

    def __init__(self, sc: Scenario, out_dir: Path, users: int) -> None:
        self.sc, self.out_dir, self.users = sc, out_dir, users
        self.reference: GreedyReference | None = None

    def __call__(self, policy: str) -> dict[str, Any]:
        if self.sc.models.kind == "synthetic":
            return {"lossless": None}
        if self.sc.models.temperature > 0:  # sampled: the distribution is kept, not the tokens
            return {"lossless": None}  # no check made
        if self.reference is None:
            self.reference = GreedyReference.load(model_setup(self.sc), self.sc.models.dtype)
        logs = [self.out_dir / policy / f"tokens-u{i}.jsonl" for i in range(self.users)]
        per_user = [read_sessions(f) if f.exists() else [] for f in logs]
        return check_sessions(per_user, self.reference)


def _write(out: Path, run: RunSummary, t_wall: float) -> dict[str, Any]:
    """``summary.json`` as it stands (after the probes, after each policy, at the end); the
    JSON it holds."""
    doc = replace(run, wall_s=time.perf_counter() - t_wall).to_json()
    write_atomic(out / "summary.json", json.dumps(doc, indent=2, default=float))
    return doc
