"""An edge restarted mid-session, in process: the new edge starts from the journal the old one
wrote (``nodes.core.ledger``), hands the user its session back, and the session goes on with
nothing committed lost or repeated."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing

from emu.deploy.deployment import assemble
from emu.deploy.runtime import edge_settings, memo_planner, synthetic_verifier
from emu.models.build import RecordingDrafter, Session
from emu.scenario import load_scenario
from emu.scenario.streams import Streams
from nodes.backends import SyntheticDrafter
from nodes.core.ledger import LedgerError, SessionLedger, committed_sessions
from nodes.edge import EdgeNode
from nodes.user import UserNode


async def test_a_user_resumes_its_session_on_a_restarted_edge_with_nothing_lost() -> None:
    sc = load_scenario(overrides={"users.count": 1, "models.kind": "synthetic"})
    dep = assemble(sc)
    name = dep.verifiers[0]
    edge_records: list[Mapping[str, Any]] = []
    user_records: list[Mapping[str, Any]] = []
    journal: list[Mapping[str, Any]] = []

    def edge(ledger: SessionLedger | None) -> EdgeNode:
        return EdgeNode(
            edge=dep.edge(name),
            verifier=synthetic_verifier(dep.problem, Streams(0), warm_start=False),
            planner=memo_planner("dipsd"),
            priors=dep.priors(name),
            settings=edge_settings(sc, 1),
            sink=edge_records.append,
            scheduler=dep.scheduler(),
            lengths=dep.lengths(),
            ledger=ledger,
            journal=journal.append,
        )

    sessions: list[Session] = []
    drafter = RecordingDrafter(
        SyntheticDrafter.for_user(dep.problem.users[0], Streams(0).drafter(0)),
        sessions,
        io.StringIO(),
    )
    user = UserNode(0, drafter, itertools.repeat((7, 8, 9)), sink=user_records.append,
                    max_new_tokens=400, clock_probes=2, report=True)  # fmt: skip
    edges = [edge(None)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def dial() -> trio.abc.Stream:
                mine, theirs = trio.testing.memory_stream_pair()
                nursery.start_soon(edges[-1].serve_stream, theirs)
                return mine

            first = trio.CancelScope()

            async def run_first() -> None:
                with first:
                    await edges[0].run()

            nursery.start_soon(run_first)
            nursery.start_soon(user.serve, dial)
            await trio.sleep(0.5)
            # The edge dies: its pipeline stops and every connection is cut.
            first.cancel()
            for out in list(edges[0].peers._outboxes.values()):
                out.close()
            before = user.stats.committed_tokens
            edges.append(edge(SessionLedger.replay(journal)))
            nursery.start_soon(edges[1].run)
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert before > 0 and user.stats.committed_tokens > before + 5  # it went on
    assert user.stats.reconnects == 1
    joins = [r for r in edge_records if r["ev"] == "join"]
    assert "resume" in joins[-1] and joins[-1]["resume"]["committed"] > 0
    # What the user committed is what the journal holds, session by session, nothing twice.
    mine = [[*s.prompt, *s.tokens] for s in sessions]
    theirs = [[*h.prompt, *h.committed] for h in committed_sessions(journal)[0]]
    assert len(mine) == 2 and mine[1][: len(mine[0])] == mine[0]  # one session, resumed
    assert theirs == [mine[1]] or theirs[0][: len(mine[1])] == mine[1]


def test_the_ledgers_sessions_stitch_resumes_and_catch_a_token_lost_at_one() -> None:
    entries: list[Mapping[str, Any]] = [
        {"u": 0, "s": 0, "prompt": [1, 2], "committed": []},
        {"u": 0, "add": [3, 4]},
        {"u": 1, "s": 0, "prompt": [9], "committed": []},
        {"u": 0, "s": 0, "prompt": [1, 2], "committed": [3, 4]},  # resumed: takes up all
        {"u": 0, "add": [5]},
        {"u": 0, "end": True},
        {"u": 0, "s": 1, "prompt": [1, 2], "committed": []},  # a new session, same prompt
        {"u": 0, "add": [6]},
    ]
    got = committed_sessions(entries)
    assert {u: [(h.prompt, h.committed) for h in held] for u, held in got.items()} == {
        0: [((1, 2), [3, 4, 5]), ((1, 2), [6])],
        1: [((9,), [])],
    }
    dropped = [*entries[:3], {"u": 0, "s": 0, "prompt": [1, 2], "committed": [3]}]
    with pytest.raises(LedgerError, match="user 0: session 0 resumed with 1 tokens, but 2"):
        committed_sessions(dropped)
