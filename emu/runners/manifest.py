"""What a run makes, written down as it makes it, and ``clean``, which undoes only that.

Layer: emu (orchestration; processes, namespaces, files). A run keeps a ``Manifest`` (under the
draftnet home's ``active/``, a copy in its run directory) of the processes it starts, each by
pid, start time and a string its command line holds (a recycled pid is another process), and of
what it makes in each namespace; the manifest goes when teardown leaves nothing alive. ``clean``
reads the manifests of runners that are dead and removes what they record: nothing by wildcard,
no file it did not make (Mininet's own cleanup removes ``/tmp/*.log``, anyone's). Beyond the
manifests it removes only what carries draftnet's own name: the netem probes' namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.files import write_atomic

__all__ = ["ACTIVE", "PROBE_NETNS", "Manifest", "clean", "run_manifest"]

PROBE_NETNS = "draftnet-probe-"  # the prefix of the throwaway namespaces that probe for netem
ACTIVE = "active"  # under the draftnet home: the manifests of runs not (yet) torn down
GONE_WAIT_S = 2.0  # how long a torn-down process may take to be gone


def _start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot: with the pid, it names one process
    for good, a recycled pid being another); None for no such process, or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in brackets may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _is(entry: dict[str, Any]) -> bool:
    """Whether the process an entry records still lives: same pid, same start time, and its
    command line still holds what it was started with."""
    pid, start = int(entry["pid"]), entry.get("start")
    now = _start_time(pid)
    return now is not None and now == start and str(entry.get("match", "")) in _cmdline(pid)


@dataclass(slots=True)
class Manifest:
    """What one run makes, written down as it makes it, so that ``clean`` can undo it after a
    runner that was killed: the processes (pid, start time, a string their command line
    holds), and what each namespace and the root namespace got (interfaces, TUN devices, route
    tables and rules, qdiscs). Saved on every change to ``path`` (the draftnet home's
    ``active/<run id>.json``) and to ``copy`` (the run directory's ``manifest.json``). A run
    makes no file outside its run directory today; ``clean`` removes any a manifest lists
    under ``files``."""

    path: Path
    copy: Path | None
    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, run_dir: Path | None) -> Manifest:
        from emu.models.embedded import draftnet_home

        me = os.getpid()
        run_id = time.strftime(f"%Y%m%d-%H%M%S-{me}")
        manifest = cls(
            path=draftnet_home() / ACTIVE / f"{run_id}.json",
            copy=run_dir / "manifest.json" if run_dir else None,
            doc={
                "run_id": run_id,
                "run_dir": str(run_dir) if run_dir else None,
                "runner": {"pid": me, "start": _start_time(me), "argv": sys.argv},
                "processes": [],
                "made": [],
            },
        )
        manifest.path.parent.mkdir(parents=True, exist_ok=True)
        manifest._save()
        return manifest

    def process(self, pid: int, *, what: str, match: str) -> None:
        """A process started: ``match`` is a string its command line holds once it runs."""
        entry = {"pid": pid, "start": _start_time(pid), "what": what, "match": match}
        self.doc["processes"].append(entry)
        self._save()

    def made(self, kind: str, names: Iterable[str], *, where: str) -> None:
        """Things of one ``kind`` made in host ``where``'s namespace (``root``: the machine's
        own, where ``clean`` removes an interface itself; a host's goes with its namespace)."""
        made = self.doc["made"]
        new = [{"kind": kind, "name": n, "where": where} for n in names]
        made += [m for m in new if m not in made]
        self._save()

    def live(self) -> list[dict[str, Any]]:
        return [p for p in self.doc["processes"] if _is(p)]

    def _save(self) -> None:
        text = json.dumps(self.doc, indent=1)
        write_atomic(self.path, text)
        if self.copy is not None:
            write_atomic(self.copy, text)

    def close(self) -> bool:
        """After teardown: drop the active manifest unless something it records lives on (it
        stays for ``clean`` then). Whether everything was gone."""
        deadline = time.monotonic() + GONE_WAIT_S
        while (left := self.live()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.doc["closed"] = {"left": left}
        self._save()
        if not left:
            self.path.unlink(missing_ok=True)
        return not left


@contextmanager
def run_manifest(run_dir: Path | None) -> Iterator[Manifest]:
    """A run's manifest, for the ``with`` block that makes and tears down what it records."""
    manifest = Manifest.start(run_dir)
    try:
        yield manifest
    finally:
        manifest.close()


def clean() -> list[str]:
    """Undo what each manifest of a dead runner records: kill its processes that still run
    (and whatever else runs in a namespace whose recorded shell still lives; the namespace and
    everything made in it go with them), delete its interfaces in the root namespace and its
    files; then remove netem probes' namespaces (``draftnet-probe-*``) older than a minute. A
    line for each thing removed; a manifest whose runner is alive is left alone."""
    from emu.models.embedded import draftnet_home

    done: list[str] = []
    for path in sorted((draftnet_home() / ACTIVE).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            done.append(f"{path}: unreadable ({exc}), left alone")
            continue
        runner = doc.get("runner", {})
        if _is({**runner, "match": ""}):
            done.append(f"run {doc['run_id']} is running (pid {runner['pid']}): left alone")
            continue
        done += [f"run {doc['run_id']}: {line}" for line in _undo(doc)]
        path.unlink(missing_ok=True)
    done += _old_probes()
    return done


def _undo(doc: dict[str, Any]) -> list[str]:
    live = [p for p in doc.get("processes", []) if _is(p)]
    hosts = {p["what"].removeprefix("host "): p for p in live if p["what"].startswith("host ")}
    victims = {int(p["pid"]): f"{p['what']} (pid {p['pid']})" for p in live}
    own = os.readlink("/proc/self/ns/net")
    for name, shell in hosts.items():  # its namespace is its own while its shell lives
        with suppress(OSError):
            ns = os.readlink(f"/proc/{shell['pid']}/ns/net")
            if ns != own:
                for pid in _in_namespace(ns):
                    victims.setdefault(pid, f"a process in host {name} (pid {pid})")
    for pid in victims:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + GONE_WAIT_S
    while any(_start_time(p) is not None for p in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = [f"killed {what}" for what in victims.values()]
    if hosts:
        made = [m for m in doc.get("made", []) if m["where"] in hosts]
        done.append(
            f"the namespaces of {', '.join(hosts)} went with their processes, and the "
            f"{len(made)} things made in them (interfaces, TUN devices, routes, qdiscs)"
        )
    for m in doc.get("made", []):
        if m["where"] == "root" and m["kind"] == "interface" and _del_link(m["name"]):
            done.append(f"deleted interface {m['name']}")
    for f in doc.get("files", []):
        with suppress(FileNotFoundError):
            Path(f).unlink()
            done.append(f"removed {f}")
    return done or ["nothing of it was left"]


def _in_namespace(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if os.readlink(entry / "ns" / "net") == ns:
                    pids.append(int(entry.name))
    return pids


def _del_link(name: str) -> bool:
    """Delete an interface of the root namespace if it exists; whether it did."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)
        if not index:
            return False
        ipr.link("del", index=index[0])
    return True


def _old_probes(min_age_s: float = 60.0) -> list[str]:
    """Namespaces named with draftnet's netem probe's prefix, older than a probe lives."""
    done = []
    for f in sorted(Path("/run/netns").glob(f"{PROBE_NETNS}*")):
        with suppress(OSError):
            if time.time() - f.stat().st_mtime < min_age_s:
                continue  # a probe may be using it
            cmd = ["ip", "netns", "del", f.name]
            if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
                done.append(f"deleted namespace {f.name}")
    return done
