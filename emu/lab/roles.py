"""Lab mode: each role its own command, on its own machine, over the lab's network.

    draftnet edge [SCENARIO] --listen HOST:PORT (--lab DIR | --insecure) [--out RUNDIR]
    draftnet user [SCENARIO] --connect HOST:PORT (--lab DIR | --insecure) --id N

Layer: emu (processes, sockets, files). The node code is the emulation's (``nodes.edge``,
``nodes.user``, built as ``emu.runners.node`` builds them); what lab mode adds is the transport
(``emu.lab.tls``: TLS with the lab's certificates or tokens), clocks (each user measures its
offset to the edge's clock and stamps its records on the edge's, ``nodes.core.clock``), and
records that stream to the edge (Report): the edge's run directory holds every node's records
as they happen, ``events-<node>.jsonl``, and when it stops (SIGTERM, SIGINT, or ``--duration``)
``summary.json``: the ``run --json`` fields of its policy, and ``auth``, ``refused`` (who and
why), ``clock_offset_ms`` (each user's offset to the edge and its uncertainty) and ``resumed``
(each user's sessions the edge handed back over a new connection). The edge journals every
verdict in ``sessions.jsonl`` before sending it (``emu.runners.journal``): an edge started again
on the same directory hands each user its session back. With real models and greedy
verification, the summary's ``lossless`` checks every session in the journal (those that crossed
a restart of either side included) against what the edge's target decodes greedily on its own.

Each node uses its machine's monotonic clock (``SharedClock``); the time scale is the
scenario's ``emu.time_scale`` (1 when it is 0, auto: a lab runs in real time).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import trio

from emu.deploy.deployment import Deployment, assemble
from emu.deploy.runtime import memo_planner, node_problem
from emu.errors import ConfigError, PeerGone
from emu.lab.tls import Credentials, Gate, dial
from emu.models.build import (
    Departure,
    GreedyReference,
    RecordingDrafter,
    Session,
    check_sessions,
)
from emu.results.metrics import Recorder
from emu.results.types import RunResult
from emu.runners.journal import JOURNAL, Journal, journal_sessions, read_journal
from emu.runners.node import SharedClock, drafter_for, edge_node, until_signalled
from emu.scenario import Scenario
from emu.scenario.streams import Streams
from nodes.core.ledger import LedgerError
from nodes.core.verifier import user_node
from nodes.edge import EdgeNode
from nodes.pacing import REAL_CLOCK_LEAD_S, Pacer
from nodes.user import EdgeRefused, UserNode

__all__ = ["CLOCK_PROBES", "RunLog", "lab_clock", "run_edge", "run_user"]

CLOCK_PROBES = 8  # NTP-style exchanges per connection; the least-delay one counts
SUMMARY = "summary.json"
FAREWELL_S = 1.0  # a stopping edge waits this long for its users' last Reports, then says Bye


class RunLog:
    """The edge's run directory as it fills: each record appended to its node's
    ``events-<node>.jsonl`` at once, and tallied for the summary."""

    def __init__(self, out_dir: Path | None, policy: str) -> None:
        self.out_dir = out_dir
        self.tally = Recorder(None)
        self.tally.policy = policy
        self.policy = policy
        self._files: dict[str, IO[str]] = {}
        self.clocks: dict[str, dict[str, float]] = {}
        self.resumed: dict[str, int] = defaultdict(int)
        self.refused: list[dict[str, Any]] = []
        self.untallied = 0  # records filed but not counted: they lacked their kind's fields
        self.outcomes: dict[str, dict[str, Any]] = {}  # each node's account, as it left
        # when each node saw its first token, and its task done (the heterogeneous edge's)
        self.milestones: dict[str, dict[str, float]] = defaultdict(dict)
        # The last numbered record filed, by (node, epoch): a user sends again what may have
        # been lost, and what this directory has (a restarted edge's too) is filed once.
        self._filed: dict[tuple[str, int], int] = {}
        for f in sorted(out_dir.glob("events-*.jsonl")) if out_dir is not None else ():
            for line in f.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    r = json.loads(line)
                    key = (str(r["node"]), int(r["epoch"]))
                    self._filed[key] = max(self._filed.get(key, 0), int(r["seq"]))

    def for_node(self, name: str) -> Callable[[Mapping[str, Any]], None]:
        return lambda rec: self({**rec, "node": name})

    def __call__(self, rec: Mapping[str, Any]) -> None:
        node = str(rec.get("node", "edge"))
        if isinstance(seq := rec.get("seq"), int) and isinstance(epoch := rec.get("epoch"), int):
            if seq <= self._filed.get((node, epoch), 0):
                return  # sent again after a lost link, and filed already
            self._filed[(node, epoch)] = seq
        if self.out_dir is not None:
            f = self._files.get(node)
            if f is None:
                f = self._files[node] = (self.out_dir / f"events-{node}.jsonl").open("a")
            f.write(json.dumps({"policy": self.policy, **rec}, default=float) + "\n")
            f.flush()
        try:
            self.tally(rec)
        except (KeyError, TypeError, ValueError):  # a record without what its kind has
            self.untallied += 1  # filed above; counting it would take the collector down
        if rec.get("ev") == "clock":
            self.clocks[node] = {
                "offset_ms": float(rec["offset_ms"]),
                "uncertainty_ms": float(rec["uncertainty_ms"]),
            }
        elif rec.get("ev") == "refused":  # at the door (emu.lab.tls) or at the Hello
            who = {k: rec[k] for k in ("peer", "claims", "user") if rec.get(k) is not None}
            self.refused.append({"t": rec["t"], **who, "why": rec.get("why", rec.get("error"))})
        elif rec.get("ev") in ("first_token", "done") and isinstance(rec.get("t"), float | int):
            self.milestones[node].setdefault(str(rec["ev"]), float(rec["t"]))
        elif rec.get("ev") == "outcome" and isinstance(rec.get("doc"), dict):
            self.outcomes[node] = dict(rec["doc"])  # a node's own account of the run, last
        elif rec.get("ev") == "join" and "resume" in rec:  # a session handed back
            self.resumed[user_node(int(rec["user"]))] += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def lab_clock(sc: Scenario, skew_ms: float = 0.0) -> SharedClock:
    return SharedClock(sc.emu.time_scale or 1.0, skew_ms / 1e3)


def _pacer(sc: Scenario) -> Pacer:
    return Pacer(sc.emu.timing, sc.emu.time_scale or 1.0, lead_s=REAL_CLOCK_LEAD_S)


async def _serve_edge(
    sc: Scenario,
    dep: Deployment,
    listen: tuple[str, int],
    cred: Credentials,
    *,
    log: RunLog,
    pacer: Pacer,
    duration_s: float,
) -> dict[str, Any]:
    dep = dep.with_problem(node_problem(sc))
    name = dep.verifiers[0]
    sink = log.for_node(name)
    journal, ledger = None, None
    if log.out_dir is not None:  # a restarted edge goes on from its journal
        path = log.out_dir / JOURNAL
        ledger = read_journal(path)
        if ledger.held:
            sink({"ev": "restarted", "t": trio.current_time(), "held": sorted(ledger.held)})
        journal = Journal(path)
    edge = edge_node(
        sc, name, sink, pacer, tokens=cred.tokens, reports=log, ledger=ledger, journal=journal
    )
    gate = Gate(cred, edge.serve_stream, sink, handshake_timeout_s=sc.limits.handshake_timeout_s)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        signalled = trio.CancelScope()
        nursery.start_soon(until_signalled, signalled)
        pipeline: trio.CancelScope = await nursery.start(_cancellable, edge.run)
        serve = functools.partial(trio.serve_tcp, host=listen[0] or None)
        await nursery.start(serve, gate, listen[1])
        print(f"ready: {name} on {listen[0]}:{listen[1]} ({cred.auth})", flush=True)
        with signalled, trio.move_on_after(duration_s if duration_s > 0 else math.inf):
            await trio.sleep_forever()
        t_end = trio.current_time()
        pipeline.cancel()  # nothing verified after t_end; the users report what they have
        await trio.sleep(FAREWELL_S)
        edge.peers.farewell("the edge is stopping")  # its users stop rather than redial
        await trio.sleep(0.2)  # the Byes' way out
        nursery.cancel_scope.cancel()
    if journal is not None:
        journal.close()
    lossless = _lossless(sc, edge, log.out_dir, dep.problem.size)
    measured = log.tally.summary(sc.planner.policy, t_end=t_end, users=dep.problem.size)
    result = RunResult(
        measured=measured,
        predicted_tok_s=dep.predicted_tok_s(memo_planner(sc.planner.policy)),
        protocol_errors=edge.stats.protocol_errors,
        overruns={name: pacer.overruns},
        span_s=t_end - t0,
        **lossless,
    )
    return {
        "system": sc.deployment.system,
        "auth": cred.auth,
        "listen": f"{listen[0]}:{listen[1]}",
        "policy": sc.planner.policy,
        "duration_s": t_end - t0,
        "refused": log.refused,
        "clock_offset_ms": dict(sorted(log.clocks.items())),
        "resumed": dict(sorted(log.resumed.items())),
        "untallied_records": log.untallied,
        "results": {sc.planner.policy: result.to_json()},
    }


def _lossless(sc: Scenario, edge: EdgeNode, out_dir: Path | None, users: int) -> dict[str, Any]:
    """``lossless`` of the run, checked with the target the edge verified on; null with
    synthetic models, sampled verification, or no run directory (no journal)."""
    if sc.models.kind == "synthetic" or sc.models.temperature > 0 or out_dir is None:
        return {"lossless": None}
    from nodes.hf_verifier import HFVerifier

    target = edge.verifier
    assert isinstance(target, HFVerifier)  # real models: ``emu.runners.node.verifier_for``
    print("checking the journalled sessions against the target's greedy decoding", flush=True)
    return journal_lossless(out_dir / JOURNAL, users, GreedyReference(target.model, target.device))


def journal_lossless(path: Path, users: int, reference: Departure) -> dict[str, Any]:
    """``lossless``: every session the edge journalled (across its own restarts, and those its
    users resumed) against the target's own greedy decoding (``reference``: where they
    depart from it)."""
    try:
        journalled = journal_sessions(path)
    except LedgerError as exc:  # a resume that lost or repeated a token
        return {"lossless": False, "lossless_checked": {"mismatches": [{"why": str(exc)}]}}
    per_user = [
        [Session(h.prompt, list(h.committed)) for h in journalled.get(u, [])] for u in range(users)
    ]
    return check_sessions(per_user, reference)


async def _cancellable(
    fn: Callable[[], Awaitable[None]], *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await fn()


def run_edge(
    sc: Scenario,
    *,
    listen: tuple[str, int],
    cred: Credentials,
    out_dir: Path | None,
    duration_s: float = 0.0,
    skew_ms: float = 0.0,
) -> dict[str, Any]:
    """Serve the scenario's users at ``listen`` until signalled or ``duration_s`` (modelled
    seconds) pass; the summary (written to ``out_dir/summary.json`` as well)."""
    dep = _lab_deployment(sc)
    pacer = _pacer(sc)

    def serve(log: RunLog) -> dict[str, Any]:
        edge = functools.partial(_serve_edge, log=log, pacer=pacer, duration_s=duration_s)
        return trio.run(edge, sc, dep, listen, cred, clock=lab_clock(sc, skew_ms))

    return collecting(sc, out_dir, serve)


def node_log(out_dir: Path | None, policy: str) -> RunLog:
    """A node's own copy of its records, in ``out_dir`` (None: kept nowhere)."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return RunLog(out_dir, policy)


