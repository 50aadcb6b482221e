#!/usr/bin/env python3
"""Model benchmark: drafter tokens/s, verifier latency against batch size and tokens, the
embedded pair's greedy acceptance per prompt kind, and `draftnet sim --models embedded` with
dipsd, ad and ad-batch (under the default scenario's timing, the paper's devices, and under
profiles of this machine when given).

Prints figures for BENCHMARKS.md; asserts nothing. Needs the embedded pair
(`draftnet models prepare`).

    .venv/bin/python scripts/bench_models.py [--device cpu] [--repeats 5] [--only sim]
        [--sim-users 6] [--sim-duration 30] [--profile d.toml --profile t.toml]
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

from emu.models.embedded import builtin_prompts, embedded_pair, greedy_acceptance, prompt_ids
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


def sim_embedded(users: int, duration: float, profiles: list[str]) -> None:
    from emu.runners.sim import simulate
    from emu.scenario import load_scenario

    sc = load_scenario(
        overrides={
            "users.count": users,
            "sim.duration_s": duration,
            "models.kind": "embedded",
            "network.model": "fixed",  # the paper's 3 ms links, not the default's radio cell
            "profiles": profiles,
        }
    )
    timing = ", ".join(profiles) if profiles else "the default scenario (the paper's devices)"
    print(f"## sim --models embedded: {users} users, {duration:g} virtual s, timing {timing}")
    out = simulate(sc, ["dipsd", "ad", "ad-batch"])
    res = out["results"]
    print("| policy | tok/s | predicted | vs ad | acceptance | mean len | lossless | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for pol, r in res.items():
        acc = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        mlen = "-" if r["mean_accepted_len"] is None else f"{r['mean_accepted_len']:.2f}"
        print(
            f"| {pol} | {r['throughput_tok_s']:.2f} | {r['predicted_tok_s']:.2f} | "
            f"{r['throughput_tok_s'] / res['ad']['throughput_tok_s']:.2f}x | {acc} | {mlen} | "
            f"{r['lossless']} ({r['lossless_checked']['tokens']} tokens) | {r['wall_s']:.1f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--only", choices=["sim", "verify"], help="only the embedded simulation, or the verifier"
    )
    ap.add_argument("--sim-users", type=int, default=6)
    ap.add_argument("--sim-duration", type=float, default=30.0)
    ap.add_argument("--profile", action="append", default=[], help="profile TOML (repeatable)")
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    if args.only == "sim":
        sim_embedded(args.sim_users, args.sim_duration, args.profile)
        return
    pair = embedded_pair()
    prompts = builtin_prompts()
    ids = prompt_ids(pair.target, prompts)
    if args.only == "verify":
        import transformers

        v = HFVerifier(pair.target, device=args.device)
        print(
            f"## verifier ({pair.target.name}, {v.device}, {v.dtype}, "
            f"transformers {transformers.__version__}, cache passed as {v._cache_kwarg}=)"
        )
        verifier_grid(v, ids[0], args.repeats)
        return
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
    sim_embedded(args.sim_users, args.sim_duration, args.profile)


if __name__ == "__main__":
    main()
