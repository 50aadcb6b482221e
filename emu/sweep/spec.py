"""A study file: the sweep a researcher declares (TOML), and its expansion into cases.

Layer: emu (orchestration); pure apart from reading the study file and the base scenario.

    name = "jitter"
    level = "sim"                      # solve | sim | run (emulation, as root)
    policies = ["dipsd", "ad-batch"]
    seeds = [1, 2]
    [base]
    preset = "dipsd-paper"             # or scenario = "path.toml"
    [base.set]
    "sim.duration_s" = 20.0            # any scenario field, as with --set
    [axes]                             # the cross product of every axis
    "network.jitter_ms" = [0.0, 5.0, 20.0]
    "users.count" = { range = [4, 16, 4] }         # 4, 8, 12, 16 (the stop included)
    "network.rate_bps" = { log = [1e6, 1e8, 3] }   # 1e6, 1e7, 1e8
    [[zip]]                            # fields that move together: one axis of their tuples
    "users.comm_ms" = [5.0, 10.0]
    "network.rate_bps" = [1e7, 1e6]
    [[plots]]                          # a metric against an axis, a line per policy
    x = "network.jitter_ms"
    y = "throughput_tok_s"

Each case keeps its scenario and summary; ``events = true`` keeps a simulation's
``events.jsonl`` too (megabytes a case). ``design = "one-at-a-time"`` (a sensitivity study)
varies each axis (or zipped group) alone, the others at the base scenario's values, instead
of the cross product (``"grid"``, the default). Fields that name files (``network.trace_up``,
``network.trace_down``) are paths relative to the study file's folder, as is
``base.scenario``: recorded traces as an axis are a ``[[zip]]`` of the two with
``"network.model" = "trace"`` in ``[base.set]``.

A case is one point of the axes and one seed: its scenario is the base, then ``base.set``,
then the point, then ``sim.seed``. Every case's scenario is built (and so validated) before
the first one runs; a bad value is one line naming the case and the field. A case's id is a
hash of its resolved scenario, its level and its policies: the same case in another run of
the study (or another study) has the same id, which is what resuming relies on.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from emu.errors import ConfigError
from emu.scenario import Scenario, load_scenario, scenario_toml
from nodes.core.systems import get_system

__all__ = [
    "DESIGNS",
    "LEVELS",
    "Case",
    "Study",
    "base_point",
    "builtin_studies",
    "expand",
    "load_study",
    "points",
]

LEVELS = ("solve", "sim", "run")
_KEYS = {"name", "level", "design", "events", "policies", "seeds", "base", "axes", "zip", "plots"}
DESIGNS = ("grid", "one-at-a-time")
PATH_FIELDS = ("network.trace_up", "network.trace_down")  # relative to the study's folder


@dataclass(frozen=True, slots=True)
class Study:
    name: str
    level: str
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    preset: str | None
    scenario: Path | None
    base_set: dict[str, Any] = field(default_factory=dict)
    # each axis: the fields it moves (one, or a zipped group) and its values (tuples)
    axes: tuple[tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]], ...] = ()
    plots: tuple[tuple[str, str], ...] = ()  # (axis field, metric): a metric against an axis
    design: str = "grid"  # or "one-at-a-time"
    events: bool = False  # sim: keep each case's events.jsonl too (megabytes a case)

    @property
    def fields(self) -> list[str]:
        """Every field the axes move, in order."""
        return [f for names, _ in self.axes for f in names]


@dataclass(frozen=True, slots=True)
class Case:
    index: int
    case_id: str
    point: dict[str, Any]  # every axis field's value
    seed: int
    scenario: Scenario


def _values(where: str, spec: Any) -> list[Any]:
    """An axis's values: a list, ``{range = [start, stop, step]}`` (stop included) or
    ``{log = [start, stop, count]}`` (geometric)."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where} must list at least one value, got []")
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        kind, args = next(iter(spec.items()))
        ok = isinstance(args, list) and len(args) == 3
        ok = ok and all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        if kind == "range" and ok and args[2] > 0 and args[1] >= args[0]:
            start, stop, step = args
            n = math.floor((stop - start) / step + 1e-9) + 1
            vals = [start + k * step for k in range(n)]
            return [int(v) if all(isinstance(a, int) for a in args) else v for v in vals]
        if kind == "log" and ok and args[0] > 0 and args[1] > 0 and float(args[2]).is_integer():
            start, stop, count = args
            if count >= 1:
                if count == 1:
                    return [float(start)]
                ratio = (stop / start) ** (1.0 / (count - 1))
                return [float(start * ratio**k) for k in range(int(count))]
    raise ConfigError(
        f"{where} must be a list of values, {{range = [start, stop, step]}} with step > 0 and "
        f"stop >= start, or {{log = [start, stop, count]}} with start, stop > 0, got {spec!r}"
    )


def builtin_studies() -> list[str]:
    """The names of the studies draftnet ships (``emu/studies/<name>.toml``)."""
    folder = resources.files("emu").joinpath("studies")
    return sorted(
        f.name.removesuffix(".toml") for f in folder.iterdir() if f.name.endswith(".toml")
    )