def collecting(
    sc: Scenario, out_dir: Path | None, serve: Callable[[RunLog], dict[str, Any]]
) -> dict[str, Any]:
    """``serve(log)``, a run's head node (DiP-SD's edge, DSD's router) that files every node's
    records into ``out_dir`` through ``log``; the summary it returns, written there as well."""
    log = node_log(out_dir, sc.planner.policy)
    try:
        out = serve(log)
    finally:
        log.close()
    if out_dir is not None:
        out["out_dir"] = str(out_dir)
        (out_dir / SUMMARY).write_text(json.dumps(out, indent=1, default=float))
    return out


def _lab_deployment(sc: Scenario) -> Deployment:
    """The scenario's deployment, if the lab roles can run it (a ConfigError if not)."""
    if sc.deployment.system != "dipsd":
        raise ConfigError(
            "deployment.system must be dipsd for draftnet edge and its users (dsd's lab roles "
            "are draftnet router, verifier and user; hetnet's are not built yet), got "
            f"{sc.deployment.system!r}"
        )
    dep = assemble(sc)
    if len(dep.verifiers) != 1 or dep.router is not None:
        raise ConfigError(
            "deployment must have one verifier and no router for draftnet edge, got "
            f"{len(dep.verifiers)} verifiers" + (" and a router" if dep.router else "")
        )
    return dep


