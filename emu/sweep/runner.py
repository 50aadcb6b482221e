"""Running a study's cases, each one's results kept the moment it finishes.

Layer: emu (orchestration); writes the output directory.

- ``results.jsonl``: one line per case and policy, appended and flushed as each case ends
  (``case_id``, ``case``, every axis field, ``seed``, ``policy``, ``status`` ``ok`` or
  ``failed``, ``error``, and every number of the level's JSON for that policy, nested keys
  joined with dots: ``throughput_tok_s``, ``tpot_ms.p95``, ...). A case that fails is a row
  with its error, and the others go on.
- ``results.csv``: the same rows as a table (the columns of every row), rewritten after each
  case: ``pandas.read_csv`` loads it.
- ``cases/<case_id>/``: each case's scenario and, for ``sim``, its summary (and its events
  where the study says ``events = true``); for ``run``, its run directory.
- at the end, ``summary.csv`` (mean and 95% confidence interval over seeds of every metric
  at every axis point and policy), the study's plots and ``report.md`` (``summary``).

Started again on the same directory, a sweep runs only the cases without an ``ok`` row (a
killed sweep resumes; a failed case is tried again). The cases run on an engine
(``emu.sweep.engine``: this process, or Dask distributed); this process alone writes the
output directory, as each case's result comes back.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emu.files import write_atomic
from emu.scenario import scenario_toml
from emu.sweep.engine import CaseResult, Engine, InProcess, RunCase
from emu.sweep.spec import Case, Study, base_point, expand
from emu.sweep.summary import write_summary

__all__ = ["case_rows", "finished", "flatten", "read_results", "run_study"]

TEARDOWN_S = 120.0  # how long a stopped emulation case may take to tear its network down


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The numbers, strings and flags of a nested JSON object, keys joined with dots (lists
    and empty values left out: a table has one value a cell)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
    return out


def case_rows(study: Study, case: Case, where: Path) -> list[dict[str, Any]]:
    """Run one case at the study's level: one row of metrics per policy."""
    if study.level == "solve":
        from emu.runners.solve import solve_each

        return [flatten(out) for out in solve_each(case.scenario, list(study.policies))]
    if study.level == "sim":
        from emu.runners.sim import simulate

        out = simulate(case.scenario, list(study.policies), out_dir=where if study.events else None)
        if not study.events:
            write_atomic(where / "summary.json", json.dumps(out, indent=2, default=float))
    else:
        out = _emulate(study, case, where)
    return [{"policy": p, **flatten(r)} for p, r in out["results"].items()]


