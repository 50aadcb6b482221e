"""The dependency locks are in step with pyproject.toml (scripts/lock.py --check, offline)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lock_module(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("draftnet_lock", ROOT / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ROOT, module.LOCKS = root, root / "requirements"
    return module


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def test_the_committed_locks_are_in_step_with_pyproject() -> None:
    assert _lock_module(ROOT).check() == []


def test_every_declared_requirement_is_pinned_in_each_lock() -> None:
    lock = _lock_module(ROOT)
    cpu = lock.pins((ROOT / "requirements/cpu.txt").read_text())
    cpu |= lock.pins((ROOT / "requirements/torch-cpu.txt").read_text())
    cuda = lock.pins((ROOT / "requirements/cuda.txt").read_text())
    for req in lock.requirements():
        for pinned in (cpu, cuda):
            assert req.specifier.contains(pinned[lock.canonicalize_name(req.name)], True), req
    assert str(cpu["torch"]).endswith("+cpu") and "+" not in str(cuda["torch"])
    assert not any(name.startswith("nvidia-") for name in cpu)  # no CUDA on the CPU lock


def test_a_dependency_added_without_relocking_fails_the_check(copy: Path) -> None:
    py = copy / "pyproject.toml"
    py.write_text(py.read_text().replace('"rich>=13",', '"rich>=13",\n    "pyyaml>=6",', 1))
    problems = _lock_module(copy).check()
    assert any("make lock" in p for p in problems)


def test_a_bound_that_excludes_the_pinned_version_fails_the_check(copy: Path) -> None:
    py = copy / "pyproject.toml"
    py.write_text(py.read_text().replace('"numpy>=1.26,<3"', '"numpy>=1.26,<2"', 1))
    problems = _lock_module(copy).check()
    assert any("numpy" in p and "outside" in p for p in problems)


def test_a_missing_lock_fails_the_check(copy: Path) -> None:
    (copy / "requirements" / "cuda.txt").unlink()
    assert any("cuda.txt is missing" in p for p in _lock_module(copy).check())


def test_the_check_runs_as_ci_runs_it() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
