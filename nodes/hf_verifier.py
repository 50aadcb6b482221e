"""Verify backend on transformers: the target model at the edge, many users per forward pass.

Layer: nodes. Each user's KV cache is kept across rounds (its prefix is never recomputed). A
batch of users with different cached lengths and draft lengths is verified in ONE forward pass:
the caches are left-padded to the longest, the new tokens (the tokens committed since the
user's last pass, then its draft) are right-padded to the longest, the attention mask hides
both paddings, and position ids continue each user's own sequence. After the verdict each
user keeps the cache of what it committed and drops the rejected tokens' entries.

Greedy verification accepts the longest prefix of the draft that equals the target's argmax and
appends the target's next argmax (the correction, or the bonus after a full acceptance): the
committed stream is the target's own greedy decoding. Stochastic verification
(``temperature > 0``) is speculative sampling: draft token x is accepted with probability
min(1, p(x) / q(x)); on a rejection the correction is drawn from norm(max(0, p - q)); q is the
draft's sparse distribution (a greedy draft is a point mass). It preserves the target's
sampling distribution at that temperature.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emu.errors import ConfigError
from nodes.backends import VerifyItem, VerifyOut

__all__ = ["HFBatchVerifier", "HFVerifier", "cache_kwarg", "pick_device"]


def pick_device(device: str = "auto") -> tuple[str, Any]:
    """The torch device and dtype: bf16 on CUDA, fp32 on the CPU; ConfigError for a CUDA
    device where there is none."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} must be available: this machine has no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


@dataclass(slots=True)
class _Session:
    ids: list[int]  # committed tokens
    kv: list[tuple[Any, Any]] = field(default_factory=list)  # per layer (heads, cached, dim)

    @property
    def cached(self) -> int:
        return 0 if not self.kv else int(self.kv[0][0].shape[1])


