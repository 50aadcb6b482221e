"""``draftnet train-awc``: AWC's network trained on oracle runs of the simulation (dsd.md
section 4.3, "Training"; the grid and the label are draftnet's choice).

Layer: emu (orchestration). For each scenario of the grid (the scenario's deployment with its
round trips scaled, its drafters scaled (the load) and its prompts scaled, in hybrid mode),
every allowed window runs as a constant over a few seeds; the runs' snapshots of AWC's 11
features (after a warm-up) are labelled with the scenario's oracle window
(``emu.planner.dsd.fit.oracle_window``), and the network is fitted to them
(``emu.planner.dsd.fit.fit_awc``). A fifth of the scenarios, drawn with the seed, is held out:
the report gives the fit's label accuracy there and AWC's closed-loop TPOT there against the
oracle's and the default window's. The runs go to a pool of processes; each oracle run is kept
as it ends in ``<out>.runs/`` beside the weights, so a stopped training resumes where it was
(runs of another scenario or grid there are removed first).

The weights are an ``.npz`` that ``dsd.awc_weights`` names; draftnet's own
(``emu/data/awc.npz``, the default) came from ``draftnet train-awc --preset dsd --out
emu/data/awc.npz``.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from emu.planner.dsd.awc import ALLOWED_WINDOWS, Awc, AwcNetwork, awc_features, quantise
from emu.planner.dsd.fit import SLO, Measured, fit_awc, oracle_window, stakes
from emu.planner.dsd.model import DsdProblem
from emu.planner.dsd.windows import AwcPolicy, Choice, Static, WindowPolicy
from emu.planner.dsd.workload import Request
from emu.runners.sim_dsd import simulate_dsd_policy, with_acceptance
from emu.scenario import Scenario, scenario_toml
from emu.scenario.dsd import HAND_SET, dsd_problem

__all__ = ["FULL", "QUICK", "Grid", "train_awc"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Grid:
    """The oracle's scenarios (each a round-trip scale x a load x a prompt scale), the
    windows run as constants in each, and how each run is sampled."""

    rtt_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
    loads: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 6.0)  # the scenario's drafters times this
    prompt_scales: tuple[float, ...] = (1.0, 8.0)  # the trace's prompts times this
    windows: tuple[int, ...] = ALLOWED_WINDOWS
    seeds: tuple[int, ...] = (0, 1)
    duration_s: float = 20.0
    warmup_s: float = 4.0  # snapshots from before this are not kept
    snapshots: int = 300  # kept from each run, at random
    holdout: float = 0.2  # the scenarios' share held out to validate on
    epochs: int = 40

    def scenarios(self) -> list[tuple[float, float, float]]:
        return [
            (r, load, p) for r in self.rtt_scales for load in self.loads for p in self.prompt_scales
        ]


FULL = Grid()
QUICK = Grid(
    rtt_scales=(1.0, 10.0), loads=(1.0, 6.0), prompt_scales=(1.0,), seeds=(0,), duration_s=10.0,
    warmup_s=1.0, snapshots=100, holdout=0.25, epochs=20,
)  # fmt: skip
GRIDS = {"full": FULL, "quick": QUICK}

Key = tuple[float, float, float]


def scenario_problem(sc: Scenario, key: Key, seed: int) -> DsdProblem:
    """The deployment of grid point ``key`` = (round-trip scale, load, prompt scale), in
    hybrid mode (a window of 1 is fused)."""
    rtt, load, prompts = key
    cfg = replace(
        sc.dsd,
        rtt_scale=sc.dsd.rtt_scale * rtt,
        drafters=max(1, round(sc.dsd.drafters * load)),
        mode="hybrid",
        awc_weights=HAND_SET,  # not read: the oracle runs constants, the trainer its own AWC
    )
    problem = with_acceptance(dsd_problem(cfg, seed=seed), cfg)
    trace = tuple(
        Request(prompt_tokens=max(1, round(r.prompt_tokens * prompts)),
                answer_tokens=r.answer_tokens)
        for r in problem.trace
    )  # fmt: skip
    return replace(problem, trace=trace)


@dataclass(frozen=True, slots=True)
class _Task:
    scenario: Scenario
    key: Key
    seed: int
    window: int  # a constant window, or 0: AWC with ``network``
    grid: Grid
    network: AwcNetwork | None = None


@dataclass(frozen=True, slots=True)
class _Result:
    key: Key
    seed: int
    window: int
    measured: Measured
    throughput_tok_s: float
    features: npt.NDArray[np.float64]


def _run(task: _Task) -> _Result:
    problem = scenario_problem(task.scenario, task.key, task.seed)
    max_gamma = problem.max_gamma
    seen: list[npt.NDArray[np.float64]] = []

    def observe(now: float, choice: Choice, _window: int) -> None:
        if now >= task.grid.warmup_s:
            seen.append(awc_features(choice.situation, default=problem.gamma_default,
                                     max_gamma=max_gamma))  # fmt: skip

    network = task.network

    def make() -> WindowPolicy:
        if network is None:
            return Static(default=task.window)
        return AwcPolicy(Awc(network=network, default=problem.gamma_default))

    run = simulate_dsd_policy(problem, make, duration_s=task.grid.duration_s, seed=task.seed,
                              observe=observe if task.window else None)  # fmt: skip
    s = run.summary()
    rng = np.random.default_rng([task.seed, task.window, *(int(k * 100) for k in task.key)])
    keep = rng.permutation(len(seen))[: task.grid.snapshots]
    features = np.array([seen[i] for i in sorted(keep)]).reshape(-1, 11)
    if s["conversations"]:
        measured = Measured(tpot_mean_ms=s["tpot_ms"]["mean"], tpot_p95_ms=s["tpot_ms"]["p95"],
                            ttft_p95_ms=s["ttft_ms"]["p95"])  # fmt: skip
    else:  # nothing finished: no TPOT, and no window to learn from this run
        measured = Measured(tpot_mean_ms=math.inf, tpot_p95_ms=math.inf, ttft_p95_ms=math.inf)
    return _Result(task.key, task.seed, task.window, measured, s["throughput_tok_s"], features)


def _mean(ms: list[Measured]) -> Measured:
    return Measured(
        tpot_mean_ms=float(np.mean([m.tpot_mean_ms for m in ms])),
        tpot_p95_ms=float(np.mean([m.tpot_p95_ms for m in ms])),
        ttft_p95_ms=float(np.mean([m.ttft_p95_ms for m in ms])),
    )


def _pool(
    tasks: list[_Task], workers: int, done: Callable[[int, int], None], cache: Path | None = None
) -> list[_Result]:
    """Every task's result, in the tasks' order; the biggest deployments go first. With a
    ``cache`` directory, a result already there is read back and each new one is written
    there as it comes."""
    out: list[_Result | None] = [_load(cache, t) if cache else None for t in tasks]
    todo = sorted((i for i, r in enumerate(out) if r is None), key=lambda i: -tasks[i].key[1])
    finished = len(tasks) - len(todo)

    def keep(i: int, result: _Result) -> None:
        nonlocal finished
        out[i] = result
        if cache is not None:
            _store(cache, result)
        finished += 1
        done(finished, len(tasks))

    if workers <= 1:
        for i in todo:
            keep(i, _run(tasks[i]))
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_run, tasks[i]): i for i in todo}
            for fut in as_completed(futures):
                keep(futures[fut], fut.result())
    return [r for r in out if r is not None]


def _file(cache: Path, key: Key, window: int, seed: int) -> Path:
    return cache / f"rtt{key[0]:g}-load{key[1]:g}-prompts{key[2]:g}-window{window}-seed{seed}.npz"


def _store(cache: Path, r: _Result) -> None:
    buf = io.BytesIO()
    np.savez(buf, features=r.features, throughput=r.throughput_tok_s,
             measured=np.array([r.measured.tpot_mean_ms, r.measured.tpot_p95_ms,
                                r.measured.ttft_p95_ms]))  # fmt: skip
    _write_bytes(_file(cache, r.key, r.window, r.seed), buf.getvalue())


def _load(cache: Path, t: _Task) -> _Result | None:
    path = _file(cache, t.key, t.window, t.seed)
    if t.network is not None or not path.exists():
        return None
    with np.load(path) as data:
        tpot, tpot95, ttft95 = (float(v) for v in data["measured"])
        measured = Measured(tpot_mean_ms=tpot, tpot_p95_ms=tpot95, ttft_p95_ms=ttft95)
        return _Result(t.key, t.seed, t.window, measured, float(data["throughput"]),
                       data["features"])  # fmt: skip


def _open_cache(cache: Path, sc: Scenario, grid: Grid, say: Callable[[str], None]) -> None:
    """``cache`` ready for this scenario's and grid's runs: emptied of another's."""
    stamp = hashlib.sha256(f"{scenario_toml(sc)}\n{grid!r}".encode()).hexdigest()
    meta = cache / "oracle.sha256"
    if cache.exists() and (not meta.exists() or meta.read_text().strip() != stamp):
        stale = list(cache.glob("*.npz"))
        for f in stale:
            f.unlink()
        if stale:
            say(f"{cache}: {len(stale)} runs of another scenario or grid removed")
    cache.mkdir(parents=True, exist_ok=True)
    meta.write_text(stamp + "\n")


