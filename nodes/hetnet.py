"""The heterogeneous-edge system's nodes: a task's user, the small cell and the macro cell.

Layer: nodes (trio shells over ``nodes.core.hetnet``, ``nodes.protocol.hetnet`` and a batched
backend, ``nodes.batched``). Each server runs one worker that takes the core's next job, runs it
on its backend, lets its compute time pass on the node's clock (``nodes.pacing``) and sends what
the core says. A stream each way is written by one writer task, so a slow or gone peer never
blocks a server; a user that breaks its connection, or its protocol, costs only its own task
(``SmallCellCore.leave``), and its batch goes on without it.
"""

from __future__ import annotations

import time

import trio

from emu.errors import RemoteProtocolError
from nodes.batched import BatchDrafter, BatchVerifier
from nodes.core.hetnet import Job, MacroCellCore, SmallCellCore, TaskOutcome, ToMacro, ToUser
from nodes.pacing import Pacer
from nodes.protocol.hetnet import (
    Attach,
    BatchDraft,
    BatchVerdict,
    Frames,
    Grant,
    HetnetEvent,
    Tokens,
    Upload,
    pack_ids,
)
from nodes.stream import Outbox, Sink, frame_events

__all__ = ["FRONTHAUL_MAX_FRAME", "MacroCellNode", "SmallCellNode", "TaskUser"]

FRONTHAUL_MAX_FRAME = 1 << 30  # a round's drafts with their full distributions (hetnet.md 3.4)
_CHUNK = 1 << 20


class TaskUser:
    """A user's device: attaches, uploads its prompt when granted, and takes its tokens until
    its task is done. Its records: ``granted``, ``first_token`` and ``done`` (``latency_ms``
    from ``t0``, when every task was there)."""

    def __init__(
        self,
        task: int,
        prompt: tuple[int, ...],
        max_new_tokens: int,
        *,
        width: int,
        sink: Sink,
        t0: float,
    ) -> None:
        self.task = task
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.width = width
        self.sink = sink
        self.t0 = t0
        self.tokens: list[int] = []
        self.latency_ms: float | None = None
        self.ttft_ms: float | None = None

    def outcome(self) -> TaskOutcome:
        return TaskOutcome(self.task, self.latency_ms, self.ttft_ms, tuple(self.tokens))

    async def run(self, stream: trio.abc.Stream) -> None:
        frames = Frames()
        async with stream:
            await stream.send_all(frames.pack(Attach(task=self.task)))
            async for ev in frame_events(stream, frames, chunk=_CHUNK):
                now = trio.current_time()
                if isinstance(ev, Grant):
                    self.sink({"ev": "granted", "t": now, "user": self.task,
                               "bandwidth_hz": ev.bandwidth_hz})  # fmt: skip
                    up = Upload(
                        task=self.task,
                        prompt=pack_ids(self.prompt, self.width),
                        width=self.width,
                        max_new_tokens=self.max_new_tokens,
                    )
                    await stream.send_all(frames.pack(up))
                elif isinstance(ev, Tokens):
                    if ev.tokens and self.ttft_ms is None:
                        self.ttft_ms = (now - self.t0) * 1e3
                        self.sink({"ev": "first_token", "t": now, "user": self.task,
                                   "ttft_ms": self.ttft_ms})  # fmt: skip
                    self.tokens += ev.tokens
                    if ev.done:
                        self.latency_ms = (now - self.t0) * 1e3
                        self.sink({"ev": "done", "t": now, "user": self.task,
                                   "latency_ms": self.latency_ms,
                                   "tokens": len(self.tokens)})  # fmt: skip
                        return
                else:
                    raise RemoteProtocolError(f"{type(ev).__name__} sent to a user")
        raise RemoteProtocolError("the small cell closed before the task was done")


