"""DSD's role cores, sans I/O: how a cloud verifier makes its next batch from the jobs routed
to it (dsd.md section 4.2, the second level; the global phase lanes in front of it are the
first), and how a drafter counts a conversation's tokens and times (``Conversation``).

Layer: pure (nodes.core): no sockets, no clock (``now`` in seconds, passed in).

A verifier runs one batch at a time. When it is free and has a job, it takes the first job
(the batch opens), then collects until it has ``batch_size`` jobs or ``window_s`` has passed
since it opened, whichever is first. Which jobs a batch takes, by ``order``:

- ``fifo``: the oldest first.
- ``priority``: by (class, sequence): a job's class is its caller's (prefill before decode, by
  default), its sequence when it was enqueued.
- ``lab`` (length-aware batching, draftnet's choice): jobs go into context buckets [0, 256),
  [256, 512), [512, 1024), ...; a batch fills from the oldest job's bucket, then from the
  nearest buckets either side (the lower first), so a batch's contexts are alike and its
  padding small; a job that has waited more than ``AGE_WINDOWS`` windows goes first, so a
  lonely bucket is not starved.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from emu.planner.dsd.acceptance import expected_accepted
from emu.planner.dsd.awc import HISTORY, Situation
from emu.planner.dsd.model import DrafterSpec, DsdProblem
from emu.planner.dsd.windows import Choice, WindowPolicy

__all__ = [
    "ACCOUNTINGS",
    "BATCH_ORDERS",
    "Conversation",
    "DrafterCore",
    "DsdJob",
    "KvLedger",
    "Lane",
    "QueueView",
    "RoundTally",
    "TargetQueue",
    "context_bucket",
]

BATCH_ORDERS = ("fifo", "priority", "lab")
ACCOUNTINGS = ("emitted", "fixed")
PAIR_HISTORY = HISTORY + 1  # a pair's recent rounds AWC reads: its means, and a delta
LAB_BASE_TOKENS = 256
AGE_WINDOWS = 5.0


@dataclass(slots=True, kw_only=True)
class DsdJob:
    """A prefill or a round's drafts to verify, for one conversation (``enqueued_s`` is set
    again as it moves from a lane to its verifier's queue)."""

    conversation: str
    phase: str  # "prefill" or "decode"
    tokens: int  # the prompt's (prefill), or the drafts' (decode)
    context: int  # the conversation's KV length before this job
    enqueued_s: float
    seq: int = 0
    klass: int = 0  # priority: the lower first
    target: str = ""  # the verifier it is routed to
    fused: bool = False  # drafted at the verifier too (fused execution): no round network
    attempts: int = 0  # its dispatches its verifier's KV cache refused


@dataclass(slots=True, kw_only=True)
class KvLedger:
    """A verifier's KV cache as the lanes reserve it (dsd.md section 4.2): a job holds what it
    needs (a prefill its prompt; a round its drafts and its context) from its dispatch to the
    end of its batch. A refused dispatch is tried again ``retry_s`` x its attempts later, at
    most ``retries`` times; then the job fails."""

    capacity: int = 1_000_000
    retries: int = 3
    retry_s: float = 0.001
    used: int = 0
    peak: int = 0  # the most it held at once

    @staticmethod
    def need(job: DsdJob) -> int:
        return job.tokens if job.phase == "prefill" else job.tokens + job.context

    def reserve(self, job: DsdJob) -> bool:
        """Hold the job's tokens if they fit (True), else count the refusal (False)."""
        if self.used + self.need(job) <= self.capacity:
            self.used += self.need(job)
            self.peak = max(self.peak, self.used)
            return True
        job.attempts += 1
        return False

    def retry_in_s(self, job: DsdJob) -> float | None:
        """After a refusal: how long until the job is tried again (None: it has failed)."""
        return self.retry_s * job.attempts if job.attempts <= self.retries else None

    def free(self, job: DsdJob) -> None:
        self.used -= self.need(job)
        if self.used < 0:
            raise ValueError(f"KV ledger freed more than it held ({self.used} tokens)")


