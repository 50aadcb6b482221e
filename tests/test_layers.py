"""The layers of ARCHITECTURE.md, checked on the source: pure packages do no I/O, and only
emu/ and topologies/ import Mininet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PURE = ["nodes/protocol", "emu/planner", "channel_models"]
# What a pure module may not import: I/O, clocks, global randomness, the event loop.
FORBIDDEN = {"trio", "socket", "subprocess", "time", "random", "os", "shutil", "asyncio"}
ALLOWED_EMU = {"emu.errors", "emu.planner"}  # the leaf error module; the planner is pure too


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for f in files:
        for name in _imports(f):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{f.relative_to(ROOT)} imports {name}"
            if top == "emu":
                assert any(name.startswith(a) for a in ALLOWED_EMU), (
                    f"{f.relative_to(ROOT)} imports {name}"
                )
            assert top not in {"nodes"} or package.startswith("nodes"), (
                f"{f.relative_to(ROOT)} imports {name}"
            )


def test_only_emu_and_topologies_import_mininet() -> None:
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT)
        if rel.parts[0] in {"emu", "topologies", ".venv", "tests"} or "site-packages" in rel.parts:
            continue
        assert not any(n.split(".")[0] == "mininet" for n in _imports(f)), f"{rel} imports mininet"
