#!/usr/bin/env python3
"""The gross-regression gate: the embedded pair's draft step and verify pass, timed against a
calibration measured in the same run, compared with the ratios recorded in the repository.

A benchmark with a wide margin, not a timed test: it prints every figure, and exits 1 only when
a ratio is ``--margin`` (5) times worse than the recorded one, which no noisy neighbour does but
a broken dependency does (transformers 5.24 with the old cache call: 25-50x). The calibration
is a fixed float32 matmul on numpy, single-threaded like the draft step, so a slower or busier
machine moves both sides. CI runs it after the tests (.ci/run); under a minute.

    .venv/bin/python scripts/bench_gate.py             # check against scripts/bench_gate.json
    .venv/bin/python scripts/bench_gate.py --record    # write the ratios of this run there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
# One thread everywhere, before numpy loads its BLAS: the calibration and the steps alike.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from emu.runners.timescale import median_wall_ms  # noqa: E402

RECORD = Path(__file__).with_suffix(".json")
DRAFT_TOKENS = 8
VERIFY_BATCH, VERIFY_TOKENS = 4, 4


def calibration_ms(repeats: int) -> float:
    """A fixed 384 x 384 float32 matmul, 20 times, on one thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((384, 384), dtype=np.float32)
    b = rng.standard_normal((384, 384), dtype=np.float32)

    def step() -> None:
        for _ in range(20):
            a @ b

    return median_wall_ms(step, repeats)  # after one untimed call, as every step here


def measure(repeats: int) -> dict[str, float]:
    from emu.models.embedded import builtin_prompts, embedded_pair, prompt_ids
    from nodes.backends import VerifyItem
    from nodes.hf_verifier import HFVerifier
    from nodes.llama_drafter import LlamaDrafter

    pair = embedded_pair()
    prompt = prompt_ids(pair.target, builtin_prompts()[:1])[0]
    drafter = LlamaDrafter(pair.draft, threads=1)
    drafter.start(prompt)

    def draft() -> None:
        out = drafter.draft(DRAFT_TOKENS)
        drafter.commit(0, out.tokens[0])  # all rejected: the prefix stays where it is

    verifier = HFVerifier(pair.target, device="cpu")
    users = list(range(VERIFY_BATCH))
    first, _ = verifier.prefill(dict.fromkeys(users, prompt))

    def verify() -> None:
        items = [
            VerifyItem(
                user=u,
                base_len=len(verifier.sessions[u].ids),
                tokens=(first[u],) * VERIFY_TOKENS,
            )
            for u in users
        ]
        verifier.verify(items)

    out = {
        "calibration_ms": calibration_ms(repeats),
        "draft_ms": median_wall_ms(draft, repeats),
        "verify_ms": median_wall_ms(verify, repeats),
    }
    out["calibration_ms"] = min(out["calibration_ms"], calibration_ms(repeats))  # the quieter
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help=f"write this run's ratios to {RECORD}")
    ap.add_argument("--margin", type=float, default=5.0, help="fail past this many times worse")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    m = measure(args.repeats)
    ratios = {
        "draft_step": m["draft_ms"] / m["calibration_ms"],
        "verify_pass": m["verify_ms"] / m["calibration_ms"],
    }
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"calibration (numpy matmul): {m['calibration_ms']:.2f} ms")
    print(f"draft step ({DRAFT_TOKENS} tokens, 1 thread): {m['draft_ms']:.2f} ms")
    print(
        f"verify pass ({VERIFY_BATCH} x {VERIFY_TOKENS} tokens, 1 thread): {m['verify_ms']:.2f} ms"
    )
    if args.record:
        RECORD.write_text(json.dumps({"ratios": ratios, "measured": m}, indent=2) + "\n")
        print(f"recorded in {RECORD}")
        return 0
    recorded = json.loads(RECORD.read_text())["ratios"]
    failed = False
    for name, ratio in ratios.items():
        worse = ratio / recorded[name]
        verdict = "ok" if worse < args.margin else f"FAIL (over {args.margin:g}x)"
        failed |= worse >= args.margin
        print(
            f"{name}: {ratio:.2f} x calibration, recorded {recorded[name]:.2f}: "
            f"{worse:.2f}x {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
