"""The layers of ARCHITECTURE.md, checked on the source: pure packages do no I/O, and only
emu/ and topologies/ import Mininet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PURE = [
    "nodes/protocol",
    "nodes/core",
    "emu/planner",
    "channel_models",
    "emu/shaping/schedule.py",
    "emu/errors.py",
]
# What a pure module may not import: I/O, clocks, global randomness, the event loop.
FORBIDDEN = {"trio", "socket", "subprocess", "time", "random", "os", "shutil", "asyncio"}

# The layers from the bottom up (ARCHITECTURE.md, "Layers"): a module may import its own layer
# and the layers below it, never one above. The longest prefix that matches places a module.
LAYERS: list[tuple[str, ...]] = [
    ("emu.errors",),  # the leaf every layer raises
    # pure: the radio model, the planner, the wire, the roles' cores, the shaper's schedule
    ("channel_models", "emu.planner", "nodes.protocol", "nodes.core", "emu.shaping.schedule"),
    ("nodes", "emu.files"),  # the roles' trio shells and model backends; atomic writes
    ("topologies",),  # Mininet Topos
    ("emu.scenario",),  # typed sections and their loader
    ("emu.models", "emu.results"),  # models, profiles and timing; records and reports
    ("emu.deploy", "emu.shaping"),  # what a scenario deploys; link shaping
    ("emu.runners",),  # sim, emulation, channel
    ("emu.sweep", "emu.lab"),  # studies over the runners; lab mode's roles over the nodes
    ("emu.cli", "scripts"),  # entry points
]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources() -> list[Path]:
    tops = ("emu", "nodes", "topologies", "channel_models", "scripts")
    files = [f for top in tops for f in sorted((ROOT / top).rglob("*.py"))]
    return [f for f in files if f != ROOT / "emu" / "__init__.py"]  # a docstring, no code


def _placed(module: str) -> int:
    """A module's layer; the most specific prefix wins (``emu.shaping.schedule`` is pure)."""
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), rank)
    assert best is not None, f"{module} is in no layer of tests/test_layers.py"
    return best[1]


def test_every_module_has_a_layer() -> None:
    for f in _sources():
        _placed(_module(f))


def test_every_import_points_downward() -> None:
    wrong = []
    for f in _sources():
        here = _placed(_module(f))
        for name in _imports(f):
            if name.split(".")[0] not in {"emu", "nodes", "topologies", "channel_models"}:
                continue
            there = _placed(name)
            if there > here:
                wrong.append(f"{_module(f)} (layer {here}) imports {name} (layer {there})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    root = ROOT / package
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    assert files
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{f.relative_to(ROOT)} imports {name}"
            assert top not in {"emu", "nodes"} or _placed(name) <= 1, (
                f"{f.relative_to(ROOT)} imports {name}, which is not pure"
            )


def test_only_emu_and_topologies_import_mininet() -> None:
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        if rel.parts[0] in {"emu", "topologies", ".venv", "tests"} or "site-packages" in rel.parts:
            continue
        assert not any(n.split(".")[0] == "mininet" for n in _imports(f)), f"{rel} imports mininet"
