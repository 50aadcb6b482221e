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


def test_a_node_process_imports_no_radio_model_and_no_scipy() -> None:
    """A user of the emulation is one process each: what it imports, every user pays in
    memory and start-up time (scipy.signal, through the radio model, cost 70 MB and 0.8 s a
    process; scripts/bench_scale.py)."""
    import subprocess
    import sys

    code = (
        "import sys, emu.runners.node; "
        "print(sorted(m for m in ('scipy', 'channel_models.cell', 'torch', 'llama_cpp', "
        "'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
