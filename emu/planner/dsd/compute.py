"""What DSD's servers' work costs, and the switches that restore the authors' simulator where
it differs from draftnet's corrected model (dsd.md sections 3.3 and 8).

Layer: pure (emu.planner).

**Compute** (draftnet's ``affine`` provider): a pass over jobs costs ``base_ms + per_token_ms x
(the tokens it processes) + per_context_ms x (the contexts it reads)`` for its model on its
GPU. A verification processes each job's drafts plus the bonus position; a prefill its prompt.
**From a profile** (``FlopCompute``): a model ``draftnet profile`` measured costs ``beta_ms +
c_ms_per_flop x`` its FLOPs, the cost model's form (``emu.planner.model``): a job's F_v(tokens,
context) in a verifier's pass (a prefill is its prompt's tokens at context 0), F_d(context) a
drafted token.
A drafter drafts ``gamma`` tokens in ``gamma`` passes (``sequential``); the authors' simulator
priced them as one pass (``one_pass``, about gamma times too cheap). A batch that mixes
prefills and decodes costs the sum of the two groups' passes (``sum``); the authors' costs
the larger (``max``).

**Compatibility** (``Compat``): every difference of dsd.md section 8 is a field; the defaults
are draftnet's corrected model, and ``Compat.authors()`` is the snapshot's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emu.planner.model import ModelArch, draft_flops, verify_flops

__all__ = ["AffineCompute", "Compat", "Compute", "FlopCompute", "Work"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Compat:
    """Each switch of dsd.md section 8; the defaults are draftnet's."""

    round_accounting: str = "emitted"  # "fixed": ceil(A / gamma) rounds, rejects not redrafted
    draft_cost: str = "sequential"  # "one_pass"
    gamma_granularity: str = "round"  # "conversation"
    tpot_definition: str = "per_emitted"  # "per_accepted"
    ttft_definition: str = "prefill_response"  # "first_accepted_round"
    mixed_cost: str = "sum"  # "max"
    kv_accounting: str = "conversation"  # "in_flight"
    memory_check: str = "warn"  # "off"
    apply_drop_rate: bool = True
    lane_wait_in_breakdown: bool = True
    acceptance_load_features: bool = False

    @classmethod
    def authors(cls) -> Compat:
        """The authors' simulator as the snapshot has it (``dsd_compat = true``)."""
        return cls(
            round_accounting="fixed",
            draft_cost="one_pass",
            gamma_granularity="conversation",
            tpot_definition="per_accepted",
            ttft_definition="first_accepted_round",
            mixed_cost="max",
            kv_accounting="in_flight",
            memory_check="off",
            apply_drop_rate=False,
            lane_wait_in_breakdown=False,
            acceptance_load_features=True,
        )


@dataclass(frozen=True, slots=True)
class Work:
    """One job's part of a pass: the tokens it processes and the context it reads."""

    tokens: int
    context: int
    prefill: bool = False


class _Passes:
    """What a model's passes make of a batch and of a draft, whatever a pass costs."""

    __slots__ = ()

    def pass_ms(self, work: Sequence[Work]) -> float:
        raise NotImplementedError

    def batch_ms(self, work: Sequence[Work], compat: Compat) -> float:
        """A verifier's batch: its prefills and its decodes, summed (``mixed_cost`` sum) or the
        larger (max)."""
        prefill = self.pass_ms([w for w in work if w.prefill])
        decode = self.pass_ms([w for w in work if not w.prefill])
        return max(prefill, decode) if compat.mixed_cost == "max" else prefill + decode

    def draft_ms(self, gamma: int, context: int, compat: Compat) -> float:
        """A drafter's ``gamma`` tokens at ``context``: one pass a token (``sequential``), or
        the authors' one pass for all."""
        if gamma <= 0:
            return 0.0
        if compat.draft_cost == "one_pass":
            return self.pass_ms([Work(gamma, context)])
        return sum(self.pass_ms([Work(1, context + k)]) for k in range(gamma))


@dataclass(frozen=True, slots=True, kw_only=True)
class AffineCompute(_Passes):
    """A model on a GPU: a pass costs base + per token + per context token [ms]."""

    base_ms: float
    per_token_ms: float
    per_context_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base_ms", "per_token_ms", "per_context_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")

    def pass_ms(self, work: Sequence[Work]) -> float:
        """One pass over ``work`` (0 for nothing)."""
        if not work:
            return 0.0
        tokens = sum(w.tokens for w in work)
        context = sum(w.context for w in work)
        return self.base_ms + self.per_token_ms * tokens + self.per_context_ms * context


@dataclass(frozen=True, slots=True, kw_only=True)
class FlopCompute(_Passes):
    """A model ``draftnet profile`` measured: a pass costs ``beta_ms + c_ms_per_flop x`` the
    FLOPs of its work for the model's shape ``arch``; drafting (``drafter``) is one token a
    pass at F_d(context), a verifier's pass F_v(tokens, context) summed over its jobs."""

    arch: ModelArch
    c_ms_per_flop: float
    beta_ms: float
    drafter: bool = False

    def __post_init__(self) -> None:
        if not (self.c_ms_per_flop >= 0 and self.beta_ms >= 0):
            raise ValueError(f"c_ms_per_flop and beta_ms must be at least 0, got "
                             f"{self.c_ms_per_flop}, {self.beta_ms}")  # fmt: skip

    def pass_ms(self, work: Sequence[Work]) -> float:
        """One pass over ``work`` (0 for nothing)."""
        if not work:
            return 0.0
        if self.drafter:
            flops = sum(w.tokens * float(draft_flops(self.arch, w.context)) for w in work)
        else:
            flops = sum(float(verify_flops(self.arch, w.tokens, w.context)) for w in work)
        return self.beta_ms + self.c_ms_per_flop * flops


Compute = AffineCompute | FlopCompute
