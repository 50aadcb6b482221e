"""``draftnet run`` of DSD: Mininet hosts for the router, each verifier and each drafter, each
node its own process, every (drafter, verifier) pair's link shaped both ways.

Layer: emu (orchestration; Mininet through ``emu.runners.network``). The router, the verifiers
(``v0``, ``v1``, ...) and the drafters (``d0``, ``d1``, ...) are the star's server hosts (the
star needs a user host: ``u0`` stands idle, its link unshaped); drafters talk to their
verifiers directly and to the router once a conversation. Each pair's two directions are shaped
(``between`` links, the userspace shaper) to the problem's one-way bases: the simulation's
transfer, base x (1 + u) with u ~ U(-jitter, jitter), is given its mean and its spread as a
delay and a half-normal jitter (sigma = base x jitter / sqrt(3 (1 - 2/pi)), the delay the base
less the jitter's mean sigma sqrt(2/pi)); a bandwidth, where the problem has one, is the link's
rate. The links between the router and the others are unshaped (the cloud's ingress).

For each policy: the nodes started (``emu.runners.dsd_node``), the drafters' records dealt as
the simulation deals them, every drafter serving its conversations from one start for
``sim.duration_s`` (or until its records are served), then the servers stopped and the records
gathered into the simulation's ``DsdRun``: the same figures as ``draftnet sim``'s
(``lane_wait_ms`` is empty: the emulation has no global lanes; a fused round goes through the
router, ``nodes.dsd``), plus ``lossless`` (real greedy models: every conversation's tokens, as
far as they got, are the target's own greedy decoding), the pacers' overruns per node and as a
share of the steps paced (``overrun_pct``), each node's exit, and ``valid``. Before the first
policy every pair's round trip is probed from its drafter (``fidelity``: ``d0->v1`` is the
pair, both ways). Real models are paced to the scenario's compute model (``emu.timing =
"profile"``) on a clock ``emu.time_scale`` times slower than the wall; 0 takes 3 with
synthetic models and 25 with real ones (every drafter's llama.cpp and every verifier's
transformers share the host's cores: at 25, no step overran on a 2-core machine with 8
drafters; at 10, 8.5% did with 4).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from channel_models.link import LinkState
from emu.errors import ShapingError
from emu.files import write_atomic
from emu.models.build import Departure, Session, check_sessions
from emu.planner.dsd.links import PairLink
from emu.planner.dsd.model import DsdProblem
from emu.runners.dsd_node import ADDRESSES_FILE, check_emulable, real_prompts
from emu.runners.emulate import _fidelity, _stop_on_signals
from emu.runners.faults import Injector, outage_injector
from emu.runners.manifest import run_manifest
from emu.runners.network import Network, await_ready, preflight, star_network, stop_processes
from emu.runners.node import START_FILE
from emu.runners.shapers import choose_shaper
from emu.runners.sim_dsd import DsdRun, dsd_problem_of
from emu.scenario import Scenario, scenario_toml
from emu.shaping.spec import LinkPair, LinkSpec, ServerLink
from nodes.core.dsd import Conversation
from nodes.core.systems import get_system
from topologies.registry import check as check_topology

__all__ = ["dsd_result", "emulate_dsd", "pair_state"]

READY_TIMEOUT_S = 180.0  # a node's start: imports, and a real model's loading
START_LEAD_S = 0.3  # modelled seconds between the start file and the start
END_SLACK_S = 60.0  # wall seconds a drafter is given past the end to write its records
SYNTHETIC_SCALE = 3.0
REAL_SCALE = 25.0
# A half-normal of scale sigma has mean sigma sqrt(2/pi) and deviation sigma sqrt(1 - 2/pi).
_HALF_NORMAL_MEAN = math.sqrt(2 / math.pi)
_HALF_NORMAL_STD = math.sqrt(1 - 2 / math.pi)

Progress = Callable[[str, float], None]


def pair_state(base_ms: float, jitter: float, bandwidth_mbps: float = 0.0) -> LinkState:
    """A direction of a pair as the shaper gives it: the simulation's base x (1 + U(-jitter,
    jitter)) with its mean and deviation, as a delay and a half-normal jitter."""
    sigma = base_ms * jitter / (math.sqrt(3.0) * _HALF_NORMAL_STD)
    return LinkState(
        rate_bps=bandwidth_mbps * 1e6,
        delay_ms=max(0.0, base_ms - sigma * _HALF_NORMAL_MEAN),
        jitter_ms=sigma,
    )


def _between(links: tuple[PairLink, ...], scale: float) -> tuple[ServerLink, ...]:
    out: list[ServerLink] = []
    for lk in links:
        for src, dst, base in ((lk.drafter, lk.verifier, lk.forward_ms),
                               (lk.verifier, lk.drafter, lk.response_ms)):  # fmt: skip
            state = pair_state(base, lk.jitter, lk.bandwidth_mbps)
            out.append(ServerLink(src, dst, LinkSpec(state=state).scaled(scale)))
    return tuple(out)


def _round_trips(problem: DsdProblem, between: tuple[ServerLink, ...]) -> tuple[ServerLink, ...]:
    """What the fidelity check probes: each pair once, from its drafter, as one link that
    carries both directions' delays and jitters (its configured round trip is the pair's)."""
    back = {(lk.src, lk.dst): lk.spec for lk in between}
    drafters = {d.name for d in problem.drafters}
    out = []
    for lk in between:
        if lk.src in drafters:
            there, ret = lk.spec.state, back[(lk.dst, lk.src)].state
            assert there is not None and ret is not None
            both = replace(
                there,
                delay_ms=there.delay_ms + ret.delay_ms,
                jitter_ms=there.jitter_ms + ret.jitter_ms,
            )
            out.append(ServerLink(lk.src, lk.dst, replace(lk.spec, state=both)))
    return tuple(out)


def _servers(problem: DsdProblem) -> tuple[str, ...]:
    return ("router", *(v.name for v in problem.verifiers), *(d.name for d in problem.drafters))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, ValueError):
        return None


def _run_policy(
    sc: Scenario,
    nw: Network,
    problem: DsdProblem,
    policy: str,
    pdir: Path,
    *,
    scale: float,
    injector: Injector,
) -> dict[str, int | None]:
    """Every node running ``policy`` until each drafter has served its time, with the
    scenario's outages (``injector``) on the workload's clock; each node's exit status (None:
    it was stopped)."""
    mine = replace(
        sc,
        planner=replace(sc.planner, policy=policy),
        emu=replace(sc.emu, time_scale=scale),
        profiles=(),
    )
    (pdir / "scenario.toml").write_text(scenario_toml(mine))
    port = sc.deployment.port
    at = nw.addresses()
    names = _servers(problem)
    write_atomic(
        pdir / ADDRESSES_FILE,
        json.dumps({n: f"{at[n]}:{port}" for n in names[: 1 + len(problem.verifiers)]}),
    )
    node = [sys.executable, "-m", "emu.runners.dsd_node", str(pdir / "scenario.toml")]
    procs: dict[str, Any] = {}

    def start(name: str, *extra: str) -> None:
        log = pdir / f"{name}.log"
        p = nw.server(name).popen(
            [*node, *extra], stdout=subprocess.PIPE, stderr=log.open("w"), text=True
        )
        procs[name] = p
        if nw.manifest is not None:
            nw.manifest.process(p.pid, what=f"node {name}", match=str(pdir / "scenario.toml"))

    try:
        start("router", "router", "--port", str(port))
        await_ready("node router", procs["router"], pdir / "router.log", READY_TIMEOUT_S)
        for k, v in enumerate(problem.verifiers):
            start(v.name, "verifier", str(k), "--port", str(port))
        for i, d in enumerate(problem.drafters):
            start(d.name, "drafter", str(i))
        for name in names[1:]:  # loading their models side by side
            await_ready(f"node {name}", procs[name], pdir / f"{name}.log", READY_TIMEOUT_S)
        now = time.monotonic()
        write_atomic(pdir / START_FILE, repr(now / scale + START_LEAD_S))
        t0 = now + START_LEAD_S * scale  # the workload's start, on this clock
        drafters = [procs[d.name] for d in problem.drafters]
        deadline = t0 + sc.sim.duration_s * scale + END_SLACK_S
        while time.monotonic() < deadline and any(p.poll() is None for p in drafters):
            time.sleep(0.05)
            injector.due((time.monotonic() - t0) / scale)
    finally:
        injector.undo()
        stop_processes([procs[n] for n in reversed(names) if n in procs])
    return {name: p.returncode for name, p in procs.items()}


def _gather(
    sc: Scenario,
    problem: DsdProblem,
    pdir: Path,
    exits: dict[str, int | None],
    reference: Departure | None,
) -> dict[str, Any]:
    """The policy's figures from the nodes' records: the simulation's summary of them, and the
    emulation's own."""
    docs = {n: _read(pdir / f"node-{n}.json") for n in _servers(problem)}
    return dsd_result(sc, problem, docs, exits, reference)


