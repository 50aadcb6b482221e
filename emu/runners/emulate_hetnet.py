"""``draftnet run`` of the heterogeneous-edge system: Mininet hosts for the users, the small cell
(``sbs``; with several, ``sbs0``, ``sbs1``, ...) and the macro cell (``mbs``), each node its own
process, the radio uplink and each fronthaul shaped.

Layer: emu (orchestration; Mininet through ``emu.runners.network``). For each policy: its plan,
each user's uplink shaped to its planner rate b_k eta_k (the small cell's grant says when it may
send; the downlink is left unshaped, hetnet.md 3.4), the fronthaul both ways at the deployment's
rate, delay, jitter and loss; the macro cell, the small cell and the users started
(``emu.runners.hetnet_node``), every task present at one start time, and the run over when
every user has its tokens (or at a horizon past the prediction). Before the first policy each
link is probed and configured is compared with measured (``fidelity``). Real models are paced
to the scenario's compute model (``emu.timing = "profile"``) on a clock ``emu.time_scale``
times slower than the wall; 0 takes 3 with synthetic models (the hosts' own overheads, a
few milliseconds a round, then cost under 2% on a 2-core machine, against 14% at 1) and 10
with real ones (not calibrated for this system yet). With greedy real models each task's
tokens are checked against the target's own decoding (``lossless``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from channel_models.cell import LinkSeries
from channel_models.link import LinkState
from emu.errors import ShapingError
from emu.files import write_atomic
from emu.models.hetnet import HetnetModels, hetnet_models, predicting
from emu.planner import get_policy
from emu.planner.hetnet.bandwidth import uplink_bps
from emu.planner.hetnet.evaluate import HetnetPlan, evaluate
from emu.planner.hetnet.model import HetnetProblem
from emu.results.hetnet import hetnet_result
from emu.runners.emulate import _fidelity, _stop_on_signals
from emu.runners.faults import Injector, outage_injector
from emu.runners.hetnet_node import write_plan
from emu.runners.manifest import run_manifest
from emu.runners.network import Network, await_ready, preflight, star_network, stop_processes
from emu.runners.node import START_FILE
from emu.runners.shapers import choose_shaper
from emu.runners.sim_hetnet import checked_problem, fronthaul_state, uplink_series
from emu.scenario import Scenario, scenario_toml
from emu.shaping.spec import LinkPair, LinkSpec, SeriesRef, ServerLink
from nodes.core.hetnet import BatchStats, TaskOutcome
from topologies.registry import check as check_topology

__all__ = ["emulate_hetnet"]

READY_TIMEOUT_S = 180.0  # a node's start: imports, and a real model's loading


def small_cells(problem: HetnetProblem) -> list[str]:
    """The small cells' hosts (and nodes): ``sbs``, or ``sbs0``, ``sbs1``, ... with several."""
    return ["sbs" + problem.cell_suffix(c) for c in range(problem.cells)]


def servers(problem: HetnetProblem) -> tuple[str, ...]:
    """Every server's host: the small cells', then the macro cell's (users are probed to the
    first: a user's uplink is its access link, whichever small cell it ends at)."""
    return (*small_cells(problem), "mbs")


Progress = Callable[[str, float], None]


FADING_SLACK_S = 60.0  # modelled seconds of fading past the uploads: the nodes' start-up


def _user_links(problem: HetnetProblem, plan: HetnetPlan, scale: float) -> list[LinkPair]:
    """Each user's uplink at its planner rate; the downlink ideal (hetnet.md 3.4)."""
    return [
        LinkPair(LinkSpec(state=LinkState(rate_bps=float(bps))), LinkSpec.fixed()).scaled(scale)
        for bps in uplink_bps(problem, plan.batches, plan.bandwidth, plan.opens_ms)
    ]


def _faded_links(series: LinkSeries, pdir: Path, scale: float) -> list[LinkPair]:
    """Each user's uplink at its faded rate (``hetnet.radio.fading``), from the series written
    to the policy's directory (``uplinks.npz``, the form ``emu.shaping.sources`` reads) and
    played from when the shaper starts; the downlink ideal."""
    npz = pdir / "uplinks.npz"
    zeros = np.zeros_like(series.rate_bps)
    np.savez(
        npz,
        t_s=series.tick_s * np.arange(series.rate_bps.shape[1]),
        up_rate_bps=series.rate_bps,
        up_delay_ms=zeros,
        up_jitter_ms=zeros,
        up_loss=zeros,
    )
    return [
        LinkPair(LinkSpec(series=SeriesRef(str(npz), "up", k)), LinkSpec.fixed()).scaled(scale)
        for k in range(series.rate_bps.shape[0])
    ]