class SmallCellNode:
    """The small cell: serves its users' connections (``serve_user``) and, once ``run``
    dials the macro cell, drafts for the plan's batches."""

    def __init__(
        self,
        core: SmallCellCore,
        drafter: BatchDrafter,
        *,
        pacer: Pacer,
        sink: Sink,
    ) -> None:
        self.core = core
        self.drafter = drafter
        self.pacer = pacer
        self.sink = sink
        self.users: dict[int, Outbox[HetnetEvent]] = {}
        self._macro: Outbox[HetnetEvent] | None = None
        self._wake = trio.Event()
        self.done = trio.Event()
        self.faults = 0

    def _apply(self, sends: list[ToUser | ToMacro]) -> None:
        for s in sends:
            if isinstance(s, ToMacro):
                assert self._macro is not None
                self._macro.post(s.event)
            elif (box := self.users.get(s.task)) is not None:
                box.post(s.event)
        self._wake.set()

    async def serve_user(self, stream: trio.abc.Stream, *, task: int | None = None) -> None:
        """One user's connection until it ends; whatever it does costs only its task. Lab
        mode binds the connection to the ``task`` its user proved to hold."""
        bound = task
        frames = Frames()
        box = Outbox(stream, frames)
        task = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run)
            try:
                async for ev in frame_events(stream, frames, chunk=_CHUNK):
                    now = trio.current_time()
                    if isinstance(ev, Attach) and task is None:
                        if bound is not None and ev.task != bound:
                            raise RemoteProtocolError(
                                f"task {ev.task} attached on task {bound}'s connection"
                            )
                        if ev.task in self.users:
                            raise RemoteProtocolError(f"task {ev.task} attached twice")
                        task = ev.task
                        self.users[task] = box
                        self._apply(self.core.attach(task))
                    elif isinstance(ev, Upload) and ev.task == task:
                        self._apply(self.core.upload(ev, now))
                    else:
                        raise RemoteProtocolError(f"{type(ev).__name__} out of order")
            except (RemoteProtocolError, ValueError, trio.BrokenResourceError) as exc:
                self.faults += 1
                self.sink({"ev": "user_fault", "t": trio.current_time(), "task": task,
                           "why": str(exc)})  # fmt: skip
            finally:
                box.close()
                if task is not None and self.users.get(task) is box:
                    del self.users[task]
                    self._apply(self.core.leave(task, trio.current_time()))

    async def run(self, macro: trio.abc.Stream) -> None:
        """Draft until every batch has ended, over the fronthaul ``macro``."""
        frames = Frames(max_frame=FRONTHAUL_MAX_FRAME)
        self._macro = Outbox(macro, frames)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._macro.run)
            nursery.start_soon(self._verdicts, macro, frames)
            while not self.core.finished:
                if grants := self.core.open(trio.current_time()):  # windows that opened
                    self._apply(grants)
                job = self.core.next_job()
                if job is None:
                    with trio.move_on_at(self.core.next_open_s(trio.current_time())):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                await self._run(job)
            self.done.set()
            nursery.cancel_scope.cancel()

    async def _run(self, job: Job) -> None:
        tasks, contexts, length = self.core.batch_shape(job.batch)
        t0 = time.perf_counter()
        drafts: list[tuple[int, ...]] = []
        if job.kind == "prefill":
            ms = self.drafter.prefill(tasks, contexts)
        else:
            drafts, ms = self.drafter.draft(tasks, contexts, length)
        await self.pacer.pace(ms, (time.perf_counter() - t0) * 1e3)
        self._apply(self.core.job_done(job, ms, trio.current_time(), drafts))

    async def _verdicts(self, macro: trio.abc.Stream, frames: Frames) -> None:
        async for ev in frame_events(macro, frames, chunk=_CHUNK):
            if not isinstance(ev, BatchVerdict):
                raise RemoteProtocolError(f"{type(ev).__name__} from the macro cell")
            self._apply(self.core.verdict(ev, trio.current_time()))


class MacroCellNode:
    """The macro cell: verifies what the small cells send, one job at a time (``work``), each
    verdict back over the connection its batch came in on (``serve_stream``)."""

    def __init__(
        self, core: MacroCellCore, verifier: BatchVerifier, *, pacer: Pacer, sink: Sink
    ) -> None:
        self.core = core
        self.verifier = verifier
        self.pacer = pacer
        self.sink = sink
        self._wake = trio.Event()
        self._boxes: dict[int, Outbox[HetnetEvent]] = {}  # each open batch's small cell

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """A small cell's fronthaul connection, until it ends."""
        frames = Frames(max_frame=FRONTHAUL_MAX_FRAME)
        box = Outbox(stream, frames)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run)
            try:
                async for ev in frame_events(stream, frames, chunk=_CHUNK):
                    if not isinstance(ev, BatchDraft):
                        raise RemoteProtocolError(f"{type(ev).__name__} from a small cell")
                    if ev.round == 1:
                        self._boxes[ev.batch] = box
                    elif self._boxes.get(ev.batch) is not box:
                        raise RemoteProtocolError(f"batch {ev.batch} from another small cell")
                    self.core.draft(ev, trio.current_time())
                    self._wake.set()
            finally:
                box.close()
                nursery.cancel_scope.cancel()

    async def work(self) -> None:
        """The macro cell's server: the core's next job, until cancelled."""
        while True:
            job = self.core.next_job()
            if job is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            started = trio.current_time()
            b = self.core.batch_of(job.batch)
            d = b.draft
            assert d is not None
            t0 = time.perf_counter()
            accepted: list[int] = []
            tokens: list[tuple[int, ...]] = []
            if job.kind == "verify":
                prompt_len = max(len(c) for c in b.contexts) if d.round == 1 else 0
                accepted, tokens, ms = self.verifier.verify(
                    job.batch, d.round, b.tasks, b.contexts, d.drafts, prompt_len=prompt_len
                )
            elif job.kind == "prefill":
                tokens, ms = self.verifier.prefill(b.tasks, b.contexts)
            else:
                ids, ms = self.verifier.decode(b.tasks, b.contexts)
                tokens = [(t,) for t in ids]
            await self.pacer.pace(ms, (time.perf_counter() - t0) * 1e3)
            verdict = self.core.job_done(
                job, ms, trio.current_time(), started_s=started, accepted=accepted, tokens=tokens
            )
            if verdict is not None:
                self._boxes[job.batch].post(verdict)
                if self.core.ended(job.batch):  # the tasks' state in the model can go
                    self.verifier.forget(self.core.close(job.batch))
                    del self._boxes[job.batch]
