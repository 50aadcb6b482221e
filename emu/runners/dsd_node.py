"""A DSD node as its own process, over real sockets:
``python -m emu.runners.dsd_node RUN/scenario.toml router --port P``,
``... verifier K --port P`` or ``... drafter I``.

Layer: emu (a process; sockets, files). The emulation (``emu.runners.emulate_dsd``) starts one
per Mininet host. The node code is ``nodes.dsd``, over the simulation's cores; only the clock
(the machine's monotonic clock over the time scale, ``emu.runners.node.SharedClock``), the
streams (TCP) and the pacing (``nodes.pacing``) differ. The run directory is the scenario
file's: every node reads the servers' addresses from ``addresses.json``; a drafter waits for the
runner's ``start_at`` (a time on the shared clock), serves its dealt conversations (the
simulation's deal, ``emu.runners.sim_dsd``) for ``sim.duration_s`` and leaves. Each node
appends its records to ``events-<node>.jsonl`` as they happen and on its way out writes
``node-<node>.json`` (a drafter: its counters, conversations and tokens; a verifier: its
queue waits and busy time; the router: its choices).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import trio

from emu.errors import ConfigError
from emu.planner import get_policy
from emu.planner.dsd.model import DsdProblem
from emu.results.metrics import Recorder
from emu.runners.node import (
    SharedClock,
    address,
    connect,
    paced,
    start_at,
    until_signalled,
)
from emu.runners.sim_dsd import deal, dsd_problem_of
from emu.scenario import Scenario, load_scenario
from emu.scenario.streams import Streams
from nodes.backends import DraftBackend, VerifyBackend
from nodes.dsd import (
    DrafterNode,
    RouterNode,
    SyntheticDsdDrafter,
    SyntheticDsdVerifier,
    VerifierNode,
)

__all__ = [
    "ADDRESSES_FILE",
    "check_emulable",
    "drafter_backend",
    "main",
    "real_prompts",
    "verifier_backend",
]

ADDRESSES_FILE = "addresses.json"
SYNTHETIC_PROMPT_VOCAB = 32000


def check_emulable(sc: Scenario, problem: DsdProblem) -> None:
    """ConfigError for what the emulation cannot run: the authors' fixed round accounting
    (rejected drafts are not drafted again, so the drafter's and the verifier's sequences
    part)."""
    if problem.compat.round_accounting != "emitted":
        raise ConfigError(
            "dsd.compat must be false in emulation (its fixed round accounting drops rejected "
            "drafts, which real verification cannot), got true"
        )


def real_prompts(sc: Scenario) -> Any:
    """The real models' setup (checked, not loaded): the built-in prompts, the context."""
    from emu.models.embedded import resolve_models

    m = sc.models
    problem = dsd_problem_of(sc)
    return resolve_models(
        m.kind, draft=m.draft, target=m.target, device=m.device,
        max_new_tokens=sc.sim.max_new_tokens, max_draft_len=problem.max_gamma,
    )  # fmt: skip


def _addresses(run_dir: Path) -> dict[str, tuple[str, int]]:
    doc = json.loads((run_dir / ADDRESSES_FILE).read_text())
    return {name: address(text) for name, text in doc.items()}


def verifier_backend(sc: Scenario, problem: DsdProblem) -> VerifyBackend:
    if sc.models.kind == "synthetic":
        seed = sc.sim.seed
        return SyntheticDsdVerifier(
            problem.curve, lambda key: np.random.default_rng([seed, 18, key])
        )
    from nodes.hf_verifier import HFVerifier

    setup = real_prompts(sc)
    m = sc.models
    return HFVerifier(
        setup.target, device=setup.device, dtype=m.dtype or None, threads=m.verify_threads or 1
    )


async def _router(sc: Scenario, port: int, run_dir: Path, rec: Recorder) -> dict[str, Any]:
    node = RouterNode(dsd_problem_of(sc), seed=sc.sim.seed, sink=rec.for_node("router"))

    async def learn_the_end() -> None:
        node.ends_at = await start_at(run_dir) + sc.sim.duration_s

    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        nursery.start_soon(learn_the_end)
        await nursery.start(trio.serve_tcp, node.serve, port)
        print("ready", flush=True)
    return {"routed": node.routed, "faults": node.faults}


async def _verifier(
    sc: Scenario, k: int, port: int, run_dir: Path, rec: Recorder
) -> dict[str, Any]:
    problem = dsd_problem_of(sc)
    spec = problem.verifiers[k]
    pacer = paced(sc)
    node = VerifierNode(
        k, spec, verifier_backend(sc, problem), compat=problem.compat,
        order=problem.batching, pacer=pacer, sink=rec.for_node(spec.name),
    )  # fmt: skip
    router = await connect(*_addresses(run_dir)["router"])

    async def learn_the_end() -> None:
        node.ends_at = await start_at(run_dir) + sc.sim.duration_s

    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        nursery.start_soon(learn_the_end)
        nursery.start_soon(node.work)
        nursery.start_soon(node.report_to, router)
        await nursery.start(trio.serve_tcp, node.serve_drafter, port)
        print("ready", flush=True)
    return node.outcome(sc.sim.duration_s)


