"""Where a sweep's cases run: one after another in this process, or in parallel on Dask
distributed, a local cluster on this machine or a running cluster named by its address.

Layer: emu (orchestration).

Dask distributed and not Ray: both add about 1.5 ms a case, nothing beside a simulation, but
Dask starts in 1.5 s against 5.4 s, its local cluster holds 165 MB against 670 MB, it installs
11 MB against 201 MB, and a lab starts it on its hosts with two commands (BENCHMARKS.md,
"Sweep engines").

A case runs in a scratch directory of its own wherever its worker is (``execute``); what it
wrote there comes back with its rows, and only the process that runs the sweep writes the
output directory, so a cluster's hosts share no file system. Emulation cases (level ``run``)
need root and a host each: they ask for one unit of the worker resource ``emulation``, which
the one worker per host started with ``--resources emulation=1`` offers, so the scheduler runs
one of them at a time on each such host. A worker that dies takes its case with it: the
scheduler gives the case to another worker (once, on the local cluster), then it is recorded
as failed. Interrupted, the sweep cancels what has not finished and closes what it started.

Before its first case, a process that runs cases freezes what it holds out of the garbage
collector's sight (``gc.freeze``): a Dask worker holds many objects, and every collection a
simulation's allocations triggered scanned them all, which made a case 5% slower in a worker
than alone (BENCHMARKS.md, "Sweeps at scale").
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from emu.errors import ConfigError
from emu.sweep.spec import Case, Study

__all__ = ["EMULATION", "CaseResult", "DaskEngine", "Engine", "InProcess", "engine_for", "execute"]

EMULATION = "emulation"  # the worker resource an emulation case takes (one per host)
RunCase = Callable[[Study, Case, Path], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What one case gave: a row of metrics per policy, or its error; the files it wrote
    (relative path: bytes); when and where it ran."""

    rows: list[dict[str, Any]]
    error: str = ""  # one line; "" when the case finished
    trace: str = ""  # the traceback of the error
    files: dict[str, bytes] = field(default_factory=dict)
    started_t: float = 0.0  # wall clock (time.time) of the worker's host
    ended_t: float = 0.0
    host: str = ""
    pid: int = 0

    @classmethod
    def lost(cls, exc: BaseException) -> CaseResult:
        """A case whose worker never returned (it died, or the cluster went away)."""
        return cls(rows=[], error=_one_line(exc), trace=repr(exc))


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]


@functools.cache
def _settle() -> None:
    """Once a process: what the process holds before its first case (the engine's worker,
    draftnet's modules) moved out of the garbage collector's sight, so that the collections a
    case's allocations trigger do not scan it all again (5% of a simulation's time in a Dask
    worker)."""
    import emu.runners.sim  # noqa: F401  (its imports, before the freeze)

    gc.collect()
    gc.freeze()


def execute(run_case: RunCase, study: Study, case: Case) -> CaseResult:
    """Run one case in a scratch directory (on whichever host runs it) and bring back its
    rows and files; the case's own fault is its result, not an exception."""
    _settle()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="draftnet-case-") as tmp:
        where = Path(tmp)
        try:
            rows, error, trace = run_case(study, case, where), "", ""
        except Exception as exc:  # the case's fault, recorded; the others go on
            rows, error, trace = [], _one_line(exc), traceback.format_exc()
        files = {
            str(p.relative_to(where)): p.read_bytes()
            for p in sorted(where.rglob("*"))
            if p.is_file()
        }
    return CaseResult(
        rows, error, trace, files, started, time.time(), socket.gethostname(), os.getpid()
    )


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")


