"""Running a study's cases, each one's results kept the moment it finishes.

Layer: emu (orchestration); writes the output directory.

- ``results.jsonl``: one line per case and policy, appended and flushed as each case ends
  (``case_id``, ``case``, every axis field, ``seed``, ``policy``, ``status`` ``ok`` or
  ``failed``, ``error``, and every number of the level's JSON for that policy, nested keys
  joined with dots: ``throughput_tok_s``, ``tpot_ms.p95``, ...). A case that fails is a row
  with its error, and the others go on.
- ``results.csv``: the same rows as a table (the columns of every row), rewritten after each
  case: ``pandas.read_csv`` loads it.
- ``cases/<case_id>/``: each case's scenario and, for ``sim``, its summary and events.
- at the end, ``summary.csv`` (mean and 95% confidence interval over seeds of every metric
  at every axis point and policy), the study's plots and ``report.md`` (``summary``).

Started again on the same directory, a sweep runs only the cases without an ``ok`` row (a
killed sweep resumes; a failed case is tried again). Cases run one after the other here; the
distributed engine that runs them in parallel is the next step of this work.
"""

from __future__ import annotations

import csv
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from emu.files import write_atomic
from emu.scenario import scenario_toml
from emu.sweep.spec import Case, Study, expand
from emu.sweep.summary import write_summary

__all__ = ["case_rows", "flatten", "run_study"]

RunCase = Callable[[Study, Case, Path], list[dict[str, Any]]]


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
        from emu.runners.solve import solve

        return [flatten(solve(case.scenario, policy)) for policy in study.policies]
    from emu.runners.sim import simulate

    out = simulate(case.scenario, list(study.policies), out_dir=where)
    return [{"policy": p, **flatten(r)} for p, r in out["results"].items()]


def _done(path: Path) -> set[str]:
    """The ids of the cases with an ``ok`` row in ``results.jsonl``."""
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


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """The last rows of each case in ``results.jsonl`` (a case tried again replaces its own)."""
    latest: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        attempt = (row["case_id"], row.get("attempt_t"))
        rows = latest.setdefault(row["case_id"], [])
        if rows and (rows[0]["case_id"], rows[0].get("attempt_t")) != attempt:
            rows.clear()
        rows.append(row)
    for rows in sorted(latest.values(), key=lambda r: r[0]["case"]):
        yield from rows


def _write_csv(jsonl: Path, out: Path) -> None:
    rows = list(_rows(jsonl))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)


def run_study(
    study: Study,
    out_dir: Path,
    *,
    run_case: RunCase = case_rows,
    on_case: Callable[[Case, str], None] | None = None,
    cases: Sequence[Case] | None = None,
) -> dict[str, Any]:
    """Run every case of ``study`` not yet done in ``out_dir``; the sweep's summary."""
    cases = expand(study) if cases is None else cases  # every case validated first
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, table = out_dir / "results.jsonl", out_dir / "results.csv"
    done = _done(jsonl)
    ran = failed = 0
    t0 = time.perf_counter()
    with jsonl.open("a") as log:
        for case in cases:
            if case.case_id in done:
                continue
            where = out_dir / "cases" / case.case_id
            where.mkdir(parents=True, exist_ok=True)
            write_atomic(where / "scenario.toml", scenario_toml(case.scenario))
            head = {"case_id": case.case_id, "case": case.index, **case.point}
            head |= {"seed": case.seed, "attempt_t": time.time()}
            try:
                rows = [
                    {**head, "status": "ok", "error": "", **r} for r in run_case(study, case, where)
                ]
            except Exception as exc:  # the case's fault, recorded; the others go on
                (where / "error.txt").write_text(traceback.format_exc())
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                rows = [
                    {**head, "policy": p, "status": "failed", "error": error}
                    for p in study.policies
                ]
                failed += 1
            for row in rows:
                log.write(json.dumps(row, default=float) + "\n")
            log.flush()
            os.fsync(log.fileno())
            _write_csv(jsonl, table)
            ran += 1
            if on_case is not None:
                on_case(case, rows[0]["status"])
    _write_csv(jsonl, table)
    write_summary(list(_rows(jsonl)), study.fields, out_dir, plots=study.plots, title=study.name)
    return {
        "study": study.name,
        "level": study.level,
        "cases": len(cases),
        "ran": ran,
        "skipped": len(cases) - ran,
        "failed": failed,
        "results": str(table),
        "wall_s": time.perf_counter() - t0,
    }
