#!/usr/bin/env python3
"""Model benchmark: drafter tokens/s, verifier latency against batch size and tokens, and the
embedded pair's greedy acceptance per prompt kind.

Prints figures for BENCHMARKS.md; asserts nothing. Needs the embedded pair
(`draftnet models prepare`).

    .venv/bin/python scripts/bench_models.py [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from emu.models import builtin_prompts, embedded_pair, greedy_acceptance, prompt_ids
from nodes.backends import VerifyItem
from nodes.hf_verifier import HFVerifier
from nodes.llama_drafter import LlamaDrafter


def drafter_speed(pair_draft: Path, prompt: list[int], threads: int) -> float:
    d = LlamaDrafter(pair_draft, threads=threads)
    d.start(prompt)
    d.draft(1)
    d.commit(0, prompt[-1])
    n, t0 = 0, time.perf_counter()
    for _ in range(12):
        out = d.draft(8)
        d.commit(len(out.tokens), out.tokens[-1])  # all accepted: the cache only grows
        n += len(out.tokens)
    return n / (time.perf_counter() - t0)


def verifier_grid(v: HFVerifier, prompt: list[int], repeats: int) -> None:
    print("| batch | draft tokens | prefix | verify ms (median) |")
    print("|---|---|---|---|")
    for b in (1, 2, 4, 8):
        for L in (1, 4, 8):
            users = list(range(100, 100 + b))
            first, _ = v.prefill(dict.fromkeys(users, prompt))
            ts = []
            for _ in range(repeats):
                items = [
                    VerifyItem(
                        user=u,
                        base_len=len(v.sessions[u].ids),
                        tokens=tuple([first[u]] * L),
                    )
                    for u in users
                ]
                t0 = time.perf_counter()
                v.verify(items)
                ts.append((time.perf_counter() - t0) * 1000)
            for u in users:
                v.drop(u)
            print(f"| {b} | {L} | {len(prompt)} | {statistics.median(ts):.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    pair = embedded_pair()
    prompts = builtin_prompts()
    ids = prompt_ids(pair.target, prompts)
    print(f"## drafter ({pair.draft.name}), greedy, 8-token drafts")
    for threads in (1, os.cpu_count() or 1):
        print(f"{threads} thread(s): {drafter_speed(pair.draft, ids[0], threads):.1f} tokens/s")
    v = HFVerifier(pair.target, device=args.device)
    print(f"## verifier ({pair.target.name}, {v.device}, {v.dtype})")
    verifier_grid(v, ids[0], args.repeats)
    print("## greedy acceptance of the embedded pair per prompt kind (4-token drafts)")
    rates = greedy_acceptance(pair.draft, pair.target, ids)
    kinds: dict[str, list[float]] = {}
    for p, r in zip(prompts, rates, strict=True):
        kinds.setdefault(p.kind, []).append(r)
    print("| kind | prompts | mean acceptance |")
    print("|---|---|---|")
    for k, rs in kinds.items():
        print(f"| {k} | {len(rs)} | {statistics.mean(rs):.3f} |")
    print(f"| all | {len(rates)} | {statistics.mean(rates):.3f} |")


if __name__ == "__main__":
    main()
