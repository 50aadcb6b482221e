"""The edge node: the verifier's trio shell. It accepts users, waits, verifies and talks; what
to do is decided by its sans-I/O core (``nodes.core.verifier``).

Layer: nodes (trio shell over ``nodes.protocol`` and ``nodes.core``; the planner is called,
never imported by the protocol). The same code serves in-memory links in the simulation and TCP
in emulation.

The core holds the users' sessions, the plan, the batch scheduler (DiP-SD's staged pipeline by
default: the plan's batches one after another in its cyclic order, each as ONE verify call
while the other batches' users draft, closing when its last member's draft arrives or at a
deadline from the plan; a member that misses it is late, counted, and verified in its next
slot), the length controller (the plan's lengths by default) and the re-plan rule. A user at
length 0 needs no draft: the edge decodes for it alone. This shell runs the loop, waits on
drafts and deadlines, calls the model backend and the planner, and does the core's actions.

Faults stay local, whatever a peer sends: its connection (``nodes.peers``) is closed with an
Error, counted and recorded; a user that leaves (or falls silent past ``idle_timeout_s``) is
dropped from its batch and the plan is recomputed; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import trio

from emu.planner.cost import Plan
from emu.planner.model import Edge, Problem, User
from nodes.backends import VerifyBackend, VerifyItem
from nodes.core.ledger import SessionLedger
from nodes.core.schedule import BatchScheduler, EdgePlan, LengthController, PlanLengths
from nodes.core.verifier import (
    EdgeSettings,
    EdgeStats,
    Evict,
    Forget,
    Member,
    Persist,
    Planning,
    Record,
    Send,
    VerifierCore,
)
from nodes.pacing import Pacer
from nodes.peers import VerifierPeers
from nodes.protocol import Error
from nodes.stream import Sink

__all__ = ["EdgeNode", "EdgeSettings", "EdgeStats"]

# The planner gets the problem and, when the users are the same, the plan in force (in the
# problem's user indices), from which it may re-plan warm.
Planner = Callable[[Problem, Plan | None], Plan]
_T = TypeVar("_T")
_R = TypeVar("_R")


class EdgeNode:
    def __init__(
        self,
        *,
        edge: Edge,
        verifier: VerifyBackend,
        planner: Planner,
        priors: Mapping[int, User],
        settings: EdgeSettings,
        sink: Sink,
        pacer: Pacer | None = None,
        solve_in_thread: bool = False,
        scheduler: BatchScheduler | None = None,
        lengths: LengthController | None = None,
        reports: Sink | None = None,
        ledger: SessionLedger | None = None,
        journal: Sink | None = None,
    ) -> None:
        self.core = VerifierCore(
            edge=edge,
            priors=priors,
            settings=settings,
            scheduler=scheduler or settings.runtime.pipeline,
            lengths=lengths or PlanLengths(),
            vocab=getattr(verifier, "vocab_size", None),
            ledger=ledger,
        )
        self.journal = journal
        self.verifier = verifier
        self.planner = planner
        self.cfg = settings
        self.sink = sink
        self.pacer = pacer or Pacer()
        self.solve_in_thread = solve_in_thread
        self._arrival = trio.Event()
        self._nursery: trio.Nursery | None = None  # where re-plans are solved behind the loop
        self._solving = False
        self._landed: tuple[Planning, Plan, int] | None = None  # a solved re-plan, to adopt
        self._plans_made = 0  # plans put in force: a re-plan asked before another is stale
        self.peers = VerifierPeers(
            self.core, settings, sink, apply=self._apply, wake=self._wake, reports=reports
        )

    @property
    def members(self) -> dict[int, Member]:
        return self.core.members

    @property
    def stats(self) -> EdgeStats:
        return self.core.stats

    @property
    def plan(self) -> EdgePlan | None:
        return self.core.plan

    @property
    def priors(self) -> dict[int, User]:
        return self.core.priors

    def connected(self, uid: int) -> bool:
        """Whether user ``uid`` is in the edge's care with a connection to send on."""
        m = self.core.members.get(uid)
        return m is not None and self.peers.connected(m.conn)

    def _apply(self) -> None:
        """Do what the core decided, in order (a send that fails adds the core's answer)."""
        while actions := self.core.actions():
            for a in actions:
                if isinstance(a, Record):
                    self.sink(a.rec)
                elif isinstance(a, Persist):
                    if self.journal is not None:
                        self.journal(a.entry)
                elif isinstance(a, Send):
                    m = a.member
                    if m.alive and not self.peers.send(m.conn, a.event):
                        self.core.send_failed(m, a.event, trio.current_time())
                        self._apply()  # its eviction now, before the records that follow
                elif isinstance(a, Evict):
                    said = a.said[:1000]
                    error = None if a.code is None else Error(error=int(a.code), message=said)
                    self.peers.close(a.member.conn, error)
                elif isinstance(a, Forget):  # a user left: a batch may wait on it no more
                    self.verifier.drop(a.uid)
                    self._wake()

    def _wake(self) -> None:
        self._arrival.set()
        self._arrival = trio.Event()

    async def serve_stream(self, stream: trio.abc.Stream, proved: str | None = None) -> None:
        """Serve one peer's connection until it ends (``nodes.peers``); never raises for
        anything the peer does. ``proved``: the node its certificate names, if any."""
        await self.peers.serve_stream(stream, proved)

    # --- the pipeline ----------------------------------------------------------------------
    async def run(self) -> None:
        """The loop: prefill new sessions, then verify batches in the scheduler's order."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._loop()

    async def _loop(self) -> None:
        core = self.core
        await self._await_first_users()
        while True:
            if not core.members:
                await self._arrival.wait()
                continue
            await self._prefill()
            self._adopt()
            if core.dirty or core.plan is None:
                await self._replan(core.dirty or "start")
            plan = core.plan
            if plan is None:
                continue  # no plan for anyone: they were refused
            progressed = False
            for slot, batch in core.cycle():
                await self._prefill()
                if core.plan is not plan:
                    break
                if members := core.batch(batch):
                    progressed |= await self._run_batch(slot, members)
            if reason := core.end_cycle():
                await self._replan_behind(reason)
            if not progressed:
                # Nobody is decoding yet (all in prefill or between sessions): wait for news.
                with trio.move_on_after(0.05):
                    await self._arrival.wait()

    async def _await_first_users(self) -> None:
        while not self.core.new_sessions():
            await self._arrival.wait()
        with trio.move_on_after(self.cfg.join_window_s):
            while len(self.core.new_sessions()) < self.cfg.expected_users:
                await self._arrival.wait()

    async def _prefill(self) -> None:
        core = self.core
        if not (new := core.new_sessions()):
            return
        if core.unplanned(new):
            await self._replan(core.dirty or "join")
            new = [m for m in new if m.alive]  # those no plan could take were refused
            if core.plan is None or not new:
                return
        taken = core.take_prompts(new)
        members = [m for m, _ in taken]
        t0, w0 = trio.current_time(), time.perf_counter()

        def prefill(batch: Sequence[tuple[int, Sequence[int]]]) -> tuple[list[int], float]:
            first, ms = self.verifier.prefill(dict(batch))
            return [first[u] for u, _ in batch], ms

        firsts, ms = self._isolating(prefill, members, [(m.uid, p) for m, p in taken])
        await self.pacer.pace(ms, (time.perf_counter() - w0) * 1e3)
        core.prefilled(members, firsts, trio.current_time() - t0, trio.current_time())
        self._apply()

    def _isolating(
        self,
        step: Callable[[Sequence[_T]], tuple[list[_R], float]],
        members: Sequence[Member],
        items: Sequence[_T],
    ) -> tuple[list[_R | None], float]:
        """``step`` on the batch; if it raises, on each member's item alone, and a member
        whose own item fails is closed (a token id outside the model's vocabulary, say):
        what one user sent must not stop the others' batch."""
        try:
            outs, ms = step(items)
            return list(outs), ms
        except Exception as exc:  # find whose item it was
            self.sink({"ev": "batch_failed", "t": trio.current_time(), "error": repr(exc)})
        results: list[_R | None] = []
        total = 0.0
        for m, item in zip(members, items, strict=True):
            try:
                (out,), ms = step([item])
            except Exception as exc:  # this member's own item
                self.core.item_failed(m, exc, trio.current_time())
                self._apply()
                results.append(None)
                continue
            results.append(out)
            total += ms
        return results, total

    async def _run_batch(self, slot: int, members: list[Member]) -> bool:
        core = self.core
        waited = 0.0
        if (deadline := core.deadline(members)) is not None:
            t0 = trio.current_time()
            with trio.move_on_at(deadline):
                while core.waiting_on(members):
                    await self._arrival.wait()
            waited = trio.current_time() - t0
        ready, late = core.close(slot, members, waited, trio.current_time())
        if not ready:
            self._apply()
            return False
        items = [
            VerifyItem(
                user=m.uid,
                base_len=m.conn.position,
                tokens=m.draft.tokens if m.draft is not None else (),
                top_ids=m.draft.top_ids if m.draft is not None else (),
                top_probs=m.draft.top_probs if m.draft is not None else (),
            )
            for m in ready
        ]
        t0, w0 = trio.current_time(), time.perf_counter()
        results, ms = self._isolating(self.verifier.verify, ready, items)
        await self.pacer.pace(ms, (time.perf_counter() - w0) * 1e3)
        core.verified(
            slot,
            ready,
            [len(it.tokens) for it in items],
            [None if r is None else (r.accepted, r.token) for r in results],
            verify_ms=ms,
            busy_s=trio.current_time() - t0,
            waited_s=waited,
            late=late,
            now=trio.current_time(),
        )
        self._apply()
        return True

    # --- planning ------------------------------------------------------------------------
    async def _solve(self, problem: Problem, previous: Plan | None) -> Plan:
        """The planner's answer. On a real clock (``solve_in_thread``) it runs in a worker
        thread, so that the connections go on meanwhile: a solve of 20-200 ms on the event
        loop held the verdicts just queued and stamped the drafts that arrived during it as
        that much later, which the edge then took for a slower link, re-planned for, and
        stalled again. On the simulation's virtual clock it runs in place, taking no time."""
        if not self.solve_in_thread:
            return self.planner(problem, previous)
        return await trio.to_thread.run_sync(self.planner, problem, previous)

    async def _replan(self, reason: str) -> None:
        """Plan now, and wait for it: at the start, and when users joined or left."""
        try:
            if (asked := self.core.planning(reason)) is None:
                return
            plan = await self._solve(asked.problem, asked.previous)
        except Exception as exc:  # a plan that cannot be made: the last one stays in force
            self.core.plan_failed(exc, trio.current_time())
        else:
            self._put_in_force(asked, plan)
        self._apply()

    def _put_in_force(self, asked: Planning, plan: Plan) -> None:
        self.core.planned(asked, plan, trio.current_time())
        self._plans_made += 1

    async def _replan_behind(self, reason: str) -> None:
        """A re-plan the re-plan rule asked for (periodic, or an estimate that moved). On a
        real clock it is solved behind the pipeline, which verifies on with the plan in force
        until the new one lands (``_adopt``); one at a time, and the rule asks again after it
        if it still holds. On the virtual clock it takes no time: planned at once."""
        if self._nursery is None or not self.solve_in_thread:
            await self._replan(reason)
            return
        if self._solving or self._landed is not None:
            return
        if (asked := self.core.planning(reason)) is None:
            return
        self._solving = True
        self._nursery.start_soon(self._solve_behind, asked, self._plans_made)

    async def _solve_behind(self, asked: Planning, made: int) -> None:
        try:
            plan = await self._solve(asked.problem, asked.previous)
        except Exception as exc:  # a plan that cannot be made: the last one stays in force
            self.core.plan_failed(exc, trio.current_time())
            self._apply()
        else:
            self._landed = (asked, plan, made)
        finally:
            self._solving = False

    def _adopt(self) -> None:
        """Put a re-plan solved behind the pipeline in force, at a cycle's boundary, unless
        it is stale: the users changed meanwhile, or another plan came first."""
        if self._landed is None:
            return
        asked, plan, made = self._landed
        self._landed = None
        if made == self._plans_made and set(asked.uids) == set(self.core.members):
            self._put_in_force(asked, plan)
            self._apply()