def context_bucket(context: int) -> int:
    """0 for [0, 256), then one bucket per doubling: 1 for [256, 512), 2 for [512, 1024)..."""
    return (context // LAB_BASE_TOKENS).bit_length()


@dataclass(slots=True, kw_only=True)
class Lane:
    """A global phase lane (the first level; one for prefills, one for decodes): it takes the
    first job, then collects up to ``limit`` jobs (or ``max_tokens`` tokens; 0: no cap),
    waiting ``alone_s`` for company while its job is alone and until ``window_s`` after the
    first take once it has company; then it hands the jobs on to their verifiers, in order
    (``fifo``, or ``priority`` by class and sequence). A lane holding more than ``depth`` jobs
    takes no more: a job that comes then asks again every ``poll_s``."""

    limit: int = 6
    max_tokens: int = 0
    alone_s: float = 0.0003
    window_s: float = 0.0008
    order: str = "fifo"
    depth: int = 24
    poll_s: float = 0.00008
    jobs: list[DsdJob] = field(default_factory=list)

    @property
    def full(self) -> bool:
        """Whether a job that comes now must wait outside (and ask again in ``poll_s``)."""
        return len(self.jobs) > self.depth

    def __post_init__(self) -> None:
        if self.order not in ("fifo", "priority"):
            raise ValueError(f"lane order must be fifo or priority, got {self.order!r}")

    def put(self, job: DsdJob) -> None:
        self.jobs.append(job)

    def wake_s(self) -> float | None:
        """When the jobs collected go on whatever else comes (None: nothing is collected)."""
        if not self.jobs:
            return None
        opened = min(j.enqueued_s for j in self.jobs)
        return opened + (self.alone_s if len(self.jobs) == 1 else self.window_s)

    def take(self, now: float) -> list[DsdJob]:
        """The jobs to hand on now (none while it collects)."""
        ordered = sorted(self.jobs, key=lambda j: (j.enqueued_s, j.seq) if self.order == "fifo"
                         else (j.klass, j.seq))  # fmt: skip
        full = len(ordered) >= self.limit or (
            self.max_tokens > 0 and sum(j.tokens for j in ordered) >= self.max_tokens
        )
        wake = self.wake_s()
        if not ordered or not (full or (wake is not None and now >= wake)):
            return []
        out: list[DsdJob] = []
        for j in ordered[: self.limit]:
            if (
                out
                and self.max_tokens > 0
                and sum(o.tokens for o in out) + j.tokens > self.max_tokens
            ):
                break
            out.append(j)
        taken = {id(j) for j in out}
        self.jobs = [j for j in self.jobs if id(j) not in taken]
        return out


@dataclass(slots=True, kw_only=True)
class TargetQueue:
    """One verifier's queue and its rule for the next batch."""

    batch_size: int
    window_s: float
    order: str = "fifo"
    jobs: list[DsdJob] = field(default_factory=list)
    busy: bool = False
    _opened_s: float | None = None  # when the batch being collected took its first job
    _idle_since_s: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.order not in BATCH_ORDERS:
            raise ValueError(f"order must be one of {', '.join(BATCH_ORDERS)}, got {self.order!r}")

    @property
    def queue_len(self) -> int:
        """What JSQ reads: the jobs waiting, plus 1 while a batch runs."""
        return len(self.jobs) + int(self.busy)

    def put(self, job: DsdJob) -> None:
        self.jobs.append(job)

    def take(self, now: float) -> list[DsdJob] | None:
        """The batch to run now, or None (then ask again at ``wake_s``, or when a job comes)."""
        if self.busy or not self.jobs:
            return None
        if self._opened_s is None:  # the first job is taken: the batch opens
            self._opened_s = max(self._idle_since_s, min(j.enqueued_s for j in self.jobs))
        if len(self.jobs) < self.batch_size and now < self._opened_s + self.window_s:
            return None
        batch = self._choose(now)
        chosen = {id(j) for j in batch}
        self.jobs = [j for j in self.jobs if id(j) not in chosen]
        self.busy, self._opened_s = True, None
        return batch

    def wake_s(self) -> float | None:
        """When a batch being collected closes by its window (None: none is collected)."""
        if self.busy or not self.jobs or self._opened_s is None:
            return None
        return self._opened_s + self.window_s

    def finished(self, now: float) -> None:
        """The running batch ended."""
        self.busy, self._idle_since_s = False, now

    def _choose(self, now: float) -> list[DsdJob]:
        n = self.batch_size
        if self.order == "fifo":
            return sorted(self.jobs, key=lambda j: (j.enqueued_s, j.seq))[:n]
        if self.order == "priority":
            return sorted(self.jobs, key=lambda j: (j.klass, j.seq))[:n]
        by_age = sorted(self.jobs, key=lambda j: (j.enqueued_s, j.seq))
        aged = [j for j in by_age if now - j.enqueued_s > AGE_WINDOWS * self.window_s]
        batch = aged[:n]
        home = context_bucket(by_age[0].context)
        taken = {id(j) for j in batch}
        rest = [j for j in by_age if id(j) not in taken]
        rest.sort(key=lambda j: (abs(context_bucket(j.context) - home),
                                 context_bucket(j.context) > home))  # fmt: skip
        return batch + rest[: n - len(batch)]


@dataclass(slots=True, kw_only=True)
class Conversation:
    """One conversation's progress at its drafter, and its times [s], by the round accounting
    of dsd.md section 8.

    - ``emitted`` (draftnet's): the target's prefill gives the first token; a round drafts at
      most one token fewer than the answer still needs and emits its accepted drafts plus the
      target's own token, until the answer is whole. TTFT is the prefill's response; TPOT is
      (last token - first token) / (tokens - 1); the inter-token latencies are one per token:
      a verdict's wait since the last one, split evenly among the tokens it brings.
    - ``fixed`` (the authors'): ceil(A / gamma) rounds of min(gamma, A - generated) drafts,
      whatever is accepted (rejects are not drafted again, no bonus token). TTFT is the end of
      the first round that accepted a draft; TPOT adds round / accepted, accepted times, for
      each round that accepted any (rounds accepting none are skipped).
    """

    prompt: int
    answer: int
    started_s: float
    accounting: str = "emitted"
    tokens: int = 0  # emitted (the user has them), or generated (fixed)
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    _accepted_tpot: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.accounting not in ACCOUNTINGS:
            raise ValueError(
                f"round_accounting must be one of {', '.join(ACCOUNTINGS)}, got {self.accounting!r}"
            )
        if self.prompt < 1 or self.answer < 1:
            raise ValueError(f"a conversation needs a prompt and an answer, got {self.prompt}, "
                             f"{self.answer}")  # fmt: skip

    @property
    def done(self) -> bool:
        return self.tokens >= self.answer

    @property
    def context(self) -> int:
        """The KV length the next job reads."""
        return self.prompt + self.tokens

    def drafts(self, gamma: int) -> int:
        """How many tokens to draft this round at window ``gamma``."""
        left = self.answer - self.tokens
        return max(0, min(gamma, left - 1 if self.accounting == "emitted" else left))

    def prefilled(self, now: float) -> None:
        """The prefill's response came back (with the first token, in ``emitted``)."""
        if self.accounting == "emitted":
            self._deliver(now, 1)

    def verdict(self, now: float, drafted: int, accepted: int, round_s: float) -> int:
        """A round's verdict: ``accepted`` of ``drafted`` drafts, the round having taken
        ``round_s``; the tokens it adds."""
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        if self.accounting == "fixed":
            self.tokens += drafted
            if accepted > 0:
                if self.first_token_s is None:
                    self.first_token_s = now
                self._accepted_tpot += [round_s / accepted] * accepted
            return drafted
        n = min(accepted + 1, self.answer - self.tokens)
        self._deliver(now, n)
        return n

    def _deliver(self, now: float, n: int) -> None:
        if self.first_token_s is None:
            self.first_token_s = now
        elif n > 0:
            gap = now - (self.last_token_s if self.last_token_s is not None else now)
            self.itl_s += [gap / n] * n
        self.last_token_s = now
        self.tokens += n

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.started_s

    @property
    def tpot_s(self) -> float | None:
        """The time per output token by this accounting's definition (None before two)."""
        if self.accounting == "fixed":
            return (
                sum(self._accepted_tpot) / len(self._accepted_tpot) if self._accepted_tpot else None
            )
        if self.first_token_s is None or self.last_token_s is None or self.tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) / (self.tokens - 1)


