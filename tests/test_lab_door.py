"""Lab mode's door and records channel (``emu.lab.door``) over real TLS on loopback: a node is
admitted only as the node its certificate names (or its token proves), on a channel the server
serves; a node's records reach the collector's run directory stamped on its clock, and across
a collector that dies and comes back each is filed once."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from emu.errors import PeerGone
from emu.lab.certs import init_lab
from emu.lab.door import Door, RecordsLink, join, serve_records
from emu.lab.roles import RunLog
from emu.lab.tls import Credentials, Gate, credentials, dial
from nodes.protocol.events import ClockProbe
from nodes.protocol.lab import Join, LabFrames


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lab") / "creds"
    init_lab(d, ["router", "d0", "d1"])
    return d


async def _collector(
    nursery: trio.Nursery, cred: Credentials, log: RunLog, port: int = 0
) -> tuple[int, trio.CancelScope]:
    """The router's door on loopback, serving the records channel into ``log``."""
    door = Door(cred, {"records": functools.partial(serve_records, file=log)}, log)
    gate = Gate(cred, door, log, handshake_timeout_s=2.0)
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        with scope:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(gate, listeners)

    return await nursery.start(serve), scope


def _filed(run: Path, node: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / f"events-{node}.jsonl").read_text().splitlines()]


async def test_records_reach_the_collector_on_its_clock_once_across_its_restart(
    lab: Path, tmp_path: Path
) -> None:
    router = credentials(lab, "router", "mtls", serves=True)
    d0 = credentials(lab, "d0", "mtls", serves=False)
    run = tmp_path / "run"
    run.mkdir()
    mine: list[Mapping[str, Any]] = []
    async with trio.open_nursery() as nursery:
        log = RunLog(run, "static")
        port, first = await _collector(nursery, router, log)
        link = RecordsLink(("127.0.0.1", port), d0, server="router", sink=mine.append)
        nursery.start_soon(link.run)
        with trio.fail_after(10):
            await link.measured.wait()
        assert link.clock is not None and abs(link.clock.offset_s) <= link.clock.uncertainty_s
        for i in range(5):
            link.emit({"ev": "tick", "t": trio.current_time(), "i": i})
        await trio.sleep(0.5)  # reported
        first.cancel()  # the collector dies (its connections with it) and comes back
        log.close()
        await trio.sleep(0.3)
        log = RunLog(run, "static")  # reads what the directory has
        await _collector(nursery, router, log, port)
        for i in range(5, 8):
            link.emit({"ev": "tick", "t": trio.current_time(), "i": i})
        with trio.fail_after(15):
            while link.dials < 2 or link.queue.pending:
                await trio.sleep(0.05)
        await link.close()
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    log.close()
    filed = _filed(run, "d0")
    rounds = [r["i"] for r in filed if r["ev"] == "tick"]
    assert rounds == list(range(8))  # all of them, each once, although some were sent twice
    assert all(r["node"] == "d0" for r in filed)
    assert [r["seq"] for r in filed] == sorted({r["seq"] for r in filed})
    assert [r["ev"] for r in filed].count("clock") == 2  # measured on each connection
    assert [r["seq"] for r in mine if r["ev"] == "tick"] == [r["seq"] for r in filed
                                                              if r["ev"] == "tick"]  # fmt: skip


async def _refusal(door_cred: Credentials, send: Any, cred: Credentials) -> list[str]:
    """What the door recorded when ``send(stream)`` spoke to it as ``cred``."""
    refused: list[str] = []

    def sink(rec: Mapping[str, Any]) -> None:
        assert rec["ev"] == "refused"
        refused.append(rec["why"])

    async def records(stream: trio.abc.Stream, node: str) -> None:
        raise AssertionError(f"{node} was admitted")

    door = Door(door_cred, {"records": records}, sink, join_timeout_s=1.0)
    gate = Gate(door_cred, door, sink, handshake_timeout_s=2.0)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), gate, 0
        )
        stream = await dial("127.0.0.1", listeners[0].socket.getsockname()[1], cred,
                            server="router")  # fmt: skip
        await send(stream)
        with trio.fail_after(5):
            while not refused:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return refused


async def test_the_door_refuses_a_false_name_a_wrong_token_and_a_stream_that_does_not_join(
    lab: Path,
) -> None:
    router = credentials(lab, "router", "mtls", serves=True)
    d0 = credentials(lab, "d0", "mtls", serves=False)

    async def as_d1(stream: trio.abc.Stream) -> None:
        with pytest.raises(PeerGone):
            await join(stream, Credentials("mtls", "d1", lab), channel="records", epoch=1)

    async def probe_first(stream: trio.abc.Stream) -> None:
        await stream.send_all(LabFrames().pack(ClockProbe(sent_ms=1.0)))

    async def garbage(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"\x00\x00\x00\x03abc")

    async def silent(stream: trio.abc.Stream) -> None:
        pass

    async def unserved(stream: trio.abc.Stream) -> None:
        with pytest.raises(PeerGone):
            await join(stream, d0, channel="route", epoch=1)

    cases = [
        (as_d1, "it joined as d1 but its certificate names d0"),
        (probe_first, "the first message must be a Join, got ClockProbe"),
        (garbage, "no Join: malformed message"),
        (silent, "no Join within 1 s"),
        (unserved, "channel 'route' is not served here (records)"),
    ]
    for send, why in cases:
        assert (await _refusal(router, send, d0))[0].startswith(why), why
    # Token mode: TLS proves the server; the Join's token proves the node.
    router_t = credentials(lab, "router", "token", serves=True)
    d1_t = credentials(lab, "d1", "token", serves=False)

    async def wrong_token(stream: trio.abc.Stream) -> None:
        with pytest.raises(PeerGone):
            await join(stream, Credentials("token", "d0", lab, token=d1_t.token),
                       channel="records", epoch=1)  # fmt: skip

    assert await _refusal(router_t, wrong_token, d1_t) == ["d0's token does not match"]


def test_a_join_says_who_and_what_within_its_rules() -> None:
    frames = LabFrames()
    join_ = Join(node="d3", channel="route", epoch=5, token="ab" * 32)
    assert frames.feed(frames.pack(join_)) == [join_]
    for bad, said in [
        ({"node": ""}, "node"),
        ({"node": "x" * 65}, "node"),
        ({"channel": "shell"}, "channel"),
        ({"epoch": -1}, "epoch"),
        ({"token": "t" * 129}, "token"),
    ]:
        with pytest.raises(ValueError, match=said):
            Join(**{"node": "d3", "channel": "route", "epoch": 5, **bad})