class Engine(Protocol):
    """Runs cases; yields each with its result as it finishes (in any order). A context
    manager: what it starts lives as long as the block."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def describe(self) -> str: ...

    def slots(self, level: str) -> int:
        """How many cases of ``level`` it runs at once."""
        ...

    def results(
        self, run_case: RunCase, study: Study, cases: Sequence[Case]
    ) -> Iterator[tuple[Case, CaseResult]]: ...


class InProcess:
    """One case after another in this process (``--workers 1``, and emulation cases with no
    cluster named: one at a time on this host)."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> str:
        return "one at a time in this process"

    def slots(self, level: str) -> int:
        return 1

    def results(
        self, run_case: RunCase, study: Study, cases: Sequence[Case]
    ) -> Iterator[tuple[Case, CaseResult]]:
        for case in cases:
            yield case, execute(run_case, study, case)


class DaskEngine:
    """Cases as tasks on Dask distributed: a local cluster of ``workers`` single-threaded
    worker processes, or the running cluster at ``address`` (``tcp://host:8786``). A context
    manager: the local cluster lives as long as the block."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if address is not None and workers is not None:
            raise ConfigError(
                f"--workers {workers} is for the local cluster; the cluster at {address} has "
                "the workers its hosts started"
            )
        _check_workers(workers)
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.workers = workers or os.cpu_count() or 1
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> DaskEngine:
        import dask
        from distributed import Client, LocalCluster

        if self.address is not None:
            try:
                self._client = Client(self.address, timeout=self.connect_timeout_s)  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"--cluster {self.address}: no Dask scheduler answered there ({exc})"
                ) from None
            return self
        # A worker that dies: its case goes to another worker once, then it is a failure. A
        # worker holds only the case it runs (no queue of its own), so that the cases a dying
        # worker held are only the one that killed it.
        settings = {
            "distributed.scheduler.allowed-failures": 1,
            "distributed.scheduler.worker-saturation": 1.0,
            # no statistical profiler sampling the running case's stack every 10 ms
            "distributed.worker.profile.enabled": False,
        }
        with dask.config.set(settings):
            self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        self._client = Client(self._cluster)  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def describe(self) -> str:
        if self.address is not None:
            n = len(self._client.scheduler_info()["workers"]) if self._client else 0
            return f"on the Dask cluster at {self.address} ({n} workers)"
        return f"on a local Dask cluster of {self.workers} workers"

    def slots(self, level: str) -> int:
        workers = self._client.scheduler_info()["workers"].values()
        if level == "run":
            return sum(1 for w in workers if w.get("resources", {}).get(EMULATION))
        return sum(int(w.get("nthreads", 1)) for w in workers)

    def _check_emulation(self) -> None:
        if not self.slots("run"):
            raise ConfigError(
                f"level run needs a worker with the {EMULATION} resource, and the cluster at "
                f"{self.address} has none: start one per host as root with "
                f"`dask worker {self.address} --nworkers 1 --nthreads 1 "
                f"--resources {EMULATION}=1`"
            )

    def results(
        self, run_case: RunCase, study: Study, cases: Sequence[Case]
    ) -> Iterator[tuple[Case, CaseResult]]:
        from distributed import as_completed

        resources = None
        if study.level == "run":
            self._check_emulation()
            resources = {EMULATION: 1}
        pending = {
            self._client.submit(execute, run_case, study, case, pure=False, resources=resources): (
                case
            )
            for case in cases
        }
        try:
            for future in as_completed(list(pending)):  # type: ignore[no-untyped-call]
                case = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # KilledWorker: its worker died (twice) running it
                    result = CaseResult.lost(exc)
                yield case, result
        finally:
            if pending:  # interrupted: nothing left running for a sweep that has gone
                self._client.cancel(list(pending))


def engine_for(level: str, *, workers: int | None = None, cluster: str | None = None) -> Engine:
    """The engine for a sweep: the cluster at ``cluster`` where one is named; otherwise this
    process for one worker or for emulation cases (one at a time on this host), and a local
    Dask cluster of ``workers`` (default: one per core) for the rest."""
    if cluster is not None:
        return DaskEngine(address=cluster, workers=workers)
    _check_workers(workers)
    if level == "run" or workers == 1 or (workers is None and (os.cpu_count() or 1) == 1):
        return InProcess()
    return DaskEngine(workers=workers)
