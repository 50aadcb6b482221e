"""Compute time as the scenario's profiles model it, and the prompts every runner feeds its users.

Layer: emu (models).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from emu.planner.model import Edge, User, draft_flops, verify_flops
from emu.scenario import Scenario

__all__ = ["draft_time", "synthetic_prompts", "user_prompts", "verify_threads", "verify_time"]


def verify_threads(sc: Scenario, *, users_on_host: int) -> int:
    """The verifier's torch threads on a CPU: ``models.verify_threads``, or (0) the cores left
    by the ``users_on_host`` drafters that share its host (the emulation's: every user), at
    least one. More threads than free cores is the worst choice there is: torch's threads wait
    for each other at every operator, so one descheduled thread stalls them all (a verify pass
    of the embedded target went from 0.1 s to several with one core kept busy elsewhere)."""
    if sc.models.verify_threads:
        return sc.models.verify_threads
    cores = os.cpu_count() or 1
    return max(1, cores - users_on_host * sc.models.draft_threads)


def verify_time(edge: Edge) -> Callable[[int, int, int], float]:
    """A real verifier's profiled time [ms]: G_v(b, F_v(L, I)) of the scenario's edge."""
    return lambda b, L, I: edge.latency(float(b), float(verify_flops(edge.target, L, I)))


def draft_time(user: User) -> Callable[[int, int], float]:
    """A real drafter's profiled time [ms] for n tokens at a prefix: n G_m(1, F_d(prefix))."""
    return lambda n, prefix: n * user.device(1.0, float(draft_flops(user.draft, prefix)))


def user_prompts(prompts: Sequence[Sequence[int]], i: int, users: int) -> Iterator[Sequence[int]]:
    """User i's sessions: prompts i, i + M, i + 2M, ... (cyclically), so that every policy,
    and every runner, meets the same prompts."""
    return (prompts[(i + k * users) % len(prompts)] for k in itertools.count())


def synthetic_prompts(rng: np.random.Generator, length: int) -> Iterator[tuple[int, ...]]:
    """Random token ids of a user's configured prefix length, one prompt per session."""
    while True:
        yield tuple(int(t) for t in rng.integers(0, 32000, size=max(1, length)))