def drafter_backend(
    sc: Scenario, problem: DsdProblem, i: int
) -> tuple[DraftBackend, Callable[[int, int], tuple[int, ...]], int]:
    """Drafter ``i``'s backend, its prompts (``prompt(count, tokens)``: its ``count``-th
    conversation's, of about ``tokens`` tokens) and the most tokens an answer may have."""
    spec = problem.drafters[i]
    backend: DraftBackend
    answer_cap = 2**31 - 1
    if sc.models.kind == "synthetic":
        backend = SyntheticDsdDrafter(spec.compute, problem.compat, Streams(sc.sim.seed).drafter(i))
        ids = Streams(sc.sim.seed).prompts(i)

        def prompt(count: int, tokens: int) -> tuple[int, ...]:
            return tuple(int(t) for t in ids.integers(0, SYNTHETIC_PROMPT_VOCAB, size=tokens))
    else:
        from nodes.llama_drafter import LlamaDrafter

        setup = real_prompts(sc)
        answer_cap = setup.session_tokens
        compute, compat = spec.compute, problem.compat
        backend = LlamaDrafter(
            setup.draft, n_ctx=setup.n_ctx, threads=sc.models.draft_threads,
            latency=lambda n, prefix: compute.draft_ms(n, prefix, compat),
        )  # fmt: skip
        n, prompts = len(problem.drafters), setup.prompts

        def prompt(count: int, tokens: int) -> tuple[int, ...]:
            return tuple(prompts[(i + count * n) % len(prompts)])

    return backend, prompt, answer_cap


async def _drafter(sc: Scenario, i: int, run_dir: Path, rec: Recorder) -> dict[str, Any]:
    problem = dsd_problem_of(sc)
    spec = problem.drafters[i]
    make = get_policy(sc.planner.policy).plan(problem)
    arrivals, rng = deal(problem, duration_s=sc.sim.duration_s, seed=sc.sim.seed)[spec.name]
    backend, prompt, answer_cap = drafter_backend(sc, problem, i)
    at = _addresses(run_dir)
    router = await connect(*at["router"])
    streams = {
        link.verifier: await connect(*at[link.verifier]) for link in problem.reachable(spec.name)
    }
    pacer = paced(sc)
    print("ready", flush=True)
    t0 = await start_at(run_dir)
    node = DrafterNode(
        i, problem, backend, policy=make(), arrivals=arrivals, rng=rng,
        prompt=prompt, pacer=pacer, sink=rec.for_node(spec.name), t0=t0, answer_cap=answer_cap,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        record = await node.run(router, streams, end_s=t0 + sc.sim.duration_s)
        nursery.cancel_scope.cancel()
    return asdict(record) | {"t0": t0, "overruns": pacer.overruns, "faults": node.faults}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m emu.runners.dsd_node")
    ap.add_argument("scenario", type=Path, help="the runner's resolved scenario (TOML)")
    roles = ap.add_subparsers(dest="role", required=True)
    router = roles.add_parser("router", help="route each conversation to a verifier")
    router.add_argument("--port", type=int, required=True)
    verifier = roles.add_parser("verifier", help="verifier K: batch and verify drafts")
    verifier.add_argument("index", type=int)
    verifier.add_argument("--port", type=int, required=True)
    drafter = roles.add_parser("drafter", help="drafter I: serve its conversations")
    drafter.add_argument("index", type=int)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        sc = load_scenario(args.scenario)
        problem = dsd_problem_of(sc)
        check_emulable(sc, problem)
        if args.role == "verifier":
            name = problem.verifiers[args.index].name
        elif args.role == "drafter":
            name = problem.drafters[args.index].name
        else:
            name = "router"
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IndexError:
        print(f"error: {args.role} {args.index} must be one of the scenario's", file=sys.stderr)
        return 2
    run_dir = args.scenario.parent
    rec = Recorder(run_dir / f"events-{name}.jsonl")
    rec.policy = sc.planner.policy
    clock = SharedClock(sc.emu.time_scale or 1.0)
    out: dict[str, Any]
    try:
        if args.role == "router":
            out = trio.run(_router, sc, args.port, run_dir, rec, clock=clock)
        elif args.role == "verifier":
            out = trio.run(_verifier, sc, args.index, args.port, run_dir, rec, clock=clock)
        else:
            out = trio.run(_drafter, sc, args.index, run_dir, rec, clock=clock)
    finally:
        rec.close()
    (run_dir / f"node-{name}.json").write_text(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
