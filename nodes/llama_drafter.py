"""Draft backend on llama.cpp (llama-cpp-python): a GGUF model on the user's device.

Layer: nodes. One session at a time, as on a phone. The KV cache is kept across rounds: a round
evaluates only the tokens committed since the last one (normally the edge's correction or bonus
token) and the draft itself; after a verdict the rejected tokens are rolled back by truncating
the cache (llama.cpp drops every cached position past ``n_tokens`` on the next evaluation).

Greedy drafting takes the argmax. Sampled drafting (``temperature > 0``) samples from the
softmax truncated to the ``top_k`` most likely tokens and reports that distribution as the
sparse draft probabilities, so the edge's speculative sampling knows q exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from emu.errors import ConfigError
from nodes.backends import DraftOut

__all__ = ["LlamaDrafter"]


class LlamaDrafter:
    """``DraftBackend`` on a GGUF file. ``latency(tokens, prefix)`` [ms], if given, is the time
    a draft stands for (a device profile); otherwise the measured wall time is reported.

    ``extra_buffers`` enables llama.cpp's repacked weight buffers (AMX, AVX-512 repacking). They
    are off by default: on the project's build machines (AMX_INT8 CPUs) every multi-token
    decode with them segfaults in ggml's AMX matmul (ggml-org/llama.cpp#20824).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        threads: int = 1,
        temperature: float = 0.0,
        top_k: int = 8,
        seed: int = 0,
        latency: Callable[[int, int], float] | None = None,
        extra_buffers: bool = False,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(f"draft model {str(path)!r} must be a readable GGUF file")
        if temperature < 0:
            raise ConfigError(f"draft temperature must be >= 0, got {temperature!r}")
        if top_k < 1:
            raise ConfigError(f"draft top_k must be >= 1, got {top_k!r}")
        try:
            with _model_params(extra_buffers=extra_buffers):
                from llama_cpp import Llama

                self.llm: Any = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_batch=512,
                    seed=seed,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"draft model {str(path)!r} could not be loaded: {exc}") from None
        self.n_vocab = int(self.llm.n_vocab())
        self.n_ctx = int(self.llm.n_ctx())
        self.temperature = temperature
        self.top_k = top_k
        self.rng = np.random.default_rng(seed)
        self.latency = latency
        self.seq: list[int] = []  # committed tokens of the session
        self._cached = 0  # tokens of ``seq`` (then of the draft) whose K/V are in the cache
        self._draft: tuple[int, ...] = ()

    def start(self, prompt: Sequence[int]) -> None:
        if len(prompt) + 1 >= self.n_ctx:
            raise ConfigError(
                f"prompt of {len(prompt)} tokens must be shorter than the draft context "
                f"({self.n_ctx} tokens)"
            )
        self.llm.reset()
        self.seq = [int(t) for t in prompt]
        self._cached = 0
        self._draft = ()

    def _eval(self, tokens: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Append ``tokens`` after the first ``_cached`` cached tokens; the last one's logits."""
        self.llm.n_tokens = self._cached  # roll back: eval drops every position past this
        self.llm.eval(list(tokens))
        self._cached += len(tokens)
        ptr = self.llm._ctx.get_logits()
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def draft(self, n: int) -> DraftOut:
        t0 = time.perf_counter()
        room = self.n_ctx - len(self.seq) - 1
        n = max(0, min(n, room))
        logits = self._eval(self.seq[self._cached :])
        tokens: list[int] = []
        top_ids: list[tuple[int, ...]] = []
        top_probs: list[tuple[float, ...]] = []
        for i in range(n):
            if self.temperature == 0:
                x = int(np.argmax(logits))
            else:
                ids, probs = _top_k(logits, self.temperature, self.top_k)
                x = int(ids[self.rng.choice(ids.size, p=probs)])
                top_ids.append(tuple(int(t) for t in ids))
                top_probs.append(tuple(float(p) for p in probs))
            tokens.append(x)
            if i < n - 1:
                logits = self._eval([x])
        self._draft = tuple(tokens)
        wall = (time.perf_counter() - t0) * 1000.0
        ms = self.latency(n, len(self.seq)) if self.latency is not None else wall
        return DraftOut(
            tokens=self._draft,
            compute_ms=ms,
            top_ids=tuple(top_ids),
            top_probs=tuple(top_probs),
        )

    def commit(self, accepted: int, token: int) -> None:
        keep = self._draft[:accepted]
        # The cache holds seq and the draft but its last token; keep what was accepted of it.
        self._cached = min(self._cached, len(self.seq) + accepted)
        self.seq.extend(keep)
        self.seq.append(int(token))
        self._draft = ()


@contextmanager
def _model_params(*, extra_buffers: bool) -> Iterator[None]:
    """llama-cpp-python builds its model parameters from llama.cpp's defaults inside
    ``Llama.__init__`` and does not expose ``use_extra_bufts``: set it for one construction."""
    import llama_cpp.llama_cpp as lib

    with _PARAMS_LOCK:
        default = lib.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = extra_buffers
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = default


_PARAMS_LOCK = threading.Lock()


def _top_k(
    logits: np.ndarray[Any, np.dtype[np.float32]], temperature: float, k: int
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """The k most likely ids at ``temperature`` and their renormalised probabilities."""
    z = logits.astype(np.float64) / temperature
    k = min(k, z.size)
    ids = np.argpartition(-z, k - 1)[:k]
    ids = ids[np.argsort(-z[ids], kind="stable")]
    w = np.exp(z[ids] - z[ids].max())
    return ids.astype(np.int64), w / w.sum()
