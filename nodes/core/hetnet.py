"""The heterogeneous-edge system's server cores, sans I/O: the small cell (grants the uplink,
drafts for batches of tasks) and the macro cell (verifies them).

Layer: pure (nodes.core): no sockets, no clock, no model. The trio shells
(``nodes.hetnet``) tell a core what arrived and what a step computed (``now`` passed in), run
the job it hands out next on their model backend, and send what it returns.

The cores run a plan the way the evaluator scores it (``emu.planner.hetnet.evaluate``, hetnet.md
3.5), so that the simulation checks the evaluator and the emulation checks both:

- **Uplink.** The small cell grants batch 1's users first, each its share of the band; batch
  m + 1's once batch m's prompts are all in (``batch-ordered``), or everyone at once on B / K
  (``uniform``). A batch is released when its last prompt arrives. Under arrivals each batch
  has its window's opening (``opens_s``): it is granted no earlier, and a window's batches
  only once the earlier windows' prompts are all in (``uniform``: a window at once).
- **Small cell.** One server: a batch's draft prefill, then each round's drafts (every task of
  the batch in one batched step), one job at a time, the ready job first by the plan's
  ``discipline`` (``priority``: the plan's earliest batch; ``fifo``: the earliest ready).
- **Macro cell.** One server: each round's verification (with the target's prefill in round 1),
  by the same discipline. A batch at length 0 is decoded by the target alone: its prefill, then a
  pass a token until every task has its tokens, then one verdict.
- **Learned acceptance.** Each task's acceptance is learned from its verdicts (a Beta
  posterior from the planner's ``priors``, ``PRIOR_TOKENS`` strong); with ``adapt``, a
  speculative batch's length is chosen again before each round from it
  (``emu.planner.hetnet.adapt``).
- **Static batching.** A batch runs until each of its tasks has the tokens it asked for, its
  finished tasks still in its passes (padding); each task's tokens go to its user as they are
  verified, and every task of a batch is done when the batch ends (the evaluator's T_k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nodes.protocol.hetnet import (
    BatchDraft,
    BatchVerdict,
    Grant,
    HetnetEvent,
    Tokens,
    Upload,
    pack_ids,
    unpack_ids,
)

__all__ = [
    "BatchStats",
    "Job",
    "MacroCellCore",
    "SmallCellCore",
    "TaskOutcome",
    "ToMacro",
    "ToUser",
]

GRANTS = ("batch-ordered", "uniform")
PRIOR_TOKENS = 8.0  # the planner's acceptance counts as this many draft tokens seen


class Adapt(Protocol):
    """A rule for a batch's next length: from its tasks, its KV length, each unfinished task's
    (tokens wanted, acceptance learned), and whether other batches are running."""

    def __call__(
        self, n: int, context: int, members: Sequence[tuple[int, float]], *, pipelined: bool
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class ToUser:
    task: int
    event: HetnetEvent


@dataclass(frozen=True, slots=True)
class ToMacro:
    event: HetnetEvent


Send = ToUser | ToMacro


@dataclass(frozen=True, slots=True)
class Job:
    """One step of a batch on a server: ``kind`` is prefill or draft (small cell), verify,
    prefill or decode (macro cell)."""

    batch: int
    kind: str
    round: int
    ready_s: float


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What a task's user saw [ms from the start, when every task was there]."""

    task: int
    latency_ms: float | None  # its last tokens' arrival (None: never done)
    ttft_ms: float | None
    tokens: tuple[int, ...]


@dataclass(slots=True)
class BatchStats:
    """What a batch cost, as the small cell saw it [ms]; ``*_s`` on the caller's clock."""

    tasks: tuple[int, ...]
    spec_len: int
    released_s: float | None = None
    ended_s: float | None = None
    rounds: int = 0
    draft_ms: float = 0.0  # the small cell's steps: prefill and drafts
    verify_ms: float = 0.0  # the macro cell's, as its verdicts say
    macro_queue_ms: float = 0.0  # waiting at the macro cell
    trip_ms: float = 0.0  # from sending a round to its verdict's arrival
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def fronthaul_ms(self) -> float:
        """The rounds' trips less what the macro cell spent on them: the fronthaul both ways."""
        return max(0.0, self.trip_ms - self.verify_ms - self.macro_queue_ms)