def train_awc(
    sc: Scenario,
    out: Path,
    *,
    grid: Grid = FULL,
    workers: int = 0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train AWC on ``grid`` around ``sc``'s deployment, write the weights to ``out`` and
    return the report (``draftnet train-awc --json``)."""
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    say = progress or (lambda _line: None)
    keys = grid.scenarios()
    rng = np.random.default_rng([seed, 4])
    n_hold = max(1, round(grid.holdout * len(keys))) if len(keys) > 1 else 0
    held = {keys[i] for i in rng.choice(len(keys), size=n_hold, replace=False)}
    tasks = [_Task(sc, k, s, g, grid) for k in keys for g in grid.windows for s in grid.seeds]
    say(f"oracle: {len(keys)} scenarios x {len(grid.windows)} windows x {len(grid.seeds)} "
        f"seeds = {len(tasks)} runs of {grid.duration_s:g} s on {workers} processes")  # fmt: skip
    cache = out.with_name(out.stem + ".runs")
    _open_cache(cache, sc, grid, say)
    results = _pool(tasks, workers, lambda n, total: _every(say, n, total, "oracle runs"), cache)
    labels: dict[Key, int] = {}
    by_key: dict[Key, dict[int, Measured]] = {}
    for k in keys:
        by_key[k] = {
            g: _mean([r.measured for r in results if r.key == k and r.window == g])
            for g in grid.windows
        }
        labels[k] = oracle_window(by_key[k], SLO())
    default = sc.dsd.gamma_default
    train_x, train_y, train_w, val_x, val_y = [], [], [], [], []
    for r in results:
        target = np.full(len(r.features), float(labels[r.key] - default))
        if r.key in held:
            val_x.append(r.features)
            val_y.append(target)
        else:
            train_x.append(r.features)
            train_y.append(target)
            train_w.append(np.full(len(r.features), stakes(by_key[r.key])))
    x, y, w = np.concatenate(train_x), np.concatenate(train_y), np.concatenate(train_w)
    say(f"fit: {len(y)} snapshots from {len(keys) - len(held)} scenarios "
        f"({len(held)} held out)")  # fmt: skip
    fit = fit_awc(x, y, epochs=grid.epochs, max_gamma=sc.dsd.max_gamma, seed=seed, weight=w)
    _save(out, fit.network)
    report: dict[str, Any] = {
        "out": str(out),
        "scenarios": len(keys),
        "held_out": len(held),
        "runs": len(tasks),
        "snapshots": len(y),
        "labels": {_name(k): g for k, g in labels.items()},
        "oracle_tpot_ms": {
            _name(k): {str(g): _finite(m.tpot_mean_ms) for g, m in by_key[k].items()} for k in keys
        },
        "train_loss": fit.losses[-1],
        "train_accuracy": _accuracy(fit.network, x, y, default),
    }
    if held:
        vx, vy = np.concatenate(val_x), np.concatenate(val_y)
        report["holdout_accuracy"] = _accuracy(fit.network, vx, vy, default)
        evals = [_Task(sc, k, s, 0, grid, fit.network) for k in sorted(held) for s in grid.seeds]
        closed = _pool(evals, workers, lambda n, total: _every(say, n, total, "AWC runs"))
        report["holdout"] = {
            _name(k): {
                "label": labels[k],
                "awc_tpot_ms": _finite(
                    _mean([r.measured for r in closed if r.key == k]).tpot_mean_ms
                ),
                "oracle_tpot_ms": _finite(by_key[k][labels[k]].tpot_mean_ms),
                "default_tpot_ms": _finite(by_key[k][default].tpot_mean_ms)
                if default in by_key[k]
                else None,
            }
            for k in sorted(held)
        }
    report["wall_s"] = time.perf_counter() - t0
    return report


def _finite(x: float) -> float | None:
    """``x``, or None (JSON's null) when nothing finished to measure it."""
    return x if math.isfinite(x) else None


def _every(say: Callable[[str], None], n: int, total: int, what: str) -> None:
    if n == total or n % max(1, total // 10) == 0:
        say(f"{what}: {n}/{total}")


def _name(k: Key) -> str:
    return f"rtt {k[0]:g}x load {k[1]:g}x prompts {k[2]:g}x"


def _accuracy(net: AwcNetwork, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64],
              default: int) -> float:  # fmt: skip
    """The share of snapshots whose quantised window (before smoothing) is the label."""
    awc = Awc(network=net, default=default)
    hits = 0
    for xi, yi in zip(x, y, strict=True):
        raw = min(max(default + net.out(xi), 1.0), float(awc.max_gamma))
        hits += quantise(raw, awc.allowed) == round(default + yi)
    return hits / len(y)


def _save(out: Path, net: AwcNetwork) -> None:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in net.arrays().items()}
    np.savez(buf, **arrays)
    _write_bytes(out, buf.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path``, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
