"""``--time-scale auto``: the smallest time scale at which this host can stand in for the
profiled devices, from a short calibration of its own draft and verify steps.

Layer: emu (orchestration: ``calibrate`` loads and runs the scenario's models). The choice
itself, ``choose_time_scale``, is pure: it takes each step's measured wall time against the
time its profile gives it, and how much of the modelled time the nodes spend in it.

A scale ``S`` runs every modelled time ``S`` times slower on the wall (``nodes.pacing``). It
gives a step headroom when (1) each step, alone, fits in its padded time with a margin,
``S >= HEADROOM * wall / profile``; and (2) all the nodes together keep the host's cores
busy no more than ``LOAD_LIMIT`` of the time, the sum over steps of ``copies * duty * threads
* wall / profile / S`` (duty: the share of the cycle a node spends in the step, from each
policy's plan). The chosen scale is the smallest on ``LADDER`` that meets both for every
policy to be run, so all policies run on the same clock.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emu.planner import Plan, evaluate
from emu.planner.model import Edge, Problem
from emu.scenario import Scenario
from nodes.backends import DraftBackend, VerifyBackend, VerifyItem

__all__ = [
    "HEADROOM",
    "LADDER",
    "LOAD_LIMIT",
    "StepLoad",
    "StepShapes",
    "TimeScale",
    "auto_time_scale",
    "calibrate",
    "choose_time_scale",
    "median_wall_ms",
    "step_shapes",
]

HEADROOM = 1.5  # a step alone may take up to 1/1.5 of its padded time
LOAD_LIMIT = 0.75  # of the host's cores, all nodes together
LADDER = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 100.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLoad:
    """One kind of compute step as this host runs it."""

    name: str  # "verify 4x7", "draft 7"
    wall_ms: float  # median wall time here, the step alone
    profile_ms: float  # the time its profile gives it (what it stands for)
    duty: float  # share of the modelled time one node spends in it, at most 1
    threads: int  # cores it keeps busy while it runs
    copies: int = 1  # nodes running it at once (every user drafts)

    @property
    def ratio(self) -> float:
        return self.wall_ms / self.profile_ms if self.profile_ms > 0 else 0.0

    @property
    def load(self) -> float:
        """Cores it keeps busy on average at scale 1."""
        return self.copies * min(self.duty, 1.0) * self.threads * self.ratio


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeScale:
    scale: float
    why: str
    steps: tuple[StepLoad, ...] = ()


def choose_time_scale(steps: Sequence[StepLoad], cores: int) -> TimeScale:
    """The smallest scale on ``LADDER`` with headroom for every step and for the whole host."""
    if not steps:
        return TimeScale(scale=1.0, why="no compute step to pad (nothing to calibrate)")
    worst = max(steps, key=lambda s: s.ratio)
    need_step = HEADROOM * worst.ratio
    load = sum(s.load for s in steps)
    need_load = load / (LOAD_LIMIT * cores)
    need = max(need_step, need_load, 1.0)
    scale = next((s for s in LADDER if s >= need), LADDER[-1])
    why = (
        f"the slowest step here, {worst.name}, takes {worst.ratio:.2f}x its profile (headroom "
        f"{HEADROOM:g}x: scale >= {need_step:.2f}); the nodes together keep {load:.2f} of "
        f"{cores} cores busy at scale 1 (limit {LOAD_LIMIT:.0%}: scale >= {need_load:.2f})"
    )
    if need > LADDER[-1]:
        why += f"; past the largest scale, {LADDER[-1]:g}: overruns will follow"
    return TimeScale(scale=scale, why=why, steps=tuple(steps))


@dataclass(frozen=True, slots=True)
class StepShapes:
    verify: dict[tuple[int, int], float]  # (batch, padded length) -> largest duty
    draft: dict[int, float]  # draft length -> largest duty of one user


def step_shapes(problem: Problem, plans: Sequence[Plan]) -> StepShapes:
    """The verify passes (batch size, padded length) and draft steps (length) the plans run,
    each with the largest share of a cycle it takes in any of them."""
    verify: dict[tuple[int, int], float] = {}
    draft: dict[int, float] = {}
    for plan in plans:
        ev = evaluate(problem, plan)
        if not math.isfinite(ev.cycle_ms) or ev.cycle_ms <= 0:
            continue
        duty_v = sum(ev.verify_ms) / ev.cycle_ms
        for batch in plan.batches:
            L = max(1, *(plan.draft_len[u] for u in batch))
            key = (len(batch), L)
            verify[key] = max(verify.get(key, 0.0), duty_v)
        for u, length in enumerate(plan.draft_len):
            if length > 0:
                duty_d = length * float(problem.draft_ms[u]) / ev.cycle_ms
                draft[length] = max(draft.get(length, 0.0), duty_d)
    return StepShapes(verify=verify, draft=draft)


def median_wall_ms(
    step: Callable[[], object], repeats: int, reset: Callable[[], object] = lambda: None
) -> float:
    """The median wall time of ``step`` [ms]; ``reset`` (untimed) runs before each call."""
    reset()
    step()  # warm: the first call allocates
    ts = []
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def calibrate(
    problem: Problem,
    plans: Sequence[Plan],
    *,
    prompt: Sequence[int],
    verifier: VerifyBackend,
    drafter: DraftBackend,
    verify_profile: Callable[[int, int, int], float],
    draft_profile: Callable[[int, int], float],
    verify_threads: int,
    draft_threads: int,
    cores: int | None = None,
    repeats: int = 3,
) -> TimeScale:
    """Time the plans' steps on this host's backends (their ``latency`` unset, so that they
    take their real time) and choose. ``prompt`` stands for every user's context."""
    shapes = step_shapes(problem, plans)
    prefix = len(prompt)
    steps: list[StepLoad] = []
    for (b, L), duty in sorted(shapes.verify.items()):
        users = list(range(1_000_000, 1_000_000 + b))  # ids no real user has
        first: dict[int, int] = {}

        def reset(users: list[int] = users, first: dict[int, int] = first) -> None:
            for u in users:  # back to the bare prompt: every repeat is the same pass
                verifier.drop(u)
            first.update(verifier.prefill(dict.fromkeys(users, prompt))[0])

        def verify(users: list[int] = users, first: dict[int, int] = first, n: int = L) -> None:
            verifier.verify(
                [VerifyItem(user=u, base_len=prefix + 1, tokens=(first[u],) * n) for u in users]
            )

        wall = median_wall_ms(verify, repeats, reset)
        for u in users:
            verifier.drop(u)
        steps.append(
            StepLoad(
                name=f"verify {b}x{L}",
                wall_ms=wall,
                profile_ms=verify_profile(b, L, prefix),
                duty=duty,
                threads=verify_threads,
            )
        )
    drafter.start(tuple(prompt))
    for length, duty in sorted(shapes.draft.items()):

        def draft(n: int = length) -> None:
            out = drafter.draft(n)
            drafter.commit(0, out.tokens[0] if out.tokens else 0)

        steps.append(
            StepLoad(
                name=f"draft {length}",
                wall_ms=median_wall_ms(draft, repeats),
                profile_ms=draft_profile(length, prefix),
                duty=duty,
                threads=draft_threads,
                copies=problem.size,
            )
        )
    return choose_time_scale(steps, cores or os.cpu_count() or 1)


