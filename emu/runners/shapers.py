"""The link shapers behind one protocol, in a registry: what each can shape, and running it on
every link of a network (each user's, both ways, and the links between servers). ``choose_shaper``
is the one place a run's shaper is chosen.

- ``userspace``: a TUN forwarder in the access point (``emu.shaping.tund``); any kernel, any
  link (a fixed state, a radio series, a Mahimahi trace, Gilbert-Elliott burst loss, a link
  between servers).
- ``tc``: kernel qdiscs driven on a tick (``emu.shaping.tcd``): HTB for rates, netem beneath for
  delay, jitter and loss where the kernel has netem; the users' links only.

Layer: emu (orchestration; runs processes in Mininet hosts through ``emu.runners.network``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from emu.errors import ConfigError
from emu.runners.manifest import PROBE_NETNS
from emu.runners.network import Network, tc_shaping, userspace_shaping
from emu.shaping.sources import tc_refusal
from emu.shaping.spec import LinkPair, LinkSpec, ServerLink

__all__ = ["SHAPERS", "Shaper", "choose_shaper", "has_netem"]


class Shaper(Protocol):
    @property
    def name(self) -> str: ...

    def refusal(self, spec: LinkSpec) -> str | None:
        """Why it cannot give this link what it needs (None when it can)."""
        ...

    def running(
        self,
        network: Network,
        links: Sequence[LinkPair],
        run_dir: Path,
        *,
        seed: int,
        between: Sequence[ServerLink] = (),
    ) -> AbstractContextManager[Path]:
        """Shape every user's link both ways, and the links ``between`` servers, while inside;
        yields its counters' path."""
        ...


@dataclass(frozen=True, slots=True)
class Userspace:
    name: str = "userspace"

    def refusal(self, spec: LinkSpec) -> str | None:
        return None

    def running(
        self,
        network: Network,
        links: Sequence[LinkPair],
        run_dir: Path,
        *,
        seed: int,
        between: Sequence[ServerLink] = (),
    ) -> AbstractContextManager[Path]:
        return userspace_shaping(network, links, run_dir, seed=seed, between=between)


@dataclass(frozen=True, slots=True)
class Tc:
    name: str = "tc"

    def refusal(self, spec: LinkSpec) -> str | None:
        return tc_refusal(spec.config(), has_netem())

    def running(
        self,
        network: Network,
        links: Sequence[LinkPair],
        run_dir: Path,
        *,
        seed: int,
        between: Sequence[ServerLink] = (),
    ) -> AbstractContextManager[Path]:
        return tc_shaping(network, links, run_dir, between=between)


SHAPERS: dict[str, Shaper] = {s.name: s for s in (Userspace(), Tc())}


def choose_shaper(
    choice: str, links: Sequence[LinkPair], between: Sequence[ServerLink] = ()
) -> tuple[Shaper, str]:
    """The shaper that runs (``emu.shaping``: auto, or a name in ``SHAPERS``), and why:
    auto takes ``tc`` where netem exists and it can give every link what it needs, else
    ``userspace``. Asked for, a shaper that cannot shape a link refuses it (one line, naming
    the link and what to use instead); nothing runs unshaped in silence. ``tc`` shapes the
    users' links only, not the links ``between`` servers."""
    if choice != "auto" and choice not in SHAPERS:
        known = ", ".join(["auto", *SHAPERS])
        raise ConfigError(f"emu.shaping must be one of {known}, got {choice!r}")
    tc = SHAPERS["tc"]
    refusals = [
        (f"u{i} {d}", why)
        for i, pair in enumerate(links)
        for d, spec in (("up", pair.up), ("down", pair.down))
        if (why := tc.refusal(spec)) is not None
    ]
    refusals += [
        (link.name, "tc shapes the users' links only (deployment.links)") for link in between
    ]
    netem = has_netem()
    if choice == "tc":
        if refusals:
            link, why = refusals[0]
            raise ConfigError(f"emu.shaping tc cannot shape link {link}: {why}")
        return tc, "asked for" + ("" if netem else " (no netem here: HTB alone, rates only)")
    if choice != "auto":
        return SHAPERS[choice], "asked for"
    if not netem:
        return SHAPERS["userspace"], "auto: this kernel has no netem"
    if refusals:
        link, why = refusals[0]
        return SHAPERS["userspace"], f"auto: tc cannot shape link {link} ({why})"
    return tc, "auto: netem is here"


@cache
def has_netem() -> bool:
    """Whether this kernel has netem: try it on the loopback of a throwaway namespace (once
    per process: the kernel does not change under a run)."""
    ns = f"{PROBE_NETNS}{int(time.monotonic() * 1e6) % 10**9}"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False).returncode:
        return False
    try:
        add = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem"]
        return (
            subprocess.run([*add, "delay", "1ms"], capture_output=True, check=False).returncode == 0
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
