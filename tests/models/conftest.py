"""Real models: the embedded pair, prepared once per machine and cached (session-scoped)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from emu.models.embedded import EmbeddedPair, builtin_prompts, prepare, prompt_ids
from nodes.hf_verifier import HFVerifier


@pytest.fixture(scope="session")
def pair() -> EmbeddedPair:
    return prepare(say=lambda _line: None)


@pytest.fixture(scope="session")
def prompts(pair: EmbeddedPair) -> list[list[int]]:
    """Four built-in prompts of different kinds and lengths, as token ids."""
    chosen = builtin_prompts()[::11][:4]
    return prompt_ids(pair.target, chosen)


@pytest.fixture(scope="session")
def verifier(pair: EmbeddedPair) -> HFVerifier:
    return HFVerifier(pair.target, device="cpu")