def _fastest(
    profiles: Sequence[Callable[[int, int, int], float]],
) -> Callable[[int, int, int], float]:
    return lambda b, length, prefix: min(p(b, length, prefix) for p in profiles)


def auto_time_scale(
    sc: Scenario,
    problem: Problem,
    policies: Sequence[str],
    timing: str,
    verifiers: Sequence[Edge] = (),
) -> TimeScale:
    """``--time-scale auto`` for a run: 1 where nothing is padded to a profile (real timing,
    synthetic models), else the calibration of the scenario's models against its profile (of
    the ``verifiers``' compute, the fastest: the profile hardest to keep; none given:
    ``problem.edge``)."""
    if timing != "profile":
        return TimeScale(scale=1.0, why="real timing: compute takes what it takes, unpadded")
    if sc.models.kind == "synthetic":
        return TimeScale(scale=1.0, why="synthetic models: no compute to pad")
    import torch

    from emu.deploy.runtime import memo_planner, model_setup
    from emu.models.timing import draft_time, verify_threads, verify_time
    from nodes.hf_verifier import HFVerifier
    from nodes.llama_drafter import LlamaDrafter

    setup = model_setup(sc)
    plans = [memo_planner(p)(problem, None) for p in policies]
    threads = verify_threads(sc, users_on_host=problem.size)  # as the edge node will run it
    runner_threads = torch.get_num_threads()  # torch's threads are the process's: restored below
    verifier = HFVerifier(
        setup.target, device=setup.device, dtype=sc.models.dtype or None, threads=threads
    )
    drafter = LlamaDrafter(setup.draft, n_ctx=setup.n_ctx, threads=sc.models.draft_threads)
    # A context as long as the planner expects one (a prompt and half a session), of real text.
    text = [t for p in setup.prompts for t in p]
    prompt = (text * (1 + setup.prior_prefix() // len(text)))[: setup.prior_prefix()]
    try:
        return calibrate(
            problem,
            plans,
            prompt=prompt,
            verifier=verifier,
            drafter=drafter,
            verify_profile=_fastest([verify_time(e) for e in verifiers or (problem.edge,)]),
            draft_profile=draft_time(problem.users[0]),
            verify_threads=threads,
            draft_threads=sc.models.draft_threads,
        )
    finally:
        torch.set_num_threads(runner_threads)  # the greedy check runs alone, on every core