class HFVerifier:
    """``VerifyBackend`` on a transformers causal LM checkpoint directory.

    ``latency(batch, tokens, prefix)`` [ms], if given, is the time a pass stands for (an edge
    profile); otherwise the measured wall time is reported. A prefill pass stands for
    ``latency(batch, longest prompt, 0)``, or no time at all with ``prefill_free`` (the prompts
    were already in the cache: the cost model's steady state).
    """

    def __init__(
        self,
        target_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        threads: int | None = None,
        latency: Callable[[int, int, int], float] | None = None,
        prefill_free: bool = False,
    ) -> None:
        path = Path(target_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"target model {str(path)!r} must be a transformers checkpoint directory "
                "(with config.json)"
            )
        if temperature < 0:
            raise ConfigError(f"verify temperature must be >= 0, got {temperature!r}")
        import torch
        import transformers.utils.logging
        from transformers import AutoModelForCausalLM

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device, auto_dtype = pick_device(device)
        self.dtype = getattr(torch, dtype) if dtype else auto_dtype
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"target model {str(path)!r} could not be loaded: {exc}") from None
        self.model: Any = model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        cfg = self.model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        pad = getattr(cfg, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        self.temperature = temperature
        self.rng = np.random.default_rng(seed)
        self.latency = latency
        self.prefill_free = prefill_free
        self.sessions: dict[int, _Session] = {}
        self._cache_kwarg = cache_kwarg(self.model)

    # --- the VerifyBackend interface --------------------------------------------------------
    def prefill(self, prompts: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        if not prompts:
            return {}, 0.0
        for user, prompt in prompts.items():
            if not 0 < len(prompt) < self.max_positions:
                raise ConfigError(
                    f"prompt of user {user} has {len(prompt)} tokens; it must have 1 to "
                    f"{self.max_positions - 1} (the target's context)"
                )
            self.sessions[user] = _Session(ids=[int(t) for t in prompt])
        items = [VerifyItem(user=u, base_len=len(p), tokens=()) for u, p in prompts.items()]
        outs, wall = self._verify(items)
        first = {it.user: o.token for it, o in zip(items, outs, strict=True)}
        if self.prefill_free:
            return first, 0.0
        if self.latency is None:
            return first, wall
        return first, self.latency(len(items), max(len(p) for p in prompts.values()), 0)

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        if not batch:
            return [], 0.0
        outs, wall = self._verify(batch)
        if self.latency is None:
            return outs, wall
        L = max(1, *(len(it.tokens) for it in batch))
        I = max(it.base_len for it in batch)  # the prefix before this pass
        return outs, self.latency(len(batch), L, I)

    def drop(self, user: int) -> None:
        self.sessions.pop(user, None)

    def open(self, user: int, prompt: Sequence[int]) -> None:
        """A session whose prompt the next pass prefills together with its first draft."""
        if not 0 < len(prompt) < self.max_positions:
            raise ConfigError(
                f"prompt of user {user} has {len(prompt)} tokens; it must have 1 to "
                f"{self.max_positions - 1} (the target's context)"
            )
        self.sessions[user] = _Session(ids=[int(t) for t in prompt])

    # --- internals ----------------------------------------------------------------------------
    def _verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        """The pass and the verdicts; the wall time it took [ms]."""
        t0 = time.perf_counter()
        sessions = [self.sessions[it.user] for it in batch]
        for it, s in zip(batch, sessions, strict=True):
            if it.base_len != len(s.ids):
                raise ValueError(
                    f"user {it.user}: draft at base {it.base_len}, committed {len(s.ids)}"
                )
        past = [s.cached for s in sessions]
        P = max(past)
        logits, kv = self._forward(sessions, [list(it.tokens) for it in batch])
        outs = []
        for b, (it, s) in enumerate(zip(batch, sessions, strict=True)):
            pending = len(s.ids) - past[b]
            rows = logits[b, pending - 1 : pending + len(it.tokens)]
            accepted, token = self._decide(rows, it)
            # Keep the cache of the pending tokens and the accepted draft: the user's past
            # sits left-padded in [P - past, P), its new tokens from P on.
            start, keep = P - past[b], past[b] + pending + accepted
            s.kv = [
                (k[b, :, start : start + keep].clone(), v[b, :, start : start + keep].clone())
                for k, v in kv
            ]
            s.ids.extend(int(t) for t in it.tokens[:accepted])
            s.ids.append(token)
            outs.append(VerifyOut(accepted=accepted, token=token))
        return outs, (time.perf_counter() - t0) * 1000.0

    def _forward(
        self, sessions: list[_Session], drafts: list[list[int]]
    ) -> tuple[Any, list[tuple[Any, Any]]]:
        """One pass over every session's pending tokens and draft; logits (float32, on the
        CPU) and the batch's cache (left-padded past, then the new tokens)."""
        torch = self.torch
        from transformers import DynamicCache

        B = len(sessions)
        past = [s.cached for s in sessions]
        new = [s.ids[s.cached :] + d for s, d in zip(sessions, drafts, strict=True)]
        P, L = max(past), max(len(x) for x in new)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        for b, (c, x) in enumerate(zip(past, new, strict=True)):
            ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
            pos[b] = c + torch.arange(L)
        layers = []
        if P > 0:
            ref = next(s for s in sessions if s.kv).kv
            for layer, (k0, v0) in enumerate(ref):
                k = k0.new_zeros((B, k0.shape[0], P, k0.shape[2]))
                v = v0.new_zeros((B, v0.shape[0], P, v0.shape[2]))
                for b, s in enumerate(sessions):
                    if s.kv:
                        k[b, :, P - s.cached :] = s.kv[layer][0]
                        v[b, :, P - s.cached :] = s.kv[layer][1]
                layers.append((k, v))
        # The cache is updated in place: after the pass it holds the past and the new tokens.
        cache: Any = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        dev = self.device
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(dev),
                attention_mask=_padded_causal_mask(past, new, P, L, self.dtype).to(dev),
                position_ids=pos.to(dev),
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return out.logits.float().cpu(), kv

    def _decide(self, rows: Any, it: VerifyItem) -> tuple[int, int]:
        """Accepted count and the next token, from the target's logits at the draft's
        positions (row j predicts draft token j; the last row predicts the bonus)."""
        n = len(it.tokens)
        if self.temperature == 0:
            best = rows.argmax(dim=-1).tolist()
            k = 0
            while k < n and it.tokens[k] == best[k]:
                k += 1
            return k, int(best[k])
        p_all = self.torch.softmax(rows.double() / self.temperature, dim=-1).numpy()
        for j, x in enumerate(it.tokens):
            p = p_all[j]
            q = self._draft_dist(it, j)
            qx = q.get(x, 0.0)
            if qx <= 0 or self.rng.random() >= min(1.0, p[x] / qx):
                resid = p.copy()
                for t, qt in q.items():
                    resid[t] = max(0.0, resid[t] - qt)
                total = resid.sum()
                resid = resid / total if total > 0 else p
                return j, int(self.rng.choice(resid.size, p=resid))
        return n, int(self.rng.choice(p_all[n].size, p=p_all[n]))

    @staticmethod
    def _draft_dist(it: VerifyItem, j: int) -> dict[int, float]:
        """q at draft position j: the sparse probabilities sent with the draft, else a point
        mass on the drafted token (greedy drafting)."""
        if j < len(it.top_ids) and it.top_ids[j]:
            return {int(t): float(p) for t, p in zip(it.top_ids[j], it.top_probs[j], strict=True)}
        return {int(it.tokens[j]): 1.0}


def cache_kwarg(model: Any) -> str:
    """The name under which this transformers version's forward takes the KV cache: ``cache``
    from 5.24 on (``past_key_values`` is deprecated there, and slow: 3.7-7.1 s a pass of the
    embedded target against 0.04-0.15 s), ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _padded_causal_mask(past: list[int], new: list[list[int]], P: int, L: int, dtype: Any) -> Any:
    """The 4D additive attention mask (B, 1, L, P + L) of one ragged pass, made here rather
    than by transformers (whose mask code changes between versions and reads the position ids
    as a packed batch): query j of row b sees that row's own past, left-padded in
    [P - past_b, P), and its new tokens up to itself, [P, P + j]; everything else is masked."""
    import torch

    key = torch.arange(P + L)
    query = torch.arange(L)
    own_past = (key[None, :] >= P - torch.tensor(past)[:, None]) & (key[None, :] < P)  # (B, P+L)
    causal_new = (key[None, :] >= P) & (key[None, :] <= P + query[:, None])  # (L, P+L)
    n_new = torch.tensor([len(x) for x in new])
    real_query = query[None, :] < n_new[:, None]  # (B, L)
    allowed = (own_past[:, None, :] | causal_new[None, :, :]) & real_query[:, :, None]
    # A padding query sees only itself (a row with nothing to see would be all -inf: NaN).
    allowed |= (~real_query)[:, :, None] & (key[None, None, :] == P + query[None, :, None])
    mask = torch.zeros((len(past), 1, L, P + L), dtype=dtype)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class HFBatchVerifier:
    """``BatchVerifier`` (``nodes.batched``, the heterogeneous edge's macro cell) on an
    ``HFVerifier``: a task is a user; round 1 prefills each prompt in the same pass as its
    first draft; the target alone prefills (its first token) then decodes a token a pass.
    ``verify_time(n, kv_len, length, prefill)`` and ``prefill_time(n, prompt)`` [ms], if
    given, are the times a pass stands for (the macro cell's compute model); otherwise the
    measured wall time is reported."""

    def __init__(
        self,
        verifier: HFVerifier,
        *,
        verify_time: Callable[[int, int, int, int], float] | None = None,
        prefill_time: Callable[[int, int], float] | None = None,
    ) -> None:
        self.v = verifier
        self.verify_time = verify_time
        self.prefill_time = prefill_time

    def verify(
        self,
        batch: int,
        round: int,
        tasks: Sequence[int],
        contexts: Sequence[Sequence[int]],
        drafts: Sequence[Sequence[int]],
        *,
        prompt_len: int,
    ) -> tuple[list[int], list[tuple[int, ...]], float]:
        if round == 1:
            for k, ctx in zip(tasks, contexts, strict=True):
                self.v.open(k, ctx)
        items = [
            VerifyItem(user=k, base_len=len(ctx), tokens=tuple(d))
            for k, ctx, d in zip(tasks, contexts, drafts, strict=True)
        ]
        outs, wall = self.v._verify(items)
        ms = wall
        if self.verify_time is not None:
            kv = max(len(c) for c in contexts)
            ms = self.verify_time(len(tasks), kv, len(drafts[0]), prompt_len)
        return [o.accepted for o in outs], [(o.token,) for o in outs], ms

    def prefill(
        self, tasks: Sequence[int], contexts: Sequence[Sequence[int]]
    ) -> tuple[list[tuple[int, ...]], float]:
        first, wall = self.v.prefill(dict(zip(tasks, contexts, strict=True)))
        ms = wall
        if self.prefill_time is not None:
            ms = self.prefill_time(len(tasks), max(len(c) for c in contexts))
        return [(first[k],) for k in tasks], ms

    def forget(self, tasks: Sequence[int]) -> None:
        for k in tasks:
            self.v.drop(k)

    def decode(
        self, tasks: Sequence[int], contexts: Sequence[Sequence[int]]
    ) -> tuple[list[int], float]:
        items = [
            VerifyItem(user=k, base_len=len(c), tokens=())
            for k, c in zip(tasks, contexts, strict=True)
        ]
        outs, wall = self.v._verify(items)
        ms = wall
        if self.verify_time is not None:
            ms = self.verify_time(len(tasks), max(len(c) for c in contexts), 0, 0)
        return [o.token for o in outs], ms