async def _serve_user(
    sc: Scenario,
    index: int,
    connect: tuple[str, int],
    cred: Credentials,
    *,
    out_dir: Path | None,
    server: str,
) -> dict[str, Any]:
    problem = node_problem(sc)
    drafter, prompts, session_tokens = drafter_for(sc, problem, index, sc.emu.timing == "profile")
    pacer = _pacer(sc)
    with contextlib.ExitStack() as stack:
        log = RunLog(out_dir, sc.planner.policy)
        stack.callback(log.close)
        if out_dir is not None:  # what it commits, for the lossless check
            tokens = stack.enter_context((out_dir / f"tokens-{user_node(index)}.jsonl").open("a"))
            drafter = RecordingDrafter(drafter, [], tokens)
        node = UserNode(
            index,
            drafter,
            prompts,
            sink=log.for_node(user_node(index)),
            pacer=pacer,
            max_new_tokens=session_tokens,
            silence_s=sc.limits.idle_timeout_s,
            auth=cred.token,
            clock_probes=CLOCK_PROBES,
            report=True,
        )

        answered = False

        async def dial_edge() -> trio.abc.Stream:
            nonlocal answered
            stream = await dial(*connect, cred, server=server)
            answered = True
            return stream

        print(f"ready: {user_node(index)} to {connect[0]}:{connect[1]} ({cred.auth})", flush=True)
        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_signalled, nursery.cancel_scope)
            try:
                await node.serve(
                    dial_edge,
                    give_up_s=sc.limits.reconnect_give_up_s,
                    rng=Streams(sc.sim.seed).redial(index),
                )
            except (PeerGone, EdgeRefused) as exc:  # one line, not a nursery's group
                failed = exc
            nursery.cancel_scope.cancel()
        if isinstance(failed, PeerGone) and not answered:  # a wrong address, or no edge yet
            raise ConfigError(
                f"--connect: no edge answered at {connect[0]}:{connect[1]} within "
                f"{sc.limits.reconnect_give_up_s:g} s (limits.reconnect_give_up_s)"
            ) from failed
        if failed is not None:
            raise failed
    st = node.stats
    clock = node.clock
    return {
        "user": index,
        "auth": cred.auth,
        "rounds": st.rounds,
        "committed_tokens": st.committed_tokens,
        "sessions": st.sessions,
        "reconnects": st.reconnects,
        "resumed_tokens": st.resumed_tokens,
        "overruns": pacer.overruns,
        "clock_offset_ms": None if clock is None else clock.record(),
    }


def run_user(
    sc: Scenario,
    *,
    index: int,
    connect: tuple[str, int],
    cred: Credentials,
    out_dir: Path | None = None,
    server: str = "edge",
    skew_ms: float = 0.0,
) -> dict[str, Any]:
    """User ``index`` of the scenario, drafting for the edge at ``connect`` until the edge
    ends, it is signalled, or no link holds for ``limits.reconnect_give_up_s``; its counters.
    An edge that refuses it for good is a ConfigError (the credentials are wrong)."""
    users = _lab_deployment(sc).problem.size
    if not 0 <= index < users:
        raise ConfigError(f"--id must be in [0, {users - 1}] (users.count), got {index}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        serve = functools.partial(_serve_user, out_dir=out_dir, server=server)
        return trio.run(serve, sc, index, connect, cred, clock=lab_clock(sc, skew_ms))
    except EdgeRefused as exc:
        raise ConfigError(
            f"the edge at {connect[0]}:{connect[1]} refused {user_node(index)}: {exc}"
        ) from exc
    except PeerGone as exc:
        raise PeerGone(f"{user_node(index)}: {exc}") from exc
