"""How the suite is split between pytest-xdist's workers (``make test`` runs it with
``-n auto``; a plain ``pytest`` runs every test in one process, as before).

The emulations (Mininet: one network on a host at a time) and the real models (every core,
and timings that a second model run beside them would disturb) are the tests under
``tests/emu`` and ``tests/models``: they run one after another, on one worker. Every other
module is a unit of its own, so that its module-scoped fixtures are built once, on the worker
that runs all of its tests.

(xdist's own ``xdist_group`` marks do not reach its scheduler under pytest 9, which names
nodes differently: the scheduler here groups by path, which it has.)"""

from __future__ import annotations

from typing import Any

import pytest

EXCLUSIVE = ("tests/emu/", "tests/models/")
_ALONE_MARKS = ("mininet", "models")


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: the exclusive tests' one, or its module."""
    return "exclusive" if nodeid.startswith(EXCLUSIVE) else nodeid.partition("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in _ALONE_MARKS:
            if item.get_closest_marker(mark) and not item.nodeid.startswith(EXCLUSIVE):
                raise pytest.UsageError(
                    f"{item.nodeid} is marked {mark} but is not under {' or '.join(EXCLUSIVE)}, "
                    "where make test runs such tests one at a time"
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return ByUnit(config, log)
