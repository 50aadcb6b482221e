"""``draftnet profile``: measure a model on this machine and fit the cost model's latencies.

Layer: emu (orchestration); loads models, writes the profile file.

Drafting is measured per token at a range of prefixes (batch 1: a device drafts for one user):
at each prefix a session starts on a random prompt of that length, then rounds of ``draft_len``
tokens are drafted and rejected, as in a real round (the committed correction is evaluated with
the draft). Verification is measured over a grid of batch sizes, draft lengths and prefixes: a
batch of users is prefilled at the prefix, then verified with random drafts (one untimed pass
first, to warm up). Each point's time is what the backend reports: the wall time of the call for
a real backend (or the modelled time of a synthetic one, which is how the tests check the fit).

The fit is the cost model's affine form, G(b, F) = c b F + beta with the FLOPs of
``draft_flops`` and ``verify_flops`` for the model's shape (read from the GGUF's metadata or
the checkpoint's config.json), fitted by ``emu.planner.fit``. The profile is a TOML file whose
``[users.draft]``/``[users.device]`` (or ``[edge.target]``/``[edge.latency]``) tables a
scenario takes in with ``profiles = ["file.toml"]``; ``[profile]`` records what was measured,
where, and how well the line fits.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tomli_w

from emu.errors import ConfigError
from emu.files import write_atomic
from emu.planner.fit import AffineFit, fit_affine
from emu.planner.model import ModelArch, draft_flops, verify_flops
from nodes.backends import DraftOut, VerifyItem, VerifyOut

__all__ = [
    "DRAFT_GRID",
    "Grid",
    "Sample",
    "measure_draft",
    "measure_verify",
    "profile_draft",
    "profile_target",
]

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Sample:
    batch: int
    tokens: int  # draft tokens per user (1 per drafted token for drafting)
    prefix: int  # tokens before the step (the largest in the batch)
    flops: float  # per user: F_d(prefix) or F_v(tokens, prefix)
    ms: float  # the step's time (per token for drafting)


@dataclass(frozen=True, slots=True)
class Grid:
    batches: tuple[int, ...]
    draft_lens: tuple[int, ...]
    prefixes: tuple[int, ...]
    repeats: int

    def __post_init__(self) -> None:
        for name, xs in (
            ("--batches", self.batches),
            ("--draft-lens", self.draft_lens),
            ("--prefixes", self.prefixes),
        ):
            if not xs or min(xs) < 1:
                raise ConfigError(f"{name} must be integers >= 1, got {list(xs)}")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")


DRAFT_GRID = Grid(batches=(1,), draft_lens=(8,), prefixes=(32, 128, 512, 1024), repeats=4)
VERIFY_GRID = {
    "cpu": Grid(batches=(1, 2, 4, 8), draft_lens=(1, 2, 4, 8), prefixes=(32, 128, 384), repeats=3),
    "cuda": Grid(
        batches=(1, 2, 4, 8, 16, 32),
        draft_lens=(1, 2, 4, 8, 16),
        prefixes=(128, 512, 2048),
        repeats=5,
    ),
}


class _Drafter(Protocol):
    def start(self, prompt: Sequence[int]) -> None: ...
    def draft(self, n: int) -> DraftOut: ...
    def commit(self, accepted: int, token: int) -> None: ...


class _Verifier(Protocol):
    def prefill(self, prompts: dict[int, list[int]]) -> tuple[dict[int, int], float]: ...
    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]: ...
    def drop(self, user: int) -> None: ...


def measure_draft(
    drafter: _Drafter,
    arch: ModelArch,
    grid: Grid,
    *,
    vocab: int,
    rng: np.random.Generator,
    say: Say | None = None,
) -> list[Sample]:
    """Per-token drafting time at each prefix of ``grid`` (``grid.draft_lens[0]`` a round)."""
    n = grid.draft_lens[0]
    out = []
    for prefix in grid.prefixes:
        prompt = rng.integers(0, vocab, size=prefix).tolist()
        drafter.start(prompt)
        warm = drafter.draft(1)  # evaluates the prompt: a prefill, not a draft
        drafter.commit(0, warm.tokens[0] if warm.tokens else 0)
        length = prefix + 1
        for _ in range(grid.repeats):
            d = drafter.draft(n)
            if not d.tokens:
                raise ConfigError(f"--prefixes {prefix} leaves no room to draft in the context")
            drafter.commit(0, int(rng.integers(0, vocab)))
            per_token = d.compute_ms / len(d.tokens)
            out.append(Sample(1, 1, length, float(draft_flops(arch, length)), per_token))
            length += 1
        if say is not None:
            ms = np.median([s.ms for s in out[-grid.repeats :]])
            say(f"draft: prefix {prefix}: {ms:.2f} ms/token")
    return out


def measure_verify(
    verifier: _Verifier,
    arch: ModelArch,
    grid: Grid,
    *,
    vocab: int,
    rng: np.random.Generator,
    say: Say | None = None,
) -> list[Sample]:
    """Batched verification time over the grid (prefix, then batch size, then draft length)."""
    out = []
    for prefix in grid.prefixes:
        for b in grid.batches:
            users = list(range(b))
            prompts = {u: rng.integers(0, vocab, size=prefix).tolist() for u in users}
            verifier.prefill(prompts)
            length = dict.fromkeys(users, prefix + 1)
            _verify_step(verifier, length, grid.draft_lens[0], vocab, rng)  # warm-up, untimed
            for tokens in grid.draft_lens:
                times = []
                for _ in range(grid.repeats):
                    at, ms = _verify_step(verifier, length, tokens, vocab, rng)
                    out.append(Sample(b, tokens, at, float(verify_flops(arch, tokens, at)), ms))
                    times.append(ms)
                if say is not None:
                    say(
                        f"verify: prefix {prefix}, batch {b}, {tokens} tokens: "
                        f"{np.median(times):.1f} ms"
                    )
            for u in users:
                verifier.drop(u)
    return out


def _verify_step(
    verifier: _Verifier,
    length: dict[int, int],
    tokens: int,
    vocab: int,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """One pass of random drafts for every user in ``length`` (their committed lengths,
    updated); the largest prefix verified and the time."""
    items = [
        VerifyItem(user=u, base_len=n, tokens=tuple(rng.integers(0, vocab, size=tokens).tolist()))
        for u, n in length.items()
    ]
    outs, ms = verifier.verify(items)
    for it, o in zip(items, outs, strict=True):
        length[it.user] += o.accepted + 1
    return max(it.base_len for it in items), ms


def fit_samples(samples: Sequence[Sample]) -> AffineFit:
    return fit_affine([s.batch * s.flops for s in samples], [s.ms for s in samples])


def _document(
    role: str,
    *,
    model: Path,
    arch: ModelArch,
    fit: AffineFit,
    samples: Sequence[Sample],
    meta: dict[str, Any],
) -> dict[str, Any]:
    shape = {"name": arch.name, "layers": arch.layers, "hidden": arch.hidden, "ffn": arch.ffn}
    latency = {"c_ms_per_flop": fit.c_ms_per_flop, "beta_ms": fit.beta_ms}
    section = (
        {"users": {"draft": shape, "device": latency}}
        if role == "draft"
        else {"edge": {"target": shape, "latency": latency}}
    )
    return {
        "profile": {
            "role": role,
            "model": str(model.resolve()),
            **meta,
            "host": platform.node(),
            "cpu_count": os.cpu_count() or 1,
            "date": datetime.date.today().isoformat(),
            "fit": asdict(fit),
            "samples": [asdict(s) for s in samples],
        },
        **section,
    }


def write_profile(doc: dict[str, Any], out: Path) -> None:
    head = (
        f"# draftnet profile of {Path(doc['profile']['model']).name} "
        f"({doc['profile']['role']}, {doc['profile']['device']}), {doc['profile']['date']}.\n"
        '# Use it from a scenario: profiles = ["' + out.name + '"]\n'
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, head + tomli_w.dumps(doc))
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} cannot be written: {exc.strerror}") from None


def profile_draft(
    path: Path,
    *,
    threads: int = 1,
    grid: Grid = DRAFT_GRID,
    seed: int = 0,
    say: Say | None = None,
) -> dict[str, Any]:
    """Measure a GGUF drafting on this CPU; the profile document (see ``write_profile``)."""
    from emu.models.embedded import gguf_info
    from nodes.llama_drafter import LlamaDrafter

    info = gguf_info(path)
    need = max(grid.prefixes) + grid.repeats * (max(grid.draft_lens) + 1) + 2
    if need > info.context:
        raise ConfigError(
            f"--prefixes {max(grid.prefixes)} must leave room for the rounds in the draft's "
            f"context of {info.context} tokens"
        )
    drafter = LlamaDrafter(path, n_ctx=need, threads=threads)
    samples = measure_draft(
        drafter, info.arch, grid, vocab=info.vocab, rng=np.random.default_rng(seed), say=say
    )
    fit = fit_samples(samples)
    meta = {"device": "cpu", "threads": threads, "backend": "llama.cpp"}
    return _document("draft", model=path, arch=info.arch, fit=fit, samples=samples, meta=meta)


def profile_target(
    path: Path,
    *,
    device: str = "auto",
    grid: Grid | None = None,
    seed: int = 0,
    say: Say | None = None,
) -> dict[str, Any]:
    """Measure a transformers checkpoint verifying in batches; the profile document."""
    from emu.models.embedded import checkpoint_info
    from nodes.hf_verifier import HFVerifier, pick_device

    info = checkpoint_info(path)
    dev, dtype = pick_device(device)
    grid = grid or VERIFY_GRID["cuda" if dev.startswith("cuda") else "cpu"]
    need = max(grid.prefixes) + (len(grid.draft_lens) * grid.repeats + 1) * (
        max(grid.draft_lens) + 1
    )
    if need > info.context:
        raise ConfigError(
            f"--prefixes {max(grid.prefixes)} must leave room for the rounds in the target's "
            f"context of {info.context} tokens"
        )
    verifier = HFVerifier(path, device=dev)
    samples = measure_verify(
        verifier, info.arch, grid, vocab=info.vocab, rng=np.random.default_rng(seed), say=say
    )
    fit = fit_samples(samples)
    meta = {
        "device": dev,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": "transformers",
        "torch_threads": _torch_threads(),
    }
    return _document("target", model=path, arch=info.arch, fit=fit, samples=samples, meta=meta)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
