"""What a node process adds around the node code: its runtime's warnings become records."""

from __future__ import annotations

import logging

import pytest

from emu.results.metrics import Recorder
from emu.runners.node import _WarningsToRecords


def test_an_accept_that_fails_for_want_of_descriptors_is_recorded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rec = Recorder(None)
    rec.policy = "p"
    handler = _WarningsToRecords(rec, scale=2.0)
    trio_log = logging.getLogger("trio")
    trio_log.addHandler(handler)
    try:
        # What trio's serve_listeners logs when accept() fails with EMFILE.
        logging.getLogger("trio.serve_listeners").error(
            "accept returned %s (%s); sleeping %s seconds", "EMFILE", "Too many open files", 0.1
        )
        logging.getLogger("trio.serve_listeners").debug("not a warning")
    finally:
        trio_log.removeHandler(handler)
    s = rec.summary("p", t_end=1.0, users=1)
    assert s.faults == {"node_warning": 1}
    assert "EMFILE" in capsys.readouterr().err  # and still in the node's log
