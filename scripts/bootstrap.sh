#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine (or a developer's checkout): system packages,
# the virtual environment at .venv/ holding exactly the lock in requirements/, draftnet itself,
# and the embedded model pair. Every step checks before it acts, so a second run costs seconds.
#
# The lock (scripts/lock.py, `make lock`): requirements/cpu.txt plus torch-cpu.txt where there
# is no NVIDIA GPU, requirements/cuda.txt where there is one. Every package comes from it, by
# version and hash, with no dependency resolved here. Where pip cannot find torch's CPU build
# (it is on PyTorch's CPU wheel index, not PyPI), set TORCH_CPU_INDEX to that index.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
PIP_VERSION=26.3 # the installer is pinned too
# System packages the emulation needs: mnexec (Mininet's namespace helper) and ping.
APT_PACKAGES=(mininet iputils-ping)

say() { printf '[bootstrap] %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]]; then
        # Everything but the emulation works without them; its tests skip, and `draftnet run`
        # says what is missing.
        say "not root: skipping apt-get install ${missing[*]} (the emulation needs them)"
        return 0
    fi
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

locks() {
    # The lock files this machine installs, in order.
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo requirements/cuda.txt requirements/model-files.txt
    else
        echo requirements/torch-cpu.txt requirements/cpu.txt requirements/model-files.txt
    fi
}

install_locked() {
    local files stamp want
    read -r -a files <<<"$(locks)"
    stamp="$VENV/.draftnet-locked"
    want="$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        say "draftnet needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)"
        exit 1
    }
    # A new lock gets a new environment: exactly the lock, nothing left from an older one.
    [[ -d $VENV ]] && say "the lock changed: recreating $VENV"
    rm -rf "$VENV"
    say "creating $VENV from ${files[*]}"
    "$PYTHON" -m venv "$VENV"
    local pip=("$VENV/bin/python" -m pip install -q --no-deps --require-hashes)
    "$VENV/bin/python" -m pip install -q "pip==$PIP_VERSION"
    for f in "${files[@]}"; do
        if [[ $f == *torch-cpu.txt && -n ${TORCH_CPU_INDEX:-} ]]; then
            "${pip[@]}" --extra-index-url "$TORCH_CPU_INDEX" -r "$f"
        else
            # llama-cpp-python has no wheel here: pip compiles llama.cpp (about 8 minutes
            # the first time on two cores; pip keeps the built wheel for the next time).
            "${pip[@]}" -r "$f"
        fi
    done
    echo "$want" >"$stamp"
}

install_project() {
    # draftnet itself (editable), built with the lock's setuptools; again when pyproject changes.
    local stamp="$VENV/.draftnet-installed" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && return 0
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    echo "$want" >"$stamp"
}

prepare_models() {
    # The embedded pair, made once per machine into ~/.cache/draftnet (or $DRAFTNET_HOME).
    "$VENV/bin/draftnet" models prepare >&2
}

install_apt
install_locked
install_project
prepare_models
say "ready: $VENV/bin/draftnet"
