"""Which clock DSD's simulation can afford: the same closed loop of rounds (each drafter
drafts, sends, waits for its verifier's batch, hears back) run as trio tasks on trio's virtual
clock and as a discrete-event loop (a heap of timed calls), counted in rounds per wall second.

Issue 18 asks for 80 drafters and 20 verifiers over 10 simulated minutes in under a minute. The
two loops model the same thing (their round counts must agree); the figures say how much of
that minute each leaves for the real work of a round (the cores: window, acceptance, queue,
accounting).

    python scripts/bench_dsd_clock.py [--drafters 80] [--verifiers 20] [--seconds 60]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

DRAFT_S = 0.040  # a window of drafts
LINK_S = 0.008  # one way
BATCH = 12
WINDOW_S = 0.0003
VERIFY_S = (0.020, 0.002)  # a batch: fixed + per job


def trio_rounds(drafters: int, verifiers: int, seconds: float) -> int:
    rounds = 0

    async def verifier(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        while True:
            batch = [await inbox.receive()]
            with trio.move_on_after(WINDOW_S):
                while len(batch) < BATCH:
                    batch.append(await inbox.receive())
            await trio.sleep(VERIFY_S[0] + VERIFY_S[1] * len(batch))
            for reply in batch:
                reply.send_nowait(1)

    async def drafter(i: int, inboxes: list[trio.MemorySendChannel[Any]]) -> None:
        nonlocal rounds
        send, receive = trio.open_memory_channel[int](1)
        while True:
            await trio.sleep(DRAFT_S + LINK_S)
            await inboxes[i % len(inboxes)].send(send)
            await receive.receive()
            await trio.sleep(LINK_S)
            rounds += 1

    async def main() -> None:
        channels = [trio.open_memory_channel[Any](10_000) for _ in range(verifiers)]
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _, inbox in channels:
                    nursery.start_soon(verifier, inbox)
                for i in range(drafters):
                    nursery.start_soon(drafter, i, [s for s, _ in channels])

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return rounds


def event_rounds(drafters: int, verifiers: int, seconds: float) -> int:
    heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
    order = itertools.count()
    queues: list[list[int]] = [[] for _ in range(verifiers)]
    busy = [False] * verifiers
    opened: list[float | None] = [None] * verifiers
    rounds = 0

    def at(t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(heap, (t, next(order), fn, args))

    def sent(now: float, i: int) -> None:
        at(now + DRAFT_S + LINK_S, arrive, i % verifiers, i)

    def arrive(now: float, v: int, i: int) -> None:
        queues[v].append(i)
        poll(now, v)

    def poll(now: float, v: int) -> None:
        if busy[v] or not queues[v]:
            return
        if opened[v] is None:
            opened[v] = now
            at(now + WINDOW_S, poll, v)
        start = opened[v]
        if len(queues[v]) < BATCH and start is not None and now < start + WINDOW_S:
            return
        batch, queues[v][:] = queues[v][:BATCH], queues[v][BATCH:]
        busy[v], opened[v] = True, None
        at(now + VERIFY_S[0] + VERIFY_S[1] * len(batch), done, v, batch)

    def done(now: float, v: int, batch: list[int]) -> None:
        nonlocal rounds
        busy[v] = False
        for i in batch:
            rounds += 1
            at(now + LINK_S, sent, i)
        poll(now, v)

    for i in range(drafters):
        at(0.0, sent, i)
    while heap:
        now, _, fn, args = heapq.heappop(heap)
        if now > seconds:
            break
        fn(now, *args)
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drafters", type=int, default=80)
    ap.add_argument("--verifiers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    print(f"{a.drafters} drafters, {a.verifiers} verifiers, {a.seconds:g} simulated s")
    print("| loop | rounds | wall s | rounds / wall s | 10 min of 80 x 20 would take |")
    print("|---|---|---|---|---|")
    for name, run in (("trio tasks", trio_rounds), ("discrete events", event_rounds)):
        t = time.perf_counter()
        n = run(a.drafters, a.verifiers, a.seconds)
        wall = time.perf_counter() - t
        ten_min = wall * 600.0 / a.seconds * (80 / a.drafters)
        print(f"| {name} | {n} | {wall:.2f} | {n / wall:,.0f} | {ten_min:.0f} s |")


if __name__ == "__main__":
    main()
