#!/usr/bin/env python3
"""Which distributed engine runs a sweep's cases: Dask distributed or Ray, measured here.

For each engine, a local cluster of ``--workers`` single-threaded worker processes:
- start-up: from nothing to a cluster that has run one task;
- overhead per task: ``--tasks`` empty tasks submitted at once and gathered;
- a sweep's real work: ``--cases`` short simulations (synthetic models, ``--users`` users,
  ``--duration`` virtual s each, a seed each), against the same cases run one after another
  in this process: the speed-up and the share of the engine's wall that is not simulating;
- memory: the resident memory of the cluster's processes (scheduler, workers, raylets...)
  once started.

Prints figures for BENCHMARKS.md; asserts nothing. Dask distributed is draftnet's engine
(in the lock) and Ray is not: run it from an environment that has both, with the repository
on PYTHONPATH, e.g.

    .venv/bin/uv venv /tmp/engvenv && VIRTUAL_ENV=/tmp/engvenv .venv/bin/uv pip install \
        numpy scipy msgpack "trio<0.40" rich matplotlib tomli-w psutil "dask[distributed]" ray
    PYTHONPATH=. /tmp/engvenv/bin/python scripts/bench_engines.py --cases 1000 --users 4 \
        --duration 10 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_case(users: int, duration: float, seed: int) -> float:
    """One sweep case: a simulation of both policies; its throughput (so work is returned)."""
    from emu.runners.sim import simulate
    from emu.scenario import load_scenario

    sc = load_scenario(
        overrides={
            "models.kind": "synthetic",
            "network.model": "fixed",
            "users.count": users,
            "sim.duration_s": duration,
            "sim.seed": seed,
        }
    )
    out = simulate(sc, ["dipsd", "ad-batch"])
    return float(out["results"]["dipsd"]["throughput_tok_s"])


def nothing(i: int) -> int:
    return i


def _tree_rss_mb(pids: list[int]) -> float:
    total = 0
    seen = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for q in [p, *p.children(recursive=True)]:
            if q.pid in seen:
                continue
            seen.add(q.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                total += q.memory_info().rss
    return total / 2**20


def _mine() -> list[int]:
    """This process's children (a local cluster's processes), not this process."""
    return [c.pid for c in psutil.Process().children(recursive=False)]


class Engine:
    name = ""

    def start(self, workers: int) -> None: ...
    def map(self, fn: Callable[..., Any], *args: list[Any]) -> list[Any]: ...
    def stop(self) -> None: ...


class Dask(Engine):
    name = "dask distributed"

    def start(self, workers: int) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = Client(self.cluster)

    def map(self, fn: Callable[..., Any], *args: list[Any]) -> list[Any]:
        futures = self.client.map(fn, *args, pure=False)
        return list(self.client.gather(futures))

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


class Ray(Engine):
    name = "ray"

    def start(self, workers: int) -> None:
        import ray

        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
        )
        self.ray = ray
        self.remote: dict[Callable[..., Any], Any] = {}

    def map(self, fn: Callable[..., Any], *args: list[Any]) -> list[Any]:
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(num_cpus=1)(fn)
        f = self.remote[fn]
        return list(self.ray.get([f.remote(*a) for a in zip(*args, strict=True)]))

    def stop(self) -> None:
        self.ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--users", type=int, default=14)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--engine", choices=("dask", "ray"), action="append")
    ap.add_argument(
        "--repeat", type=int, default=1, help="measure the engines this many times, alternating"
    )
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    seeds = list(range(args.cases))
    users, durations = [args.users] * args.cases, [args.duration] * args.cases
    one_case(args.users, args.duration, 0)  # imports and caches warm
    t0 = time.perf_counter()
    serial = [one_case(u, d, s) for u, d, s in zip(users, durations, seeds, strict=True)]
    serial_s = time.perf_counter() - t0
    print(
        f"serial in this process: {args.cases} cases of {args.users} users x {args.duration:g} "
        f"virtual s in {serial_s:.1f} s ({serial_s / args.cases * 1e3:.0f} ms a case)"
    )
    print(
        "| engine | start-up s | overhead per empty task ms | cluster memory MB | "
        f"{args.cases} cases s | speed-up over serial | not simulating |"
    )
    print("|---|---|---|---|---|---|---|")
    wanted = args.engine or ["dask", "ray"]
    engines = [e for e in (Dask, Ray) if e.__name__.lower() in wanted]
    for engine in [e() for _ in range(args.repeat) for e in engines]:
        t0 = time.perf_counter()
        engine.start(args.workers)
        engine.map(nothing, [0])
        start_s = time.perf_counter() - t0
        memory = _tree_rss_mb(_mine())
        t0 = time.perf_counter()
        engine.map(nothing, list(range(args.tasks)))
        per_task_ms = (time.perf_counter() - t0) / args.tasks * 1e3
        engine.map(one_case, [args.users], [args.duration], [0])  # workers' imports warm
        t0 = time.perf_counter()
        got = engine.map(one_case, users, durations, seeds)
        wall = time.perf_counter() - t0
        assert got == serial, "the engine's results differ from the serial run's"
        ideal = serial_s / args.workers
        print(
            f"| {engine.name} | {start_s:.1f} | {per_task_ms:.2f} | {memory:.0f} | {wall:.1f} "
            f"| {serial_s / wall:.2f} | {max(0.0, wall - ideal) / wall:.0%} |",
            flush=True,
        )
        engine.stop()


if __name__ == "__main__":
    main()
