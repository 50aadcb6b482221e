"""Random task sets for the heterogeneous-edge system (hetnet.md section 6's ranges): what its
tests, benchmarks and preset draw from a seed.

Layer: pure (emu.planner).
"""

from __future__ import annotations

import numpy as np

from emu.planner.hetnet.model import HetnetProblem, Task
from emu.planner.model import LatencyModel, ModelArch

__all__ = ["DRAFT", "TARGET", "random_problem", "random_tasks"]

# TinyLlama-1.1B drafting for LLaMA-7B (the paper's pairs; GQA ignored, as the note says).
DRAFT = ModelArch(layers=22, hidden=2048, ffn=5632, name="TinyLlama-1.1B")
TARGET = ModelArch(layers=32, hidden=4096, ffn=11008, name="LLaMA-7B")


def random_tasks(
    rng: np.random.Generator,
    count: int,
    *,
    input_len: tuple[int, int] = (32, 512),
    output_len: tuple[int, int] = (64, 512),
    distance_m: tuple[float, float] = (20.0, 250.0),
    alpha: tuple[float, float] = (0.6, 0.85),
) -> tuple[Task, ...]:
    """``count`` tasks, each length, distance and acceptance uniform in its range."""
    return tuple(
        Task(
            input_len=int(rng.integers(input_len[0], input_len[1], endpoint=True)),
            output_len=int(rng.integers(output_len[0], output_len[1], endpoint=True)),
            distance_m=float(rng.uniform(*distance_m)),
            alpha=float(rng.uniform(*alpha)),
        )
        for _ in range(count)
    )


def random_problem(rng: np.random.Generator, count: int, **fields: object) -> HetnetProblem:
    """``count`` random tasks on the paper-like pair with affine pass times (a 1.1B draft at
    2e-11 ms/FLOP + 4 ms, a 7B verify at 5e-12 ms/FLOP + 20 ms), the other fields as given."""
    args: dict[str, object] = {
        "tasks": random_tasks(rng, count),
        "draft": DRAFT,
        "target": TARGET,
        "draft_latency": LatencyModel(c_ms_per_flop=2e-11, beta_ms=4.0),
        "verify_latency": LatencyModel(c_ms_per_flop=5e-12, beta_ms=20.0),
    }
    return HetnetProblem(**(args | fields))  # type: ignore[arg-type]