def _emulate(study: Study, case: Case, where: Path) -> dict[str, Any]:
    """An emulation case: ``draftnet run`` in a process of its own (it builds a Mininet
    network and handles signals as a command does); its ``--json`` object."""
    scenario = where / "scenario.toml"
    scenario.write_text(scenario_toml(case.scenario))
    cmd = [sys.executable, "-m", "emu.cli", "run", str(scenario), "--json", "--out"]
    cmd += [str(where / "run"), *(a for p in study.policies for a in ("--policy", p))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate()
    except KeyboardInterrupt:
        # Stopped: the run tears its network down first (a terminal's Ctrl-C reached it too;
        # it ignores a second signal), so that no namespace or interface is left behind.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=TEARDOWN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    (where / "run.stderr").write_text(stderr)
    try:
        out: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        said = [line for line in stderr.splitlines() if line.strip()]
        raise RuntimeError(
            f"draftnet run exited {proc.returncode}: {said[-1] if said else 'no output'}"
        ) from None
    bad = [f"{p}: {r['invalid_reason']}" for p, r in out["results"].items() if not r["valid"]]
    if bad:
        raise RuntimeError(f"invalid run: {'; '.join(bad)}")
    return out


def finished(out_dir: Path) -> set[str]:
    """The ids of the cases with an ``ok`` row in ``out_dir``'s ``results.jsonl``."""
    path = out_dir / "results.jsonl"
    if not path.exists():
        return set()
    ok = set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: that case runs again
        if row.get("status") == "ok":
            ok.add(row["case_id"])
    return ok


def read_results(out_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``out_dir``'s ``results.jsonl``, in case order: each case's latest attempt
    (a case tried again replaces its own rows)."""
    path = out_dir / "results.jsonl"
    latest: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        attempt = (row["case_id"], row.get("started_t"))
        rows = latest.setdefault(row["case_id"], [])
        if rows and (rows[0]["case_id"], rows[0].get("started_t")) != attempt:
            rows.clear()
        rows.append(row)
    return [row for rows in sorted(latest.values(), key=lambda r: r[0]["case"]) for row in rows]


class _Table:
    """``results.csv`` kept in step with ``results.jsonl``: a finished case's rows appended,
    the whole table rewritten (in case order) only when a row brings a new column or replaces
    a case's earlier rows, and at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "results.csv"
        self.by_case: dict[str, list[dict[str, Any]]] = {}
        for row in read_results(out_dir):
            self.by_case.setdefault(row["case_id"], []).append(row)
        self.columns: list[str] = []
        if self.by_case:
            self.rewrite()

    def _grow(self, rows: list[dict[str, Any]]) -> bool:
        new = [k for row in rows for k in row if k not in self.columns]
        self.columns += list(dict.fromkeys(new))
        return bool(new)

    def rows(self) -> list[dict[str, Any]]:
        """Every case's latest rows, in case order (what ``read_results`` reads back)."""
        return sorted((r for rows in self.by_case.values() for r in rows), key=lambda r: r["case"])

    def finished(self) -> set[str]:
        """The cases whose latest attempt finished (what ``finished`` reads back)."""
        return {c for c, rows in self.by_case.items() if rows[0]["status"] == "ok"}

    def rewrite(self) -> None:
        rows = self.rows()
        self._grow(rows)
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def add(self, case_id: str, rows: list[dict[str, Any]]) -> None:
        replaced = case_id in self.by_case
        self.by_case[case_id] = rows
        if self._grow(rows) or replaced or not self.path.exists():
            self.rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerows(rows)


def run_study(
    study: Study,
    out_dir: Path,
    *,
    run_case: RunCase = case_rows,
    on_case: Callable[[Case, str], None] | None = None,
    cases: Sequence[Case] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Run every case of ``study`` not yet done in ``out_dir`` on ``engine`` (default: one
    after another in this process); the sweep's summary. ``run_case`` must be importable by
    the engine's workers (a module's function)."""
    cases = expand(study) if cases is None else cases  # every case validated first
    engine = engine if engine is not None else InProcess()
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, table = out_dir / "results.jsonl", _Table(out_dir)
    done = table.finished()
    todo = [case for case in cases if case.case_id not in done]
    for case in todo:
        where = out_dir / "cases" / case.case_id
        where.mkdir(parents=True, exist_ok=True)
        write_atomic(where / "scenario.toml", scenario_toml(case.scenario))
    ran = failed = 0
    t0 = time.perf_counter()
    with jsonl.open("a") as log:
        for case, result in engine.results(run_case, study, todo):
            rows = _keep(out_dir / "cases" / case.case_id, study, case, result)
            failed += bool(result.error)
            for row in rows:
                log.write(json.dumps(row, default=float) + "\n")
            log.flush()
            os.fsync(log.fileno())
            table.add(case.case_id, rows)
            ran += 1
            if on_case is not None:
                on_case(case, rows[0]["status"])
    table.rewrite()
    write_summary(
        table.rows(),
        study.fields,
        out_dir,
        plots=study.plots,
        title=study.name,
        groups=study.axes,
        at=base_point(study) if study.design == "one-at-a-time" else None,
    )
    return {
        "study": study.name,
        "level": study.level,
        "engine": engine.describe(),
        "cases": len(cases),
        "ran": ran,
        "skipped": len(cases) - ran,
        "failed": failed,
        "results": str(table.path),
        "wall_s": time.perf_counter() - t0,
    }


def _keep(where: Path, study: Study, case: Case, result: CaseResult) -> list[dict[str, Any]]:
    """A finished case's files written under ``where``; its rows for the results table."""
    for name, data in result.files.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    head = {"case_id": case.case_id, "case": case.index, **case.point, "seed": case.seed}
    head |= {"started_t": result.started_t, "ended_t": result.ended_t, "host": result.host}
    if result.error:
        (where / "error.txt").write_text(result.trace or result.error)
        return [
            {**head, "policy": p, "status": "failed", "error": result.error} for p in study.policies
        ]
    return [{**head, "status": "ok", "error": "", **r} for r in result.rows]