def _fronthaul(problem: HetnetProblem, sc: Scenario, scale: float) -> tuple[ServerLink, ...]:
    """Each small cell's fronthaul, both ways."""
    out: list[ServerLink] = []
    for c, sbs in enumerate(small_cells(problem)):
        spec = LinkSpec(state=fronthaul_state(problem, sc, c)).scaled(scale)
        out += [ServerLink(sbs, "mbs", spec), ServerLink("mbs", sbs, spec)]
    return tuple(out)


def _configured(links: list[LinkPair]) -> list[dict[str, float]]:
    out = []
    for pair in links:
        assert pair.up.state is not None
        out.append(
            {"rtt_ms": 0.0, "up_rate_bps": pair.up.state.rate_bps / pair.up.time_scale,
             "up_loss": 0.0}
        )  # fmt: skip
    return out


def _run_policy(
    sc: Scenario,
    nw: Network,
    models: HetnetModels,
    plan: HetnetPlan,
    pdir: Path,
    *,
    scale: float,
    horizon_s: float,
    injector: Injector,
) -> dict[str, int | None]:
    """The nodes running ``plan`` until every user is done, or ``horizon_s`` (modelled) has
    passed, with the scenario's outages (``injector``) on the workload's clock; each node's
    exit status (None: it was stopped)."""
    problem = models.problem
    pdir.mkdir(parents=True, exist_ok=True)
    mine = replace(sc, emu=replace(sc.emu, time_scale=scale), profiles=())
    (pdir / "scenario.toml").write_text(scenario_toml(mine))
    write_plan(pdir, plan)
    tasks = [
        {"prompt": list(p), "max_new_tokens": t.output_len}
        for p, t in zip(models.prompts, problem.tasks, strict=True)
    ]
    (pdir / "tasks.json").write_text(json.dumps(tasks))
    node = [sys.executable, "-m", "emu.runners.hetnet_node", str(pdir / "scenario.toml")]
    port = str(sc.deployment.port)
    at = nw.addresses()
    procs: dict[str, Any] = {}

    def start(name: str, host: Any, *extra: str) -> Any:
        log = pdir / f"{name}.log"
        p = host.popen([*node, *extra], stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        procs[name] = p
        if nw.manifest is not None:
            nw.manifest.process(p.pid, what=f"node {name}", match=str(pdir / "scenario.toml"))
        return p

    try:
        p = start("mbs", nw.server("mbs"), "mbs", "--port", port)
        await_ready("node mbs", p, pdir / "mbs.log", READY_TIMEOUT_S)
        cells = small_cells(problem)
        for c, sbs in enumerate(cells):
            macro = f"{at['mbs']}:{port}"
            p = start(
                sbs, nw.server(sbs), "sbs", "--port", port, "--macro", macro, "--cell", str(c)
            )
            await_ready(f"node {sbs}", p, pdir / f"{sbs}.log", READY_TIMEOUT_S)
        users = [
            start(f"u{k}", nw.user(k), "user", str(k), "--sbs", f"{at[cells[t.cell]]}:{port}")
            for k, t in enumerate(problem.tasks)
        ]
        for k, p in enumerate(users):
            await_ready(f"node u{k}", p, pdir / f"u{k}.log", READY_TIMEOUT_S)
        now = time.monotonic()
        write_atomic(pdir / START_FILE, repr(now / scale + 0.2))  # the nodes' clock: modelled
        t0 = now + 0.2 * scale  # the workload's start (every task's clock), on this clock
        deadline = t0 + horizon_s * scale
        while time.monotonic() < deadline and any(p.poll() is None for p in users):
            time.sleep(0.05)
            injector.due((time.monotonic() - t0) / scale)
        sbs_end = time.monotonic() + 5.0  # their stats, written as they leave
        while any(procs[c].poll() is None for c in cells) and time.monotonic() < sbs_end:
            time.sleep(0.05)
    finally:
        injector.undo()
        stop_processes(list(procs.values()))
    return {name: p.returncode for name, p in procs.items()}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, ValueError):
        return None