def _pick(jobs: list[Job], discipline: str) -> Job | None:
    if not jobs:
        return None
    if discipline == "priority":
        job = min(jobs, key=lambda j: (j.batch, j.ready_s))
    else:
        job = min(jobs, key=lambda j: (j.ready_s, j.batch))
    jobs.remove(job)
    return job


@dataclass(slots=True)
class _Task:
    batch: int
    attached: bool = False
    prompt: tuple[int, ...] = ()
    wanted: int = 0
    generated: list[int] = field(default_factory=list)  # every token its passes made
    delivered: int = 0  # of them, sent to its user (at most ``wanted``)
    accepted: int = 0  # draft tokens accepted, and rejections seen (a round's first rejected)
    rejected: int = 0


class SmallCellCore:
    """The small cell running one plan: ``batches`` of task ids in order, each batch's
    speculation length, each task's band [Hz], how the band is granted, the servers'
    discipline, and the fronthaul's payload per draft token of the drafts' distributions.
    With several small cells, ``ids`` numbers its batches as the whole plan does (on the wire
    and at the macro cell, which serves every cell's); by default 0, 1, .... ``opens_s`` gives
    when each batch's window opens [s from the start] (empty: all at once); the shell says
    when the run starts (``start``) and calls ``open`` as each opens (``next_open_s``).
    ``priors`` gives each task's acceptance as the planner was told it (by task id; empty:
    0.5), ``adapt`` the rule for each round's length (None: the plan's)."""

    def __init__(
        self,
        batches: Sequence[Sequence[int]],
        spec_len: Sequence[int],
        bandwidth_hz: Sequence[float],
        *,
        grant: str = "batch-ordered",
        discipline: str = "priority",
        width: int = 2,
        prob_bytes_per_token: int = 0,
        ids: Sequence[int] = (),
        opens_s: Sequence[float] = (),
        priors: Sequence[float] = (),
        adapt: Adapt | None = None,
    ) -> None:
        if grant not in GRANTS:
            raise ValueError(f"grant must be one of {', '.join(GRANTS)}, got {grant!r}")
        self.batches = [tuple(b) for b in batches]
        self.ids = list(ids) or list(range(len(self.batches)))
        self._local = {g: m for m, g in enumerate(self.ids)}
        self.spec_len = list(spec_len)
        self.bandwidth_hz = list(bandwidth_hz)
        self.grant = grant
        self.discipline = discipline
        self.width = width
        self.prob_bytes_per_token = prob_bytes_per_token
        self.tasks = {k: _Task(m) for m, b in enumerate(self.batches) for k in b}
        self.stats = [BatchStats(b, ln) for b, ln in zip(self.batches, spec_len, strict=True)]
        self.opens_s = list(opens_s) or [-math.inf] * len(self.batches)
        self.priors = list(priors)
        self.adapt = adapt
        self._granted = 0  # batches granted: 0.._granted - 1
        self._advance(-math.inf)
        self._jobs: list[Job] = []
        self._sent_s: dict[int, float] = {}  # each batch's round in flight: when it left
        self._drafts: dict[int, tuple[tuple[int, ...], ...]] = {}  # ... and its drafts

    # --- the uplink ----------------------------------------------------------------------
    def attach(self, task: int) -> list[Send]:
        """User ``task`` attached: its grant if its batch's turn has come."""
        t = self._task(task)
        t.attached = True
        return [self._grant(task)] if t.batch < self._granted else []

    def upload(self, up: Upload, now: float) -> list[Send]:
        """A prompt arrived; the batch is released when it holds them all."""
        t = self._task(up.task)
        if t.prompt:
            raise ValueError(f"task {up.task} uploaded twice")
        if t.batch >= self._granted:
            raise ValueError(f"task {up.task} uploaded before its grant")
        t.prompt, t.wanted = unpack_ids(up.prompt, up.width), up.max_new_tokens
        return self._release_if_ready(t.batch, now)

    def leave(self, task: int, now: float) -> list[Send]:
        """User ``task``'s connection ended. Before its upload, its batch goes on without it
        (released now if it waited for that prompt alone); after, nothing changes (its batch's
        passes hold its place, and its tokens have nowhere to go)."""
        t = self._task(task)
        m = t.batch
        if t.prompt or self.stats[m].released_s is not None:
            return []
        self.batches[m] = tuple(k for k in self.batches[m] if k != task)
        self.stats[m].tasks = self.batches[m]
        del self.tasks[task]
        return self._release_if_ready(m, now)

    def start(self, t0: float) -> None:
        """The run starts at ``t0`` on the caller's clock: each window opens that long after
        it (``opens_s`` are from the start until then)."""
        self.opens_s = [t0 + at for at in self.opens_s]

    def open(self, now: float) -> list[Send]:
        """The clock reached a window's opening (``next_open_s``): its grants, if the
        earlier batches' uploads are done."""
        return self._advance(now)

    def next_open_s(self, now: float) -> float:
        """When, after ``now``, the next batch not yet granted opens (inf: none waits for its
        window; one whose window is open waits for the uploads before it)."""
        m = self._granted
        at = self.opens_s[m] if m < len(self.batches) else math.inf
        return at if at > now else math.inf

    def _grantable(self, m: int, now: float) -> bool:
        """Batch m's window has opened, and the band is free for it: the batch before it
        released (``batch-ordered``), or every batch of the earlier windows (``uniform``)."""
        if self.opens_s[m] > now:
            return False
        if self.grant == "batch-ordered":
            return m == 0 or self.stats[m - 1].released_s is not None
        return all(
            st.released_s is not None
            for st, at in zip(self.stats[:m], self.opens_s, strict=False)
            if at < self.opens_s[m]
        )

    def _advance(self, now: float) -> list[Send]:
        """Grant every batch whose turn has come, in order."""
        out: list[Send] = []
        while self._granted < len(self.batches) and self._grantable(self._granted, now):
            m = self._granted
            self._granted += 1
            out += [self._grant(k) for k in self.batches[m] if self.tasks[k].attached]
            out += self._release_if_ready(m, now)  # every user of it gone already
        return out

    def _release_if_ready(self, m: int, now: float) -> list[Send]:
        """Release batch m if it is granted and every prompt of it is in; the next batches'
        grants with it."""
        st = self.stats[m]
        if st.released_s is not None or m >= self._granted:
            return []
        if not all(self.tasks[k].prompt for k in self.batches[m]):
            return []
        st.released_s = now
        out: list[Send] = self._advance(now)
        if not self.batches[m]:  # every user of it left before uploading
            st.ended_s = now
        elif self.spec_len[m] == 0:  # the target alone: the prompts straight to the macro cell
            out.append(self._send_round(m, 1, tuple(() for _ in self.batches[m]), now))
        else:
            self._jobs.append(Job(m, "prefill", 0, now))
        return out

    def _grant(self, task: int) -> ToUser:
        return ToUser(task, Grant(task=task, bandwidth_hz=float(self.bandwidth_hz[task])))

    # --- the small cell's server -----------------------------------------------------------
    def next_job(self) -> Job | None:
        """The job to run now (by the discipline), or None while none is ready."""
        return _pick(self._jobs, self.discipline)

    def batch_shape(self, m: int) -> tuple[tuple[int, ...], list[tuple[int, ...]], int]:
        """Batch m's tasks, each one's context (prompt and every token generated), and the
        length to draft."""
        tasks = self.batches[m]
        contexts = [self.tasks[k].prompt + tuple(self.tasks[k].generated) for k in tasks]
        return tasks, contexts, self.spec_len[m]

    def job_done(
        self, job: Job, compute_ms: float, now: float, drafts: Sequence[Sequence[int]] = ()
    ) -> list[Send]:
        """A job ran for ``compute_ms``: after a prefill the first round's drafts are ready to
        make; after a draft, the round goes to the macro cell."""
        st = self.stats[job.batch]
        st.draft_ms += compute_ms
        if job.kind == "prefill":
            self._jobs.append(Job(job.batch, "draft", 1, now))
            return []
        drafted = tuple(tuple(d) for d in drafts)
        if len(drafted) != len(self.batches[job.batch]):
            raise ValueError(f"batch {job.batch}: {len(drafted)} drafts for its tasks")
        return [self._send_round(job.batch, job.round, drafted, now)]

    def _send_round(
        self, m: int, r: int, drafts: tuple[tuple[int, ...], ...], now: float
    ) -> ToMacro:
        tasks = self.batches[m]
        length = len(drafts[0]) if drafts else 0
        first = r == 1
        self._sent_s[m], self._drafts[m] = now, drafts
        self.stats[m].draft_tokens += length * len(tasks)
        return ToMacro(
            BatchDraft(
                batch=self.ids[m],
                round=r,
                tasks=tasks,
                drafts=drafts,
                probs=bytes(self.prob_bytes_per_token * length * len(tasks)),
                prompts=tuple(pack_ids(self.tasks[k].prompt, self.width) for k in tasks)
                if first
                else (),
                width=self.width,
                wanted=tuple(self.tasks[k].wanted for k in tasks) if first else (),
            )
        )

    # --- verdicts ---------------------------------------------------------------------------
    def verdict(self, v: BatchVerdict, now: float) -> list[Send]:
        """The macro cell's verdict on a batch's round: each task's new tokens to its user;
        the next round's drafts, or the batch's end."""
        m = self._local.get(v.batch, -1)
        if m not in self._sent_s:
            raise ValueError(f"a verdict for batch {v.batch}, which has no round in flight")
        tasks, drafts = self.batches[m], self._drafts.pop(m)
        if len(v.accepted) != len(tasks):
            raise ValueError(f"a verdict on {len(v.accepted)} tasks for batch {m}'s {len(tasks)}")
        st = self.stats[m]
        # A round a verification; the target alone answers once for every pass it made.
        st.rounds += max(len(t) for t in v.tokens) if self.spec_len[m] == 0 else 1
        st.trip_ms += (now - self._sent_s.pop(m)) * 1e3
        st.verify_ms += v.verify_ms
        st.macro_queue_ms += v.queued_ms
        out: list[Send] = []
        for i, k in enumerate(tasks):
            drafted = drafts[i] if drafts else ()
            if v.accepted[i] > len(drafted):
                raise ValueError(f"a verdict accepts {v.accepted[i]} of {len(drafted)} drafts")
            st.accepted_tokens += v.accepted[i]
            t = self.tasks[k]
            t.generated += (*drafted[: v.accepted[i]], *v.tokens[i])
            t.accepted += v.accepted[i]
            t.rejected += v.accepted[i] < len(drafted)
        done = all(len(self.tasks[k].generated) >= self.tasks[k].wanted for k in tasks)
        if done or self.spec_len[m] == 0:
            st.ended_s = now
        else:
            if self.adapt is not None:
                self.spec_len[m] = self._adapted(m)
            self._jobs.append(Job(m, "draft", v.round + 1, now))
        for k in tasks:
            t = self.tasks[k]
            new = t.generated[t.delivered : t.wanted]
            t.delivered += len(new)
            if new or st.ended_s is not None:
                done = st.ended_s is not None
                out.append(ToUser(k, Tokens(task=k, tokens=tuple(new), done=done)))
        return out

    def learned_alpha(self, task: int) -> float:
        """Task ``task``'s acceptance as learned so far: the posterior mean of a draft token's
        acceptance (accepted over accepted and rejected), from its prior."""
        t = self._task(task)
        prior = self.priors[task] if self.priors else 0.5
        seen = t.accepted + t.rejected
        return (t.accepted + prior * PRIOR_TOKENS) / (seen + PRIOR_TOKENS)

    def _adapted(self, m: int) -> int:
        assert self.adapt is not None
        tasks = self.batches[m]
        members = [
            (t.wanted - len(t.generated), self.learned_alpha(k))
            for k in tasks
            if len((t := self.tasks[k]).generated) < t.wanted
        ]
        context = max(len(self.tasks[k].prompt) + len(self.tasks[k].generated) for k in tasks)
        running = sum(st.released_s is not None and st.ended_s is None for st in self.stats)
        return self.adapt(len(tasks), context, members, pipelined=running > 1)

    @property
    def finished(self) -> bool:
        return all(s.ended_s is not None for s in self.stats)

    def _task(self, task: int) -> _Task:
        t = self.tasks.get(task)
        if t is None:
            raise ValueError(f"task {task} is not in the plan")
        return t