def dsd_result(
    sc: Scenario,
    problem: DsdProblem,
    docs: Mapping[str, dict[str, Any] | None],
    exits: Mapping[str, int | None],
    reference: Departure | None,
) -> dict[str, Any]:
    """A run's figures from each node's own account of it (``docs``, by node name: what its
    process wrote as it left, None for a node that left none), as ``run --json`` gives them;
    ``exits``, each node's exit status where it is known."""
    run = DsdRun(duration_s=sc.sim.duration_s)
    sessions: list[list[Session]] = []
    steps = 0
    for d in problem.drafters:
        doc = docs[d.name] or {}
        for key in ("tokens", "drafted", "accepted", "drafts", "rounds", "fused_rounds"):
            setattr(run, key, getattr(run, key) + doc.get(key, 0))
        per = doc.get("per_position", [])
        run.per_position += [0] * (len(per) - len(run.per_position))
        for i, n in enumerate(per):
            run.per_position[i] += n
        run.windows += doc.get("windows", [])
        run.finished += [Conversation(**c) for c in doc.get("finished", [])]
        sessions.append(
            [Session(tuple(s["prompt"]), list(s["tokens"])) for s in doc.get("sessions", [])]
        )
        steps += doc.get("drafts", 0)
    for v in problem.verifiers:
        doc = docs[v.name] or {}
        run.queue_wait_s += doc.get("queue_wait_s", [])
        run.utilisation[v.name] = doc.get("utilisation", 0.0)
        steps += doc.get("batches", 0)
    run.routed = dict((docs["router"] or {}).get("routed", {}))
    overruns = {
        n: doc.get("overruns", 0) for n, doc in docs.items() if doc is not None and n != "router"
    }
    served = {d.name: len((docs[d.name] or {}).get("finished", ())) for d in problem.drafters}
    missing = [n for n, doc in docs.items() if doc is None]
    died = {n: code for n, code in exits.items() if code not in (0, None, -15)}
    why = None
    if missing or died:
        why = f"no records from {missing or 'none'}; exits {died or 'all clean'}"
    lossless: dict[str, Any] = {"lossless": None}
    if reference is not None:
        lossless = check_sessions(sessions, reference)
    total = sum(overruns.values())
    return (
        run.summary()
        | lossless
        | {
            "conversations_by_drafter": served,
            "faults": sum((doc or {}).get("faults", 0) for doc in docs.values()),
            "overruns": overruns,
            "overrun_pct": 100.0 * total / steps if steps else 0.0,
            "steps_paced": steps,
            "exits": dict(exits),
            "valid": why is None,
            "invalid_reason": why,
        }
    )


