"""Batched drafting on llama.cpp: one GGUF model drafting for a batch of tasks, each draft step
one ``llama_decode`` over every task of the batch (the small cell's server, hetnet).

Layer: nodes. It speaks llama.cpp's C API through llama-cpp-python's bindings: one context whose
KV cache holds a sequence per task (``n_seq_max`` of them, the cache unified), a
``llama_batch`` that carries each task's new tokens with its own positions and sequence id, and
``llama_memory_seq_rm`` to drop a sequence's rejected drafts. A step evaluates, for every task,
the tokens committed since its last step, then each draft token in turn; greedy drafting (the
argmax), so the macro cell's greedy verification makes the output the target's own.

``latency(n, kv_len, length)`` [ms], if given, is the time a draft of ``length`` tokens for
``n`` tasks stands for (the small cell's compute model); otherwise the wall time is reported.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emu.errors import ConfigError

__all__ = ["LlamaBatchDrafter"]


class LlamaBatchDrafter:
    """``BatchDrafter`` (``nodes.batched``) on a GGUF file, for up to ``max_tasks`` tasks at
    once, each with a context of ``n_ctx`` tokens."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_tasks: int,
        n_ctx: int = 2048,
        threads: int = 1,
        latency: Callable[[int, int, int], float] | None = None,
        prefill_latency: Callable[[int, int], float] | None = None,
    ) -> None:
        import llama_cpp as lib

        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(f"draft model {str(path)!r} must be a readable GGUF file")
        if max_tasks < 1:
            raise ConfigError(f"a batched drafter needs max_tasks >= 1, got {max_tasks}")
        from llama_cpp._logger import set_verbose

        self.lib = lib
        set_verbose(False)  # llama.cpp's own log, as Llama(verbose=False) has it
        lib.llama_backend_init()
        mp = lib.llama_model_default_params()
        mp.use_extra_bufts = False  # see nodes.llama_drafter: AMX repacking segfaults here
        self.model = lib.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ConfigError(f"draft model {str(path)!r} could not be loaded")
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx * max_tasks
        cp.n_batch = cp.n_ubatch = 512
        cp.n_seq_max = max_tasks
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise ConfigError(f"draft model {str(path)!r}: no context for {max_tasks} tasks")
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model)))
        self.n_batch = 512
        self.max_tasks = max_tasks
        self.n_ctx = n_ctx
        self.latency = latency
        self.prefill_latency = prefill_latency
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._mem = lib.llama_get_memory(self.ctx)
        self._seq: dict[int, int] = {}  # task -> its sequence id in the cache
        self._cached: dict[int, list[int]] = {}  # task -> the tokens its sequence holds

    def close(self) -> None:
        lib = self.lib
        if self.ctx:
            lib.llama_batch_free(self._batch)
            lib.llama_free(self.ctx)
            lib.llama_model_free(self.model)
            self.ctx = self.model = None

    def reset(self) -> None:
        """Forget every task (a new run)."""
        self.lib.llama_memory_clear(self._mem, True)
        self._seq.clear()
        self._cached.clear()

    # --- the BatchDrafter interface ----------------------------------------------------------
    def prefill(self, tasks: Sequence[int], contexts: Sequence[Sequence[int]]) -> float:
        """Take the tasks (freeing the sequences of tasks no longer held) and evaluate each
        prompt but its last token (the first draft step evaluates that one)."""
        t0 = time.perf_counter()
        self._take(tasks)
        for k, ctx in zip(tasks, contexts, strict=True):
            if len(ctx) + 1 >= self.n_ctx:
                raise ConfigError(
                    f"task {k}'s prompt of {len(ctx)} tokens must be shorter than the draft "
                    f"context ({self.n_ctx} tokens)"
                )
        self._eval([(k, list(ctx[:-1])) for k, ctx in zip(tasks, contexts, strict=True)])
        wall = (time.perf_counter() - t0) * 1000.0
        if self.prefill_latency is not None:
            return self.prefill_latency(len(tasks), max(len(c) for c in contexts))
        return wall

    def draft(
        self, tasks: Sequence[int], contexts: Sequence[Sequence[int]], length: int
    ) -> tuple[list[tuple[int, ...]], float]:
        t0 = time.perf_counter()
        self._take(tasks)  # a task evicted by other batches' starts its sequence again
        pending = []
        for k, ctx in zip(tasks, contexts, strict=True):
            have = self._cached[k]
            common = _common_prefix(have, ctx)
            common = min(common, len(ctx) - 1)  # the last committed token is evaluated again
            self._rollback(k, common)
            pending.append((k, list(ctx[common:])))
        drafts: list[list[int]] = [[] for _ in tasks]
        logits = self._eval(pending, want_logits=True)
        for step in range(length):
            for i in range(len(tasks)):
                drafts[i].append(int(np.argmax(logits[i])))
            if step < length - 1:
                logits = self._eval(
                    [(k, [drafts[i][-1]]) for i, k in enumerate(tasks)], want_logits=True
                )
        wall = (time.perf_counter() - t0) * 1000.0
        ms = wall
        if self.latency is not None:
            ms = self.latency(len(tasks), max(len(c) for c in contexts), length)
        return [tuple(d) for d in drafts], ms

    # --- internals ---------------------------------------------------------------------------
    def _take(self, tasks: Sequence[int]) -> None:
        """Sequences for ``tasks``; a task held before keeps its own, the others are freed
        when there are not enough left."""
        free = [s for s in range(self.max_tasks) if s not in self._seq.values()]
        for k in tasks:
            if k in self._seq:
                continue
            if not free:  # evict tasks of batches that are over
                gone = next(t for t in self._seq if t not in tasks)
                self._rollback(gone, 0)
                free.append(self._seq.pop(gone))
                del self._cached[gone]
            self._seq[k] = free.pop(0)
            self._cached[k] = []
            self.lib.llama_memory_seq_rm(self._mem, self._seq[k], 0, -1)

    def _rollback(self, task: int, keep: int) -> None:
        if len(self._cached[task]) > keep:
            self.lib.llama_memory_seq_rm(self._mem, self._seq[task], keep, -1)
            del self._cached[task][keep:]

    def _eval(
        self, work: list[tuple[int, list[int]]], *, want_logits: bool = False
    ) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
        """Append each task's tokens to its sequence, in as few decodes as the batch allows;
        with ``want_logits``, each task's logits after its last token."""
        lib, b = self.lib, self._batch
        items = [(i, k, t, pos) for i, (k, toks) in enumerate(work)
                 for pos, t in enumerate(toks, start=len(self._cached[k]))]  # fmt: skip
        last = {i: len(toks) - 1 for i, (_, toks) in enumerate(work)}
        out: list[Any] = [None] * len(work)
        for start in range(0, len(items), self.n_batch):
            chunk = items[start : start + self.n_batch]
            b.n_tokens = len(chunk)
            where: dict[int, int] = {}
            for j, (i, k, t, pos) in enumerate(chunk):
                b.token[j] = t
                b.pos[j] = pos
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = self._seq[k]
                is_last = want_logits and pos - len(self._cached[k]) == last[i]
                b.logits[j] = is_last
                if is_last:
                    where[i] = j
            if lib.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
            for i, j in where.items():
                ptr = lib.llama_get_logits_ith(self.ctx, j)
                out[i] = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
                ).copy()
        for k, toks in work:
            self._cached[k].extend(toks)
        return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
