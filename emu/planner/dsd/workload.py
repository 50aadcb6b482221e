"""What the drafters' users ask and when: DSD's closed-loop conversation workload (dsd.md
sections 3.1 and 6).

Layer: pure (emu.planner). No I/O: a trace comes in as text (``parse_trace``) or is made
(``synthetic_trace``); randomness only from the ``numpy.random.Generator`` passed in.

- A conversation is a prompt of P tokens and an answer of A tokens.
- The authors' trace (GSM8K, 41 records: P 32-119, mean 74; A 80-194, mean 140) is
  regenerated for a run as max(ceil(0.5 x horizon [s] x the drafters' summed capability),
  #drafters) records, taken from the trace in turn, at arrival times with exponential gaps
  rescaled so the last arrival falls at the horizon (the authors' simulator fixes the count,
  not a rate).
- Between conversations a user thinks: lognormal with mean 1700 ms and cv 0.6, at least
  220 ms.
- Without a trace: A ~ N(420, 120) rounded and clipped to [96, 960]; P = 24 + c x (512 - 24)
  (truncated) for a drafter of capability c clipped to [0, 1] (the authors'
  ``prompt_scale_by_capability``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError, check_in

__all__ = [
    "GSM8K_ANSWER",
    "GSM8K_PROMPT",
    "GSM8K_RECORDS",
    "Arrival",
    "NoTraceWorkload",
    "Request",
    "ThinkTime",
    "parse_trace",
    "regenerate",
    "regenerated_count",
    "synthetic_trace",
]

GSM8K_RECORDS = 41
GSM8K_PROMPT = (32, 119, 74.0)  # least, most, mean [tokens]
GSM8K_ANSWER = (80, 194, 140.0)
PER_CAPABILITY_RPS = 0.5  # conversations a second per unit of drafter capability


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One user turn: a prompt of ``prompt_tokens`` P and an answer of ``answer_tokens`` A."""

    prompt_tokens: int
    answer_tokens: int

    def __post_init__(self) -> None:
        check_in("dsd.trace prompt_tokens", self.prompt_tokens, 1, math.inf, "at least 1")
        check_in("dsd.trace answer_tokens", self.answer_tokens, 1, math.inf, "at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """A regenerated trace record: its ``request`` may start at ``at_ms`` [ms]."""

    at_ms: float
    request: Request


def _exact_integers(
    rng: np.random.Generator, n: int, shape: tuple[int, int, float], *, where: str
) -> npt.NDArray[np.int64]:
    """``n`` integers in [lo, hi], lo and hi among them, summing to round(n x mean), for
    ``shape`` = (lo, hi, mean)."""
    lo, hi, mean = shape
    total = round(n * mean)
    if n < 2 or not (n - 1) * lo + hi <= total <= lo + (n - 1) * hi:
        raise ConfigError(
            f"{where} must take {n} records (at least 2) in [{lo}, {hi}] with mean {mean:g}: "
            f"no such records"
        )
    x = rng.integers(lo, hi, size=n, endpoint=True)
    x[0], x[1] = lo, hi
    diff = total - int(x.sum())
    while diff:  # move interior values a step at a time toward the total; each has room
        step = 1 if diff > 0 else -1
        room = np.flatnonzero(x[2:] < hi if step > 0 else x[2:] > lo) + 2
        pick = rng.choice(room, size=min(abs(diff), room.size), replace=False)
        x[pick] += step
        diff -= step * pick.size
    return rng.permutation(x)


def synthetic_trace(
    rng: np.random.Generator,
    *,
    records: int = GSM8K_RECORDS,
    prompt: tuple[int, int, float] = GSM8K_PROMPT,
    answer: tuple[int, int, float] = GSM8K_ANSWER,
) -> tuple[Request, ...]:
    """A stand-in for the authors' GSM8K trace, which draftnet does not have: ``records``
    conversations whose prompts span exactly ``prompt`` = (least, most, mean) tokens and
    answers ``answer`` (the mean exact to the nearest total), otherwise uniform at random.
    It matches the trace's ranges and means, not its individual records."""
    p = _exact_integers(rng, records, prompt, where="dsd.trace.prompt_tokens")
    a = _exact_integers(rng, records, answer, where="dsd.trace.answer_tokens")
    return tuple(
        Request(prompt_tokens=int(pi), answer_tokens=int(ai)) for pi, ai in zip(p, a, strict=True)
    )


def parse_trace(text: str, *, where: str = "dsd.trace") -> tuple[Request, ...]:
    """A trace from lines ``P,A`` (blank lines and ``#`` comments skipped)."""
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not all(f.isdigit() and int(f) > 0 for f in fields):
            raise ConfigError(
                f"{where} line {n} must be 'prompt_tokens,answer_tokens' (two positive "
                f"integers), got {line!r}"
            )
        out.append(Request(prompt_tokens=int(fields[0]), answer_tokens=int(fields[1])))
    if not out:
        raise ConfigError(f"{where} must hold at least one record, got none")
    return tuple(out)


def regenerated_count(
    capabilities: Sequence[float],
    *,
    horizon_s: float,
    per_capability_rps: float = PER_CAPABILITY_RPS,
) -> int:
    """How many records a run of ``horizon_s`` [s] replays: max(ceil(rate x horizon x sum of
    capabilities), #drafters), so every drafter has at least one conversation."""
    if not horizon_s > 0:
        raise ConfigError(f"dsd.horizon_s must be > 0, got {horizon_s!r}")
    check_in("dsd.per_capability_rps", per_capability_rps, 0, math.inf, ">= 0")
    for c in capabilities:
        check_in("dsd.drafter.capability", c, 0, math.inf, ">= 0")
    wanted = math.ceil(per_capability_rps * horizon_s * math.fsum(capabilities))
    return max(wanted, len(capabilities))


def regenerate(
    trace: Sequence[Request],
    capabilities: Sequence[float],
    rng: np.random.Generator,
    *,
    horizon_s: float,
    per_capability_rps: float = PER_CAPABILITY_RPS,
) -> tuple[Arrival, ...]:
    """The run's records (``regenerated_count``), the trace's in turn, at exponential gaps
    rescaled so the last arrival is at the horizon; the arrivals never decrease."""
    if not trace:
        raise ConfigError("dsd.trace must hold at least one record, got 0")
    count = regenerated_count(
        capabilities, horizon_s=horizon_s, per_capability_rps=per_capability_rps
    )
    if count == 0:
        return ()
    t = np.cumsum(rng.exponential(1.0, size=count))
    at_ms = t * (1000.0 * horizon_s / t[-1])
    return tuple(
        Arrival(at_ms=float(at_ms[i]), request=trace[i % len(trace)]) for i in range(count)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkTime:
    """A user's pause between conversations [ms]: max(``min_ms``, X), X lognormal with mean
    ``mean_ms`` and coefficient of variation ``cv`` (the floor raises the mean slightly)."""

    mean_ms: float = 1700.0
    cv: float = 0.6
    min_ms: float = 220.0

    def __post_init__(self) -> None:
        if not self.mean_ms > 0:
            raise ConfigError(f"dsd.think_time.mean_ms must be > 0, got {self.mean_ms!r}")
        check_in("dsd.think_time.cv", self.cv, 0, math.inf, ">= 0")
        check_in("dsd.think_time.min_ms", self.min_ms, 0, math.inf, ">= 0")

    @property
    def sigma(self) -> float:
        """The underlying normal's deviation: sigma^2 = ln(1 + cv^2)."""
        return math.sqrt(math.log1p(self.cv**2))

    @property
    def mu(self) -> float:
        """The underlying normal's mean: ln(mean) - sigma^2 / 2."""
        return math.log(self.mean_ms) - self.sigma**2 / 2

    def sample_ms(self, rng: np.random.Generator) -> float:
        return max(self.min_ms, float(rng.lognormal(self.mu, self.sigma)))

    def samples_ms(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
        return np.maximum(self.min_ms, rng.lognormal(self.mu, self.sigma, size=n))


@dataclass(frozen=True, slots=True, kw_only=True)
class NoTraceWorkload:
    """Conversations without a trace: A ~ N(``answer_tokens_mean``, ``answer_tokens_std``)
    rounded and clipped to ``answer_tokens_range``; P from the drafter's capability across
    ``prompt_tokens_range`` (a weaker drafter gets shorter prompts)."""

    answer_tokens_mean: float = 420.0
    answer_tokens_std: float = 120.0
    answer_tokens_range: tuple[int, int] = (96, 960)
    prompt_tokens_range: tuple[int, int] = (24, 512)

    def __post_init__(self) -> None:
        check_in("dsd.answer_tokens_std", self.answer_tokens_std, 0, math.inf, ">= 0")
        for name in ("answer_tokens_range", "prompt_tokens_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"dsd.{name} must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")

    def prompt_tokens(self, capability: float) -> int:
        lo, hi = self.prompt_tokens_range
        return int(lo + min(max(capability, 0.0), 1.0) * (hi - lo))

    def answer_tokens(self, rng: np.random.Generator) -> int:
        lo, hi = self.answer_tokens_range
        a = round(float(rng.normal(self.answer_tokens_mean, self.answer_tokens_std)))
        return min(max(a, lo), hi)

    def request(self, capability: float, rng: np.random.Generator) -> Request:
        return Request(
            prompt_tokens=self.prompt_tokens(capability), answer_tokens=self.answer_tokens(rng)
        )