def emulate_dsd(
    sc: Scenario, policies: list[str], out_dir: Path, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every window policy on the emulated network; the ``run --json`` object."""
    system = get_system("dsd")
    for p in policies:
        system.check_policy(p, where="--policy")
    problem = dsd_problem_of(sc)
    check_emulable(sc, problem)
    servers = _servers(problem)
    check_topology("star", users=1, servers=len(servers))
    preflight()
    synthetic = sc.models.kind == "synthetic"
    reference: Departure | None = None
    models: dict[str, Any] = {"kind": "synthetic", "acceptance": "the position curve"}
    if not synthetic:
        setup = real_prompts(sc)  # every check on the models before anything is built
        models = {"kind": sc.models.kind, "draft": str(setup.draft), "target": str(setup.target),
                  "device": setup.device, "acceptance": "real"}  # fmt: skip
        if sc.models.temperature == 0:
            from emu.models.build import GreedyReference

            reference = GreedyReference.load(setup, sc.models.dtype)
    scale = sc.emu.time_scale or (SYNTHETIC_SCALE if synthetic else REAL_SCALE)
    why_scale = "given (emu.time_scale)" if sc.emu.time_scale else "the default for these models"
    between = _between(problem.links, scale)
    idle = [LinkPair.both(LinkSpec.fixed())]  # the star's one user host, unused
    shaper, why = choose_shaper(sc.emu.shaping, idle, between)
    (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    t_wall = time.perf_counter()
    doc: dict[str, Any] = {
        "mode": "emu",
        "system": "dsd",
        "scenario": sc.name,
        "models": models,
        "drafters": len(problem.drafters),
        "verifiers": len(problem.verifiers),
        "router": problem.router,
        "batching": problem.batching,
        "execution": problem.mode,
        "lanes": "not emulated (drafters send to their verifiers directly)",
        "seed": sc.sim.seed,
        "duration_s": sc.sim.duration_s,
        "shaping": shaper.name,
        "shaping_why": why,
        "timing": sc.emu.timing,
        "time_scale": scale,
        "time_scale_why": why_scale,
        "fidelity": [],
        "results": {},
    }

    def write() -> None:
        doc["wall_s"] = time.perf_counter() - t_wall
        doc["valid"] = all(r["valid"] for r in doc["results"].values())
        write_atomic(out_dir / "summary.json", json.dumps(doc, indent=2, default=float))

    with (
        _stop_on_signals(),
        run_manifest(out_dir) as manifest,
        star_network(1, manifest, servers) as nw,
    ):
        with shaper.running(nw, idle, out_dir, seed=sc.sim.seed, between=between):
            checks = _fidelity(nw, [], _round_trips(problem, between))
        doc["fidelity"] = [
            {"link": c.link, "configured": dict(c.configured), "measured": dict(c.measured),
             "ok": c.ok}
            for c in checks
        ]  # fmt: skip
        bad = [c.link for c in checks if not c.ok]
        if bad and sc.emu.strict:
            raise ShapingError(f"links outside tolerance (emu.strict): {', '.join(bad)}")
        write()
        for policy in policies:
            pdir = out_dir / policy
            pdir.mkdir(parents=True, exist_ok=True)
            t_policy = time.perf_counter()
            # An outage cuts drafter i's host off every other node (the drafters are servers
            # of the star here, each on its own subnet).
            injector = outage_injector(sc.faults, lambda i: nw.server(problem.drafters[i].name))
            with shaper.running(nw, idle, pdir, seed=sc.sim.seed, between=between):
                exits = _run_policy(sc, nw, problem, policy, pdir, scale=scale, injector=injector)
            result = _gather(sc, problem, pdir, exits, reference)
            result["faults_injected"] = injector.done
            doc["results"][policy] = result | {"wall_s": time.perf_counter() - t_policy}
            if progress is not None:
                progress(policy, sc.sim.duration_s)
            write()
    return doc