def load_study(path: str | Path) -> Study:
    """Read a study file, or a built-in study by name; ConfigError (one line naming the key)
    for what it cannot be."""
    p = Path(path)
    if not p.exists() and str(path) in builtin_studies():
        p = Path(str(resources.files("emu").joinpath(f"studies/{path}.toml")))
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(
            f"study file {p}: {exc.strerror or exc} (built-in studies: "
            f"{', '.join(builtin_studies())})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {p} is not TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown study key {unknown[0]} (known: {', '.join(sorted(_KEYS))})")
    level = data.get("level", "sim")
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    events = data.get("events", False)
    if not isinstance(events, bool):
        raise ConfigError(f"events must be true or false, got {events!r}")
    design = data.get("design", "grid")
    if design not in DESIGNS:
        raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    policies = data.get("policies", [])
    if not (isinstance(policies, list) and policies and all(isinstance(x, str) for x in policies)):
        raise ConfigError(f"policies must be a non-empty list of names, got {policies!r}")
    seeds = data.get("seeds", [1])
    if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    base = data.get("base", {})
    if not isinstance(base, dict) or set(base) - {"preset", "scenario", "set"}:
        raise ConfigError(f"base must be a table of preset or scenario, and set, got {base!r}")
    scenario = None
    if "scenario" in base:
        scenario = (p.parent / str(base["scenario"])).resolve()
    axes: list[tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]] = []
    for name, spec in (data.get("axes") or {}).items():
        values = _paths(name, _values(f"axes.{name!r}", spec), p.parent)
        axes.append(((name,), tuple((v,) for v in values)))
    for k, group in enumerate(data.get("zip") or []):
        if not isinstance(group, dict) or len(group) < 2:
            raise ConfigError(f"zip[{k}] must be a table of two or more fields, got {group!r}")
        columns = [
            _paths(name, _values(f"zip[{k}].{name!r}", spec), p.parent)
            for name, spec in group.items()
        ]
        if len({len(c) for c in columns}) != 1:
            sizes = ", ".join(f"{n} {len(c)}" for n, c in zip(group, columns, strict=True))
            raise ConfigError(f"zip[{k}]'s fields must have as many values each, got {sizes}")
        axes.append((tuple(group), tuple(zip(*columns, strict=True))))
    fields = [f for names, _ in axes for f in names]
    twice = sorted({f for f in fields if fields.count(f) > 1})
    if twice:
        raise ConfigError(f"axis field {twice[0]} is swept twice (axes and zip)")
    plots = []
    for k, plot in enumerate(data.get("plots") or []):
        if not (isinstance(plot, dict) and set(plot) == {"x", "y"} and plot["x"] in fields):
            raise ConfigError(
                f"plots[{k}] must be {{x = <an axis field>, y = <a metric>}}, got {plot!r}"
            )
        at = next((names.index(plot["x"]), v) for names, v in axes if plot["x"] in names)
        if any(not isinstance(combo[at[0]], int | float) for combo in at[1]):
            raise ConfigError(
                f"plots[{k}].x {plot['x']!r} takes values that are not numbers: no line can "
                "be drawn against it (its cases are in summary.csv and report.md)"
            )
        plots.append((str(plot["x"]), str(plot["y"])))
    return Study(
        name=str(data.get("name", p.stem)),
        level=level,
        policies=tuple(policies),
        seeds=tuple(seeds),
        preset=base.get("preset"),
        scenario=scenario,
        base_set={
            name: _paths(name, [value], p.parent)[0]
            for name, value in dict(base.get("set") or {}).items()
        },
        axes=tuple(axes),
        plots=tuple(plots),
        design=design,
        events=events,
    )


def _paths(name: str, values: list[Any], folder: Path) -> list[Any]:
    """A file-naming field's values as paths from ``folder`` (absolute ones and "" kept)."""
    if name not in PATH_FIELDS:
        return values
    return [str(folder / v) if isinstance(v, str) and v else v for v in values]


def _case_id(study: Study, sc: Scenario) -> str:
    text = f"{study.level}\n{','.join(study.policies)}\n{scenario_toml(sc)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _field(sc: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        sc = getattr(sc, name, None)
    return sc


def base_point(study: Study) -> dict[str, Any]:
    """Every axis field's value in the base scenario (with ``base.set``)."""
    try:
        sc = load_scenario(study.scenario, preset=study.preset, overrides=study.base_set)
    except ConfigError as exc:
        raise ConfigError(f"the base scenario: {exc}") from None
    return {f: _as_toml(_field(sc, f)) for f in study.fields}


def _as_toml(value: Any) -> Any:
    """A resolved field as a file would give it (a tuple of values as a list)."""
    return [_as_toml(v) for v in value] if isinstance(value, tuple) else value


def points(study: Study) -> list[dict[str, Any]]:
    """The study's points (every axis field's value at each): the cross product of the axes,
    or for ``one-at-a-time`` the base point, then each axis's values with the others at
    the base's (each point once)."""
    if study.design == "grid":
        return [
            {
                name: value
                for (names, _), values in zip(study.axes, combo, strict=True)
                for name, value in zip(names, values, strict=True)
            }
            for combo in itertools.product(*(values for _, values in study.axes))
        ]
    base = base_point(study)
    out = [base]
    for names, values in study.axes:
        for combo in values:
            point = {**base, **dict(zip(names, combo, strict=True))}
            if point not in out:
                out.append(point)
    return out


def expand(study: Study) -> list[Case]:
    """Every case of the study, each scenario built (validated) before any runs."""
    cases: list[Case] = []
    for point in points(study):
        for seed in study.seeds:
            index = len(cases)
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "the base"
            try:
                sc = load_scenario(
                    study.scenario,
                    preset=study.preset,
                    overrides={**study.base_set, **point, "sim.seed": seed},
                )
                system = get_system(sc.deployment.system)
                for policy in study.policies:
                    system.check_policy(policy, where="policies")
            except ConfigError as exc:
                raise ConfigError(f"case {index} ({shown}, seed {seed}): {exc}") from None
            cases.append(Case(index, _case_id(study, sc), point, seed, sc))
    return cases