@dataclass(slots=True)
class _MacroBatch:
    tasks: tuple[int, ...]
    contexts: list[list[int]]  # each task's prompt and every token committed, as verified here
    wanted: tuple[int, ...]
    prompt_lens: tuple[int, ...] = ()
    round: int = 0
    alone: list[list[int]] = field(default_factory=list)  # length 0: the tokens decoded so far
    draft: BatchDraft | None = None  # the round waiting to be verified
    ready_s: float = 0.0
    alone_queued_ms: float = 0.0  # the target alone: its passes' waits and compute, summed
    alone_ms: float = 0.0


class MacroCellCore:
    """The macro cell: verifies each batch's rounds by the discipline, and decodes a batch
    at length 0 alone."""

    def __init__(self, *, discipline: str = "priority") -> None:
        self.discipline = discipline
        self.batches: dict[int, _MacroBatch] = {}
        self._jobs: list[Job] = []

    def draft(self, d: BatchDraft, now: float) -> None:
        """A round arrived: its verification (or, at length 0, the target's prefill) is
        ready."""
        if d.round == 1:
            if d.batch in self.batches:
                raise ValueError(f"batch {d.batch} opened twice")
            prompts = [list(unpack_ids(p, d.width)) for p in d.prompts]
            self.batches[d.batch] = _MacroBatch(
                d.tasks, prompts, d.wanted, tuple(len(p) for p in prompts)
            )
        b = self.batches.get(d.batch)
        if b is None or d.round != b.round + 1 or b.draft is not None or b.alone:
            raise ValueError(f"batch {d.batch}'s round {d.round} out of order")
        if d.tasks != b.tasks:
            raise ValueError(f"batch {d.batch}'s round {d.round} names other tasks")
        b.draft, b.ready_s = d, now
        kind = "verify" if d.draft_len else "prefill"
        self._jobs.append(Job(d.batch, kind, d.round, now))

    def next_job(self) -> Job | None:
        return _pick(self._jobs, self.discipline)

    def batch_of(self, m: int) -> _MacroBatch:
        return self.batches[m]

    def ended(self, m: int) -> bool:
        """Whether every task of batch m has its tokens (the small cell ends it on the same
        count): its state here can go."""
        b = self.batches[m]
        return b.draft is None and all(
            len(c) - p >= w for c, p, w in zip(b.contexts, b.prompt_lens, b.wanted, strict=True)
        )

    def close(self, m: int) -> tuple[int, ...]:
        """Forget an ended batch; its tasks."""
        return self.batches.pop(m).tasks

    def job_done(
        self,
        job: Job,
        compute_ms: float,
        now: float,
        *,
        started_s: float,
        accepted: Sequence[int] = (),
        tokens: Sequence[Sequence[int]] = (),
    ) -> BatchVerdict | None:
        """A job ran: a verification's verdict (``accepted`` drafts and the ``tokens`` after
        them, per task) goes back; the target alone decodes on (``tokens``: one a task) until
        every task has its tokens, then answers with all of them."""
        b = self.batches[job.batch]
        d = b.draft
        assert d is not None
        queued_ms = (started_s - job.ready_s) * 1e3
        if job.kind == "verify":
            b.draft, b.round = None, d.round
            for i, ctx in enumerate(b.contexts):
                ctx.extend((*d.drafts[i][: accepted[i]], *tokens[i]))
            return BatchVerdict(
                batch=job.batch,
                round=d.round,
                accepted=tuple(accepted),
                tokens=tuple(tuple(t) for t in tokens),
                queued_ms=queued_ms,
                verify_ms=compute_ms,
            )
        if job.kind == "prefill":  # its first tokens, where the backend's prefill yields them
            b.alone = [list(t) for t in tokens] if tokens else [[] for _ in b.tasks]
            for ctx, first in zip(b.contexts, b.alone, strict=True):
                ctx.extend(first)
        else:
            for i, ctx in enumerate(b.contexts):
                ctx.extend(tokens[i])
                b.alone[i].extend(tokens[i])
        b.alone_queued_ms += queued_ms
        b.alone_ms += compute_ms
        if all(len(a) >= w for a, w in zip(b.alone, b.wanted, strict=True)):
            b.draft, b.round = None, d.round
            return BatchVerdict(
                batch=job.batch,
                round=d.round,
                accepted=tuple(0 for _ in b.tasks),
                tokens=tuple(tuple(a) for a in b.alone),
                queued_ms=b.alone_queued_ms,
                verify_ms=b.alone_ms,
            )
        self._jobs.append(Job(job.batch, "decode", d.round, now))
        return None
