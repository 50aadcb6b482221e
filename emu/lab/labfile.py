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

ROLES = ("edge", "user")  # hetnet's and dsd's roles are not lab commands yet
_USER = re.compile(r"^u(\d+)$")


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
    def edge(self) -> LabNode:
        return next(n for n in self.nodes if n.role == "edge")


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
        if role == "user" and not _USER.match(name):
            raise ConfigError(f"{where}name of a user must be u<id> (u0, u1, ...), got {name!r}")
        nodes.append(LabNode(name, role, _field(n, "host", str, where)))
    if sum(n.role == "edge" for n in nodes) != 1:
        raise ConfigError(f"lab file {path}: node must have exactly one role = \"edge\", got "
                          f"{sum(n.role == 'edge' for n in nodes)}")  # fmt: skip
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
    out_cmds = {}
    for n in lab.nodes:
        if n.role == "edge":
            argv = ["draftnet", "edge", *sc, "--listen", f"0.0.0.0:{lab.port}", *how,
                    "--name", n.name, "--out", shlex.quote(out)]  # fmt: skip
        else:
            uid = _USER.match(n.name)
            assert uid is not None
            argv = ["draftnet", "user", *sc, "--connect", f"{lab.edge.host}:{lab.port}", *how,
                    "--id", uid.group(1), "--server-name", lab.edge.name]  # fmt: skip
        out_cmds[n.name] = {"host": n.host, "role": n.role, "command": " ".join(argv)}
    return out_cmds