@dataclass(slots=True, kw_only=True)
class RoundTally:
    """The counters of rounds (a run's or a drafter's): tokens the users got, and vLLM's
    speculative-decoding counters (drafts: rounds that carried any; accepted per position)."""

    tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    drafts: int = 0
    fused_rounds: int = 0
    per_position: list[int] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueView:
    """What a drafter knows of its verifier's queue when it chooses a window: the jobs it
    holds (plus 1 while a batch runs), its batch's size, its recent batches' fill, and the
    tokens waiting in it."""

    queue_len: int = 0
    batch_size: int = 1
    utils: tuple[float, ...] = ()
    pending_tokens: int = 0


@dataclass(slots=True)
class DrafterCore:
    """A drafter's choices and memory, shared by the simulation and the emulation's node:
    each round's window (its policy's; 1 under fused execution; once a conversation under the
    authors' granularity) and whether it runs fused; and what each verdict teaches it (the
    pair's recent round times, times per token and acceptance: what AWC reads) and counts
    (``tally``, which several drafters may share)."""

    spec: DrafterSpec
    problem: DsdProblem
    policy: WindowPolicy
    tally: RoundTally
    last_ratio: float | None = None
    round_ms: dict[str, deque[float]] = field(default_factory=dict)
    tpot_ms: dict[str, deque[float]] = field(default_factory=dict)
    pair_ratio: dict[str, float] = field(default_factory=dict)

    def window(
        self, conv: Conversation, verifier: str, gamma: int, queue: QueueView
    ) -> tuple[int, bool, Choice | None]:
        """The next round's window (``gamma``: the last, 0 at a conversation's start), whether
        it is fused, and what the policy read (None when it was not asked); the round counted."""
        p = self.problem
        choice = None
        if p.mode == "fused":
            gamma = 1
        elif gamma == 0 or p.compat.gamma_granularity == "round":
            choice = self.choice(conv, verifier, gamma, queue)
            gamma = self.policy.window(choice)
        fused = p.mode == "fused" or (p.mode == "hybrid" and gamma <= 1)
        self.tally.windows.append(gamma)
        self.tally.fused_rounds += fused
        return gamma, fused, choice

    def choice(self, conv: Conversation, verifier: str, gamma: int, queue: QueueView) -> Choice:
        """What a window policy reads for this round."""
        p = self.problem
        positions = p.curve.probabilities(conv.context, p.max_gamma)
        estimate = expected_accepted(positions[: p.gamma_default]) / p.gamma_default
        situation = Situation(
            queue_len=queue.queue_len, batch_size=queue.batch_size, queue_utils=queue.utils,
            pending_tokens=queue.pending_tokens, round_ms=tuple(self.round_ms.get(verifier, ())),
            tpot_ms=tuple(self.tpot_ms.get(verifier, ())), capability=self.spec.capability,
            acceptance_recent=self.pair_ratio.get(verifier), acceptance_estimate=estimate,
            last_gamma=gamma or None, context=conv.prompt,
        )  # fmt: skip
        return Choice(pair=f"{self.spec.name}>{verifier}", positions=positions,
                      last_ratio=self.last_ratio, situation=situation)  # fmt: skip

    def prefilled(self, conv: Conversation, now: float) -> None:
        before = conv.tokens
        conv.prefilled(now)
        self.tally.tokens += conv.tokens - before

    def verdict(
        self, conv: Conversation, verifier: str, *, drafted: int, accepted: int, now: float,
        round_s: float,
    ) -> int:  # fmt: skip
        """A round's verdict: the conversation's tokens and times, the counters, the pair's
        memory; the tokens the round emitted."""
        n = conv.verdict(now, drafted, accepted, round_s)
        t = self.tally
        t.tokens += n if self.problem.compat.round_accounting == "emitted" else accepted
        t.rounds += 1
        t.drafted += drafted
        t.accepted += accepted
        t.drafts += drafted > 0
        if len(t.per_position) < accepted:
            t.per_position += [0] * (accepted - len(t.per_position))
        for i in range(accepted):
            t.per_position[i] += 1
        if drafted:
            self.last_ratio = self.pair_ratio[verifier] = accepted / drafted
        for hist, value in (
            (self.round_ms, round_s * 1e3),
            (self.tpot_ms, round_s * 1e3 / max(n, 1)),
        ):
            hist.setdefault(verifier, deque(maxlen=PAIR_HISTORY)).append(value)
        return n
