"""A sweep's results summarised over seeds: the mean and a 95% confidence interval of every
metric at every axis point and policy (``summary.csv``), the study's plots, and ``report.md``.

Layer: emu (orchestration); reads the results table's rows, writes files.

The interval is Student's t over the seeds that finished: mean +- t(0.975, n - 1) s / sqrt(n)
(none with one seed). Failed rows are counted, not averaged.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

__all__ = ["plot_lines", "summarise", "write_summary"]

# An axis: the fields it moves together and their values (tuples), as ``Study.axes`` has them.
Group = tuple[Sequence[str], Sequence[tuple[Any, ...]]]

_NOT_METRICS = {"case_id", "case", "seed", "policy", "status", "error", "started_t", "ended_t"}


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _hashable(value: Any) -> Any:
    """An axis value as a key (a list-valued field's values as a tuple)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def summarise(rows: Iterable[Mapping[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """One row per axis point and policy: ``n`` (seeds that finished), ``failed``, and for
    every numeric metric its ``.mean``, ``.ci95`` (the interval's half width) and ``.n``."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (*(_hashable(row.get(a)) for a in axes), row.get("policy"))
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        entry: dict[str, Any] = dict(zip([*axes, "policy"], key, strict=True))
        entry |= {"n": len(ok), "failed": len(members) - len(ok)}
        metrics = sorted({k for r in ok for k in r if k not in _NOT_METRICS and k not in axes})
        for m in metrics:
            values = [x for r in ok if (x := _number(r.get(m))) is not None]
            if not values:
                continue
            n = len(values)
            mean = sum(values) / n
            half = math.nan
            if n > 1:
                sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
                half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
            entry |= {f"{m}.mean": mean, f"{m}.ci95": half, f"{m}.n": n}
        out.append(entry)
    return out


def plot_lines(
    summary: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    x: str,
    y: str,
    *,
    groups: Sequence[Group] = (),
    at: Mapping[str, Any] | None = None,
) -> dict[str, list[tuple[float, float, float]]]:
    """The lines of ``y`` against ``x`` (label: its (x, mean, ci95 half width) points, in x
    order): one per policy and combination of the other axes' values (the fields zipped with
    ``x``, its group in ``groups``, move with it), or where ``at`` gives the other axes' values
    (a one-at-a-time study's base), one per policy through the points at those values (and
    for a zipped group, only its own combinations, not the base's)."""
    mine, values = next(((g, v) for g, v in groups if x in g), ((x,), None))
    others = [a for a in axes if a not in mine]
    keyed = others if at is None else []
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in summary:
        mean, xv = _number(row.get(f"{y}.mean")), _number(row.get(x))
        if mean is None or xv is None:
            continue
        if at is not None and any(_hashable(row.get(a)) != _hashable(at.get(a)) for a in others):
            continue
        if (
            at is not None
            and len(mine) > 1
            and tuple(row.get(f) for f in mine) not in (values or ())
        ):
            continue  # a zipped group's line: its own points, not the base's combination
        half = _number(row.get(f"{y}.ci95")) or 0.0
        label = ", ".join([str(row["policy"]), *(f"{a}={row.get(a)}" for a in keyed)])
        lines.setdefault(label, []).append((xv, mean, 0.0 if math.isnan(half) else half))
    return {label: sorted(points) for label, points in sorted(lines.items())}


def _plot(
    summary: list[dict[str, Any]],
    axes: list[str],
    x: str,
    y: str,
    path: Path,
    *,
    groups: Sequence[Group] = (),
    at: Mapping[str, Any] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in plot_lines(summary, axes, x, y, groups=groups, at=at).items():
        xs, ms, hs = zip(*points, strict=True)
        ax.plot(xs, ms, marker="o", label=label)
        ax.fill_between(xs, [m - h for m, h in zip(ms, hs, strict=True)],
                        [m + h for m, h in zip(ms, hs, strict=True)], alpha=0.2)  # fmt: skip
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(
    rows: Sequence[Mapping[str, Any]],
    axes: list[str],
    out_dir: Path,
    *,
    plots: Sequence[tuple[str, str]] = (),
    title: str = "",
    groups: Sequence[Group] = (),
    at: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``summary.csv``, the plots (``x``, ``y`` pairs: ``<y>-vs-<x>.png``; ``groups``: the
    axes, each its fields and their values; ``at``: the other axes' values each plot keeps, for a
    one-at-a-time study) and ``report.md``."""
    summary = summarise(rows, axes)
    columns: list[str] = []
    for row in summary:
        columns += [k for k in row if k not in columns]
    with (out_dir / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(summary)
    made = []
    for x, y in plots:
        name = f"{y}-vs-{x}.png".replace("/", "_")
        _plot(summary, axes, x, y, out_dir / name, groups=groups, at=at)
        made.append(name)
    shown = ["throughput_tok_s", "tpot_ms.p95", "cycle_ms"]
    cols = [*axes, "policy", "n", "failed"]
    cols += [f"{m}.mean" for m in shown if any(f"{m}.mean" in r for r in summary)]
    lines = [f"# Sweep {title}".rstrip(), "", f"{len(rows)} rows; mean over seeds (95% CI).", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if c.endswith(".mean") and isinstance(v, float):
                half = r.get(c.replace(".mean", ".ci95"), math.nan)
                v = f"{v:.4g}" + ("" if math.isnan(half) else f" +- {half:.2g}")
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{m}]({m})" for m in made)]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary
