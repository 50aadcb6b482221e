"""Scenario files: one loader from TOML (plus presets, profiles and overrides) to the typed
sections of ``emu.scenario.sections``.

Layer: emu (orchestration); reads files.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emu.errors import ConfigError
from emu.scenario.sections import PRESETS, Scenario

__all__ = ["load_scenario", "scenario_toml"]


def _preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    text = resources.files("emu").joinpath(f"presets/{name}.toml").read_text()
    return tomllib.loads(text)


def _read_toml(p: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from exc


# What a profile (``draftnet profile``) may set: the shape and latency of what it measured.
_PROFILE_TABLES = {"users": {"draft", "device"}, "edge": {"target", "latency"}}


def _profile(p: Path) -> dict[str, Any]:
    """A profile's scenario tables (its ``[profile]`` record is for people, not the run)."""
    data = _read_toml(p, "profile")
    data.pop("profile", None)
    for head, sub in data.items():
        allowed = _PROFILE_TABLES.get(head, set())
        extra = set(sub) - allowed if isinstance(sub, dict) else {"?"}
        if not allowed or extra:
            raise ConfigError(
                f"profile {str(p)!r} may only set users.draft, users.device, edge.target and "
                f"edge.latency, got {head}.{sorted(extra)[0] if allowed else ''}".rstrip(".")
            )
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return _build(typing.cast(type, tp), value, where)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} must be of type {tp.__name__}, got {value!r}")


# Fields that were renamed: the old name, and what to write instead.
_RENAMED = {
    "radio.cells": "radio.sites (a layout's sites; radio.sectors = 3 for three cells a site)",
}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            if where in _RENAMED:
                raise ConfigError(f"{where} is now {_RENAMED[where]}, got {where} = {value!r}")
            raise ConfigError(f"unknown field {where} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{prefix}.{f.name} is required")
    return cls(**kwargs)


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    node = data
    for k, h in enumerate(heads):
        node = node.setdefault(h, {})
        if not isinstance(node, dict):
            where = ".".join(heads[: k + 1])
            raise ConfigError(f"{path}: {where} is a value, not a table, so it has no fields")
    node[last] = value


def load_scenario(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Scenario:
    """Load a scenario: the default, then a preset, then the file, then dotted-path overrides.

    An override ``users.X`` also clears X from every per-user entry: a flag means every user.
    """
    data: dict[str, Any] = {}
    here = Path.cwd()
    if path is not None:
        data = _read_toml(Path(path), "scenario file")
        here = Path(path).parent
    base = _preset("default")
    flagged_preset = (overrides or {}).get("preset")  # --set preset=NAME chooses it too
    chosen = next((p for p in (preset, flagged_preset) if p is not None), data.get("preset", ""))
    if not isinstance(chosen, str):
        raise ConfigError(f"preset must be a string, got {chosen!r}")
    if chosen and chosen != "default":
        base = _merge(base, _preset(chosen))
    flagged = (overrides or {}).get("profiles")
    profiles = flagged or data.get("profiles", [])
    if not isinstance(profiles, list) or not all(isinstance(x, str) for x in profiles):
        raise ConfigError(f"profiles must be a list of file names, got {profiles!r}")
    for name in profiles:
        # A flag's profile is relative to the working directory, a file's to the file.
        where = Path(name) if flagged else here / name
        base = _merge(base, _profile(where))
    merged = _merge(base, data)
    if chosen:
        merged["preset"] = chosen
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        _set_path(merged, dotted, value)
        head, _, leaf = dotted.partition(".")
        if head == "users" and "." not in leaf:
            for entry in merged.get("users", {}).get("each", []):
                if isinstance(entry, dict):
                    entry.pop(leaf, None)
    scenario: Scenario = _build(Scenario, merged, "")
    return scenario


def scenario_toml(sc: Scenario) -> str:
    """The resolved scenario as TOML (what every run directory keeps)."""
    import tomli_w

    data: dict[str, Any] = _plain(sc)
    return tomli_w.dumps(data)


def _plain(obj: Any) -> Any:
    """A scenario as TOML-ready data (the resolved scenario of a run)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _plain(getattr(obj, f.name))
            for f in fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    return obj