def _measured(
    problem: HetnetProblem,
    plan: HetnetPlan,
    models: HetnetModels,
    pdir: Path,
    exits: dict[str, int | None],
) -> dict[str, Any]:
    outcomes = []
    for k in range(problem.size):
        doc = _read(pdir / f"node-u{k}.json")
        if doc is None:
            outcomes.append(TaskOutcome(k, None, None, ()))
        else:
            outcomes.append(TaskOutcome(k, doc["latency_ms"], doc["ttft_ms"], tuple(doc["tokens"])))
    cells = [_read(pdir / f"node-{c}.json") or {} for c in small_cells(problem)]
    stats = [
        BatchStats(**{**s, "tasks": tuple(s["tasks"])}) for d in cells for s in d.get("stats", ())
    ]
    done = [o.latency_ms for o in outcomes if o.latency_ms is not None]
    out = hetnet_result(
        problem,
        plan=plan,
        ev=evaluate(predicting(problem, models), plan),
        outcomes=outcomes,
        stats=stats,
        t0=cells[0].get("t0", 0.0),  # every node's start is the one start_at
        t_end=max(done, default=0.0) / 1000.0,
        user_faults=sum(d.get("faults", 0) for d in cells),
    )
    overruns = {
        name: (_read(pdir / f"node-{name}.json") or {}).get("overruns", 0)
        for name in servers(problem)
    }
    finished = out["finished"] == problem.size and all(cells)
    why = None if finished else f"{out['finished']} of {problem.size} tasks done; exits {exits}"
    return (
        out
        | models.check(outcomes)
        | {
            "overruns": overruns,
            "exits": exits,
            "valid": finished,
            "invalid_reason": why,
        }
    )


def emulate_hetnet(
    sc: Scenario, policies: list[str], out_dir: Path, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every policy's plan on the emulated network; the ``run --json`` object."""
    problem = checked_problem(sc, policies)
    check_topology("star", users=problem.size, servers=len(servers(problem)))
    preflight()
    models = hetnet_models(sc, problem)
    problem = models.problem
    synthetic = sc.models.kind == "synthetic"
    scale = sc.emu.time_scale or (3.0 if synthetic else 10.0)
    why_scale = "given (emu.time_scale)" if sc.emu.time_scale else "the default for these models"
    plans = {p: get_policy(p).plan(problem) for p in policies}
    between = _fronthaul(problem, sc, scale)
    first = _user_links(problem, plans[policies[0]], scale)
    shaper, why = choose_shaper(sc.emu.shaping, first, between)
    (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    t_wall = time.perf_counter()
    doc: dict[str, Any] = {
        "mode": "emu",
        "system": "hetnet",
        "scenario": sc.name,
        "models": models.note(),
        "tasks": problem.size,
        "seed": sc.sim.seed,
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
        star_network(problem.size, manifest, servers(problem)) as nw,
    ):
        with shaper.running(nw, first, out_dir, seed=sc.sim.seed, between=between):
            checks = _fidelity(nw, _configured(first), between)
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
            plan = plans[policy]
            pdir = out_dir / policy
            predicted = evaluate(predicting(problem, models), plan)
            horizon_s = 2.0 * predicted.makespan_ms / 1e3 + sc.sim.duration_s
            pdir.mkdir(parents=True, exist_ok=True)
            fading_s = 4.0 * max(predicted.release_ms) / 1e3 + FADING_SLACK_S
            series = uplink_series(sc, problem, plan, fading_s)
            if series is None:
                links = _user_links(problem, plan, scale)
            else:
                links = _faded_links(series, pdir, scale)
            t_policy = time.perf_counter()
            injector = outage_injector(sc.faults, nw.user)  # task k's user, on its own host
            with shaper.running(nw, links, pdir, seed=sc.sim.seed, between=between):
                exits = _run_policy(
                    sc, nw, models, plan, pdir, scale=scale, horizon_s=horizon_s,
                    injector=injector,
                )  # fmt: skip
            result = _measured(problem, plan, models, pdir, exits)
            doc["results"][policy] = result | {
                "faults_injected": injector.done,
                "wall_s": time.perf_counter() - t_policy,
            }
            if progress is not None:
                progress(policy, sc.sim.duration_s)
            write()
    return doc
