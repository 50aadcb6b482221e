"""The links' fidelity probe: a probe out of tolerance is made again (a busy host's userspace
shaper can miss one probe's timing), and one that fails every time is reported as measured."""

from __future__ import annotations

import json
from typing import Any

from emu.runners import emulate
from emu.runners.network import Network


class _Host:
    """A Mininet host's stand-in: ``cmd`` answers with the next of ``answers``."""

    def __init__(self, answers: list[dict[str, float]]) -> None:
        self.answers = answers
        self.asked = 0

    def cmd(self, line: str) -> str:
        self.asked += 1
        return json.dumps(self.answers.pop(0) if self.answers else {})

    def popen(self, cmd: list[str]) -> Any:
        return _Process()

    def IP(self) -> str:  # noqa: N802 (Mininet's name)
        return "10.0.0.1"


class _Process:
    pid = 1

    def terminate(self) -> None: ...

    def wait(self) -> None: ...


class _Net:
    def __init__(self, hosts: dict[str, _Host]) -> None:
        self.hosts = hosts

    def get(self, name: str) -> _Host:
        return self.hosts[name]


CONF = {"rtt_ms": 20.0, "up_rate_bps": 0.0, "up_loss": 0.0}  # a rate-free link: RTT alone
GOOD = {"rtt_ms": 20.5, "up_ms": 10.0, "down_ms": 10.0, "up_rate_bps": 0.0}
LATE = {"rtt_ms": 31.0, "up_ms": 20.0, "down_ms": 11.0, "up_rate_bps": 0.0}


def _checks(answers: list[dict[str, float]]) -> tuple[Any, _Host]:
    user = _Host(answers)
    nw = Network(net=_Net({"u0": user, "edge": _Host([])}), users=1)
    return emulate._fidelity(nw, [CONF]), user


def test_a_probe_out_of_tolerance_is_made_again() -> None:
    (check,), user = _checks([LATE, GOOD])
    assert check.ok and check.tries == 2 and user.asked == 2
    assert check.measured["rtt_ms"] == 20.5


def test_a_link_out_of_tolerance_every_time_is_reported_as_measured() -> None:
    (check,), user = _checks([LATE] * 5)
    assert not check.ok and check.tries == emulate.PROBE_TRIES == user.asked
    assert check.measured["rtt_ms"] == 31.0


def test_a_good_probe_is_made_once() -> None:
    (check,), user = _checks([GOOD, LATE])
    assert check.ok and check.tries == 1 and user.asked == 1
