"""``--time-scale auto``: the choice from measured step times (pure), and the calibration on
backends whose timing is known (they sleep a set multiple of their profile)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from emu.planner import plan_for
from emu.runners.timescale import (
    HEADROOM,
    LADDER,
    StepLoad,
    calibrate,
    choose_time_scale,
    step_shapes,
)
from emu.scenario import load_scenario
from nodes.backends import DraftOut, VerifyItem, VerifyOut


def _step(ratio: float, duty: float = 0.1, threads: int = 1, copies: int = 1) -> StepLoad:
    return StepLoad(
        name="s", wall_ms=10.0 * ratio, profile_ms=10.0, duty=duty, threads=threads, copies=copies
    )


@pytest.mark.parametrize(
    ("steps", "cores", "scale"),
    [
        ([_step(0.3)], 2, 1.0),  # a fast host needs nothing
        ([_step(0.7)], 2, 1.5),  # 0.7 x 1.5 headroom = 1.05
        ([_step(2.0)], 2, 3.0),  # twice as slow as the profile, with headroom
        # Alone each step fits, but 4 drafters at half duty and a 2-thread verifier busy all
        # the time keep 1.2 + 1.8 = 3 cores busy: 3 / (0.75 x 2) = 2.
        ([_step(0.6, 0.5, 1, 4), _step(0.9, 1.0, 2)], 2, 2.0),
        ([_step(0.6, 0.5, 1, 4), _step(0.9, 1.0, 2)], 8, 1.5),  # more cores: the step bound
        ([], 2, 1.0),
    ],
)
def test_the_smallest_scale_with_headroom(steps: list[StepLoad], cores: int, scale: float) -> None:
    chosen = choose_time_scale(steps, cores)
    assert chosen.scale == scale
    assert chosen.why


def test_a_host_slower_than_the_largest_scale_says_so() -> None:
    chosen = choose_time_scale([_step(1000.0)], 2)
    assert chosen.scale == LADDER[-1] and "overruns" in chosen.why


class _SlowVerifier:
    """A verifier that takes ``factor`` times the profile's time (sleeping, not computing)."""

    def __init__(self, factor: float, profile_ms: float) -> None:
        self.factor, self.profile_ms = factor, profile_ms
        self.calls: list[tuple[int, int]] = []

    def prefill(self, prompts: dict[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        return dict.fromkeys(prompts, 1), 0.0

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        self.calls.append((len(batch), max(len(it.tokens) for it in batch)))
        time.sleep(self.factor * self.profile_ms / 1e3)
        return [VerifyOut(accepted=0, token=1) for _ in batch], 0.0

    def drop(self, user: int) -> None:
        pass


class _SlowDrafter:
    def __init__(self, factor: float, per_token_ms: float) -> None:
        self.factor, self.per_token_ms = factor, per_token_ms

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def draft(self, n: int) -> DraftOut:
        time.sleep(self.factor * n * self.per_token_ms / 1e3)
        return DraftOut(tokens=(1,) * n, compute_ms=0.0)

    def commit(self, accepted: int, token: int) -> None:
        pass


def _calibrated(
    factor: float, verify_ms: float = 4.0, token_ms: float = 0.5
) -> tuple[float, _SlowVerifier]:
    """Calibrate on backends ``factor`` times as slow as a profile of ``verify_ms`` a verify
    step and ``token_ms`` a drafted token."""
    problem = load_scenario(preset="dipsd-paper", overrides={"users.count": 4}).problem()
    plans = [plan_for(p, problem, None) for p in ("dipsd", "ad-batch")]
    verifier = _SlowVerifier(factor, verify_ms)
    chosen = calibrate(
        problem,
        plans,
        prompt=[1] * 64,
        verifier=verifier,  # type: ignore[arg-type]
        drafter=_SlowDrafter(factor, token_ms),  # type: ignore[arg-type]
        verify_profile=lambda b, L, I: verify_ms,
        draft_profile=lambda n, prefix: token_ms * n,
        verify_threads=1,
        draft_threads=1,
        cores=64,  # the step bound alone, whatever this machine has
        repeats=3,
    )
    return chosen.scale, verifier


def test_a_host_twice_as_slow_as_the_profile_gets_a_scale_of_at_least_two() -> None:
    scale, verifier = _calibrated(2.0)
    assert scale >= 2.0 and scale >= HEADROOM * 2.0
    # Every verify shape the plans run was timed (ad-batch: all four users, one token).
    assert (4, 1) in verifier.calls


def test_a_host_much_faster_than_the_profile_runs_at_scale_one() -> None:
    """A profile in hundreds of ms, so that a busy host's scheduling delays (a few ms on top
    of each step's sleep) stay small beside it: at a 0.5 ms profile a few ms late reads as a
    host several times too slow (this test failed so with both cores busy); at 200 ms the
    10 ms step and its delay still read as a host many times faster."""
    scale, _ = _calibrated(0.05, verify_ms=200.0, token_ms=20.0)
    assert scale == 1.0


def test_the_shapes_are_the_plans_steps_with_their_share_of_a_cycle() -> None:
    problem = load_scenario(preset="dipsd-paper", overrides={"users.count": 4}).problem()
    plan = plan_for("ad-batch", problem, None)
    shapes = step_shapes(problem, [plan])
    assert list(shapes.verify) == [(4, 1)]  # one batch of every user, one token each
    assert shapes.verify[(4, 1)] == pytest.approx(1.0)  # the edge verifies all the cycle
    assert shapes.draft == {}  # nobody drafts


@pytest.mark.parametrize(
    "case",
    [
        # cores, users, llama.cpp threads each, models.verify_threads, the verifier's threads
        (2, 4, 1, 0, 1),  # the default main job here: drafters fill the host, one thread left
        (16, 4, 1, 0, 12),
        (16, 4, 2, 0, 8),
        (2, 1, 1, 0, 1),
        (2, 4, 1, 3, 3),  # what the scenario says wins
    ],
)
def test_the_verifier_never_takes_more_threads_than_the_drafters_leave(
    monkeypatch: pytest.MonkeyPatch, case: tuple[int, int, int, int, int]
) -> None:
    from emu.models.timing import verify_threads

    cores, users, draft_threads, given, threads = case
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    sc = load_scenario(
        overrides={"models.draft_threads": draft_threads, "models.verify_threads": given}
    )
    assert verify_threads(sc, users_on_host=users) == threads
