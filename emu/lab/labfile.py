"""The lab file: which machine runs which role, and the command to start each.

Layer: emu (reads a file). A lab file is TOML:

    scenario = "scenario.toml"   # optional (default: the embedded one); relative to this file
    credentials = "lab"          # the directory draftnet lab init made; relative to this file
    auth = "mtls"                # mtls, token or insecure
    port = 7100                  # the edge listens here

    [[node]]
    name = "edge"
    role = "edge"
    host = "192.168.1.10"        # the address the others reach it at

    [[node]]
    name = "u0"                  # a user's name is u<id>: its certificate names it
    role = "user"
    host = "192.168.1.21"

A DSD lab names a ``router`` (its name: router), its verifiers (``role = "verifier"``, named
v<k>) and its drafters (``role = "drafter"``, named d<i>) instead of an edge and its users; a
heterogeneous-edge lab a ``small-cell`` (sbs), a ``macro-cell`` (mbs) and its tasks' users
(u<k>). Every server listens at ``port``.

``draftnet lab commands LAB.toml`` prints the command to run on each machine;
``draftnet lab init DIR --lab-file LAB.toml`` makes the credentials of every node it names.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.errors import ConfigError
from emu.lab.certs import check_node_name
from emu.lab.tls import AUTH_MODES

__all__ = ["ROLES", "Lab", "LabNode", "commands", "load_lab"]

# DiP-SD's, DSD's, then the heterogeneous edge's (whose users are ``user``s too)
ROLES = ("edge", "user", "router", "verifier", "drafter", "small-cell", "macro-cell")
_NAMES = {  # what each role's node must be called (its certificate names it so)
    "user": (re.compile(r"^u(\d+)$"), "u<id> (u0, u1, ...)"),
    "verifier": (re.compile(r"^v(\d+)$"), "v<k> (v0, v1, ...)"),
    "drafter": (re.compile(r"^d(\d+)$"), "d<i> (d0, d1, ...)"),
    "router": (re.compile(r"^router$"), "router"),
    "small-cell": (re.compile(r"^sbs$"), "sbs"),
    "macro-cell": (re.compile(r"^mbs$"), "mbs"),
}
_HEADS = ("edge", "router", "small-cell")  # a lab has one: DiP-SD's, DSD's or hetnet's


@dataclass(frozen=True, slots=True)
class LabNode:
    name: str
    role: str
    host: str


@dataclass(frozen=True, slots=True)
class Lab:
    path: Path
    scenario: Path | None
    credentials: Path
    auth: str
    port: int
    nodes: tuple[LabNode, ...]

    @property
    def head(self) -> LabNode:
        """The edge (DiP-SD) or the router (DSD): the node the others dial first."""
        return next(n for n in self.nodes if n.role in _HEADS)


def _field(doc: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    v = doc.get(key, default)
    if v is None or (kind is int and type(v) is not int) or not isinstance(v, kind):
        raise ConfigError(f"{where}{key} must be a {kind.__name__}, got {v!r}")
    return v


def load_lab(path: Path) -> Lab:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"lab file must be readable, got {str(path)!r} ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"lab file {path} must be TOML: {exc}") from exc
    known = {"scenario", "credentials", "auth", "port", "node"}
    if unknown := sorted(set(doc) - known):
        raise ConfigError(f"lab file {path}: {unknown[0]} is not a field (fields: {sorted(known)})")
    base = path.parent
    scenario = doc.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise ConfigError(f"lab file {path}: scenario must be a path, got {scenario!r}")
    auth = _field(doc, "auth", str, "", "mtls")
    if auth not in AUTH_MODES:
        raise ConfigError(
            f"lab file {path}: auth must be one of {', '.join(AUTH_MODES)}, got {auth!r}"
        )
    port = _field(doc, "port", int, "", 7100)
    if not 0 < port < 65536:
        raise ConfigError(f"lab file {path}: port must be in [1, 65535], got {port}")
    nodes = []
    for i, n in enumerate(doc.get("node", [])):
        where = f"lab file {path}: node[{i}]."
        if not isinstance(n, dict):
            raise ConfigError(f"{where[:-1]} must be a table, got {n!r}")
        if unknown := sorted(set(n) - {"name", "role", "host"}):
            raise ConfigError(f"{where}{unknown[0]} is not a field (fields: name, role, host)")
        name = check_node_name(_field(n, "name", str, where), f"{where}name")
        role = _field(n, "role", str, where)
        if role not in ROLES:
            raise ConfigError(f"{where}role must be one of {', '.join(ROLES)}, got {role!r}")
        if role in _NAMES and not _NAMES[role][0].match(name):
            raise ConfigError(f"{where}name of a {role} must be {_NAMES[role][1]}, got {name!r}")
        nodes.append(LabNode(name, role, _field(n, "host", str, where)))
    heads = [n.role for n in nodes if n.role in _HEADS]
    if len(heads) != 1:
        raise ConfigError(f"lab file {path}: node must have exactly one role = \"edge\" "
                          f"(DiP-SD), \"router\" (DSD) or \"small-cell\" (hetnet), got "
                          f"{len(heads)}")  # fmt: skip
    system = {"edge": ("edge", "user"), "router": ("router", "verifier", "drafter"),
              "small-cell": ("small-cell", "macro-cell", "user")}[heads[0]]  # fmt: skip
    if stray := [n for n in nodes if n.role not in system]:
        raise ConfigError(f"lab file {path}: node {stray[0].name!r} is a {stray[0].role}, which "
                          f"a lab with the {heads[0]} has not")  # fmt: skip
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise ConfigError(f"lab file {path}: node names must be unique, got {dup!r} twice")
    return Lab(
        path=path,
        scenario=base / scenario if scenario else None,
        credentials=base / _field(doc, "credentials", str, "", "lab"),
        auth=auth,
        port=port,
        nodes=tuple(nodes),
    )


def commands(lab: Lab, *, out: str = "runs/lab") -> dict[str, dict[str, str]]:
    """Each node's host and the command to run there (paths as the lab file gives them:
    every machine is expected to hold the same files at the same place)."""
    sc = [shlex.quote(str(lab.scenario))] if lab.scenario else []
    how = ["--insecure"] if lab.auth == "insecure" else ["--lab", shlex.quote(str(lab.credentials))]
    if lab.auth == "token":
        how += ["--auth", "token"]
    head = f"{lab.head.host}:{lab.port}"
    listen = ["--listen", f"0.0.0.0:{lab.port}"]
    verifiers = [f"--verifier {v.name}={v.host}:{lab.port}" for v in lab.nodes
                 if v.role == "verifier"]  # fmt: skip
    out_cmds = {}
    for n in lab.nodes:
        ident = _NAMES[n.role][0].match(n.name) if n.role in _NAMES else None
        index = ["--id", ident.group(1)] if ident is not None and ident.groups() else []
        if n.role == "edge":
            argv = ["draftnet", "edge", *sc, *listen, *how, "--name", n.name,
                    "--out", shlex.quote(out)]  # fmt: skip
        elif n.role == "user" and lab.head.role == "small-cell":
            argv = ["draftnet", "user", *sc, "--connect", head, *how, *index]
        elif n.role == "user":
            argv = ["draftnet", "user", *sc, "--connect", head, *how, *index,
                    "--server-name", lab.head.name]  # fmt: skip
        elif n.role == "router":
            argv = ["draftnet", "router", *sc, *listen, *how, "--out", shlex.quote(out)]
        elif n.role == "small-cell":
            macro = next((m.host for m in lab.nodes if m.role == "macro-cell"), "MACRO-CELL")
            argv = ["draftnet", "small-cell", *sc, *listen, "--connect", f"{macro}:{lab.port}",
                    *how, "--out", shlex.quote(out)]  # fmt: skip
        elif n.role == "macro-cell":
            argv = ["draftnet", "macro-cell", *sc, *listen, "--connect", head, *how]
        elif n.role == "verifier":
            argv = ["draftnet", "verifier", *sc, *index, *listen, "--connect", head, *how]
        else:
            argv = ["draftnet", "user", *sc, *index, "--connect", head, *how, *verifiers]
        out_cmds[n.name] = {"host": n.host, "role": n.role, "command": " ".join(argv)}
    return out_cmds
