"""The emulation tests run as CI runs them: with no ``SHELL`` in the environment (a root
shell started by a CI runner need not set it, and Mininet's ``pexec(shell=True)`` reads it)."""

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_login_shell() -> Iterator[None]:
    saved = os.environ.pop("SHELL", None)
    yield
    if saved is not None:
        os.environ["SHELL"] = saved
