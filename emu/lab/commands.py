"""The lab's commands on ``draftnet``'s command line: ``edge``, ``user`` and ``lab``.

Layer: entry point (``emu.cli`` adds these parsers and calls these functions); the work is in
``emu.lab``'s modules, imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LAB_COMMANDS", "add_lab_parsers"]


def _address(text: str) -> tuple[str, int]:
    from emu.runners.node import address

    return address(text)


def _auth_args(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--lab", type=Path, metavar="DIR", help="the lab's credentials (lab init)")
    how.add_argument(
        "--insecure",
        action="store_true",
        help="plain TCP, no authentication (the edge's summary says auth: insecure)",
    )
    p.add_argument(
        "--auth",
        choices=["mtls", "token"],
        default="mtls",
        help="with --lab: mutual TLS with each node's certificate (default), or TLS that "
        "proves the edge and a pre-shared token per user",
    )
    p.add_argument("--timing", help="the node's compute time (emu.timing: profile or real)")
    p.add_argument("--clock-skew-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def _named_address(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, at = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=HOST:PORT, got {text!r}")
    return name, _address(at)


def _serve_args(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument(
        "--duration", dest="serve_s", type=float, default=0.0,
        help="stop after this many seconds (default: serve until SIGTERM or SIGINT)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help=f"run directory (default: runs/{who}-<time>)")


def add_lab_parsers(
    sub: Any,
    scenario_args: Callable[[argparse.ArgumentParser], None],
    policy_help: str,
    parser_class: type[argparse.ArgumentParser],
) -> None:
    edge = sub.add_parser("edge", help="lab mode: serve as the edge (verifier) on this machine")
    scenario_args(edge)
    edge.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    _auth_args(edge)
    edge.add_argument("--name", default="edge", help="the edge's node name (its certificate)")
    edge.add_argument("--policy", help=policy_help)
    _serve_args(edge, "edge")
    user = sub.add_parser("user", help="lab mode: draft as user N on this machine")
    scenario_args(user)
    user.add_argument("--connect", type=_address, required=True, metavar="HOST:PORT")
    _auth_args(user)
    user.add_argument("--id", dest="index", type=int, required=True, help="the user's id")
    user.add_argument(
        "--server-name",
        help="the name the edge's (dsd: the router's) certificate carries (default: edge; "
        "dsd: router)",
    )
    user.add_argument(
        "--verifier", dest="verifiers", action="append", type=_named_address, default=[],
        metavar="NAME=HOST:PORT", help="dsd: a verifier the drafter reaches (repeat for each)",
    )  # fmt: skip
    user.add_argument("--out", type=Path, help="the user's own copy of its records")
    router = sub.add_parser("router", help="lab mode (dsd): route and collect on this machine")
    scenario_args(router)
    router.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    _auth_args(router)
    router.add_argument("--policy", help=policy_help)
    _serve_args(router, "router")
    verifier = sub.add_parser("verifier", help="lab mode (dsd): verify as verifier K here")
    scenario_args(verifier)
    verifier.add_argument("--id", dest="index", type=int, required=True, help="the verifier's")
    verifier.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    verifier.add_argument(
        "--connect", type=_address, required=True, metavar="HOST:PORT", help="the router"
    )
    _auth_args(verifier)
    verifier.add_argument(
        "--server-name", default="router", help="the name the router's certificate carries"
    )
    _serve_args(verifier, "verifier")
    small = sub.add_parser("small-cell", help="lab mode (hetnet): plan, draft and collect here")
    scenario_args(small)
    small.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    small.add_argument(
        "--connect", type=_address, required=True, metavar="HOST:PORT", help="the macro cell"
    )
    _auth_args(small)
    small.add_argument("--policy", help=policy_help)
    small.add_argument(
        "--wait", dest="wait_s", type=float, default=60.0,
        help="start once every task's user has attached, or after this many seconds",
    )  # fmt: skip
    small.add_argument("--out", type=Path, help="run directory (default: runs/small-cell-<time>)")
    macro = sub.add_parser("macro-cell", help="lab mode (hetnet): verify the small cell's rounds")
    scenario_args(macro)
    macro.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    macro.add_argument(
        "--connect", type=_address, required=True, metavar="HOST:PORT", help="the small cell"
    )
    _auth_args(macro)
    _serve_args(macro, "macro-cell")
    lab = sub.add_parser("lab", help="lab mode: credentials and each machine's command")
    lab_sub = lab.add_subparsers(dest="action", required=True, parser_class=parser_class)
    init = lab_sub.add_parser(
        "init", help="make the lab's CA, and each node's certificate and token"
    )
    init.add_argument("dir", type=Path)
    init.add_argument("--nodes", help="the nodes, separated by commas (edge,u0,u1)")
    init.add_argument("--lab-file", type=Path, help="issue every node this lab file names")
    init.add_argument("--days", type=int, default=365, help="how long the certificates last")
    init.add_argument("--json", action="store_true", help="print what it made as JSON")
    cmds = lab_sub.add_parser("commands", help="the command to run on each machine of a lab")
    cmds.add_argument("lab_file", type=Path)
    cmds.add_argument("--json", action="store_true", help="print them as JSON")


def _credentials(args: argparse.Namespace, node: str, *, serves: bool) -> Any:
    from emu.lab.tls import credentials

    auth = "insecure" if args.insecure else args.auth
    return credentials(args.lab, node, auth, serves=serves)


def _lab_scenario(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    if args.timing:
        args.sets = [*(args.sets or []), ("emu.timing", args.timing)]
    return load(args)


def cmd_edge(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    import time

    from emu.lab.roles import run_edge

    serve_s = _serve_s(args)
    if args.policy:
        args.sets = [*(args.sets or []), ("planner.policy", args.policy)]
    sc = _lab_scenario(args, load)
    cred = _credentials(args, args.name, serves=True)
    out = args.out or Path("runs") / time.strftime("edge-%Y%m%d-%H%M%S")
    doc = run_edge(
        sc, listen=args.listen, cred=cred, out_dir=out, duration_s=serve_s,
        skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        r = doc["results"][doc["policy"]]
        lossless = {True: "lossless; ", False: "NOT LOSSLESS; ", None: ""}[r.get("lossless")]
        print(
            f"edge: {r['throughput_tok_s']:.1f} tok/s over {doc['duration_s']:.1f} s "
            f"({doc['auth']}); {lossless}{len(doc['refused'])} refused; "
            f"summary in {out}/summary.json",
            file=sys.stderr,
        )
    return doc


def _serve_s(args: argparse.Namespace) -> float:
    if args.serve_s < 0:
        from emu.errors import ConfigError

        raise ConfigError(f"--duration must be >= 0 (0: until signalled), got {args.serve_s}")
    return float(args.serve_s)


def cmd_router(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    import time

    from emu.lab.dsd_roles import ROUTER, run_router

    serve_s = _serve_s(args)
    if args.policy:
        args.sets = [*(args.sets or []), ("planner.policy", args.policy)]
    sc = _lab_scenario(args, load)
    cred = _credentials(args, ROUTER, serves=True)
    out = args.out or Path("runs") / time.strftime("router-%Y%m%d-%H%M%S")
    doc = run_router(
        sc, listen=args.listen, cred=cred, out_dir=out, duration_s=serve_s,
        skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        r = doc["results"][doc["policy"]]
        print(
            f"router: {r['conversations']} conversations, {r['throughput_tok_s']:.1f} tok/s "
            f"({doc['auth']}); {len(doc['refused'])} refused; summary in {out}/summary.json",
            file=sys.stderr,
        )
    return doc


def cmd_verifier(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    from emu.lab.dsd_roles import dsd_problem_for_lab, run_verifier, verifier_name

    serve_s = _serve_s(args)
    sc = _lab_scenario(args, load)
    cred = _credentials(args, verifier_name(dsd_problem_for_lab(sc), args.index), serves=True)
    return run_verifier(
        sc, index=args.index, listen=args.listen, router=args.connect, cred=cred,
        server=args.server_name, out_dir=args.out, duration_s=serve_s,
        skew_ms=args.clock_skew_ms,
    )  # fmt: skip


def _cmd_dsd_drafter(args: argparse.Namespace, sc: Any) -> Any:
    from emu.lab.dsd_roles import drafter_name, dsd_problem_for_lab, run_dsd_drafter

    name = drafter_name(dsd_problem_for_lab(sc), args.index)
    cred = _credentials(args, name, serves=False)
    doc = run_dsd_drafter(
        sc, index=args.index, router=args.connect, verifiers=dict(args.verifiers), cred=cred,
        server=args.server_name or "router", out_dir=args.out, skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        print(f"{name}: {len(doc['finished'])} conversations", file=sys.stderr)
    return doc


def cmd_small_cell(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    import time

    from emu.lab.hetnet_roles import SMALL, run_small_cell

    if args.policy:
        args.sets = [*(args.sets or []), ("planner.policy", args.policy)]
    sc = _lab_scenario(args, load)
    cred = _credentials(args, SMALL, serves=True)
    out = args.out or Path("runs") / time.strftime("small-cell-%Y%m%d-%H%M%S")
    doc = run_small_cell(
        sc, listen=args.listen, macro=args.connect, cred=cred, out_dir=out,
        wait_s=args.wait_s, skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        r = doc["results"][doc["policy"]]
        print(
            f"small cell: {r['finished']} of {r['tasks']} tasks done, "
            f"{r['latency_ms']['total']:.0f} ms in all ({doc['auth']}); "
            f"summary in {out}/summary.json",
            file=sys.stderr,
        )
    return doc


def cmd_macro_cell(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    from emu.lab.hetnet_roles import MACRO, run_macro_cell

    serve_s = _serve_s(args)
    sc = _lab_scenario(args, load)
    cred = _credentials(args, MACRO, serves=True)
    return run_macro_cell(
        sc, listen=args.listen, small=args.connect, cred=cred, out_dir=args.out,
        duration_s=serve_s, skew_ms=args.clock_skew_ms,
    )  # fmt: skip


def _cmd_task_user(args: argparse.Namespace, sc: Any) -> Any:
    from emu.lab.hetnet_roles import run_task_user
    from nodes.core.verifier import user_node

    cred = _credentials(args, user_node(args.index), serves=False)
    doc = run_task_user(
        sc, index=args.index, small=args.connect, cred=cred, out_dir=args.out,
        skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        print(f"{user_node(args.index)}: {len(doc['tokens'])} tokens", file=sys.stderr)
    return doc


def cmd_user(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    from emu.lab.roles import run_user
    from nodes.core.verifier import user_node

    sc = _lab_scenario(args, load)
    if sc.deployment.system == "dsd":
        return _cmd_dsd_drafter(args, sc)
    if sc.deployment.system == "hetnet":
        return _cmd_task_user(args, sc)
    args.server_name = args.server_name or "edge"
    cred = _credentials(args, user_node(args.index), serves=False)
    doc = run_user(
        sc, index=args.index, connect=args.connect, cred=cred, out_dir=args.out,
        server=args.server_name, skew_ms=args.clock_skew_ms,
    )  # fmt: skip
    if not args.json:
        print(
            f"{user_node(args.index)}: {doc['committed_tokens']} tokens in "
            f"{doc['sessions']} sessions, {doc['reconnects']} reconnects",
            file=sys.stderr,
        )
    return doc


def cmd_lab(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> Any:
    from emu.errors import ConfigError
    from emu.lab.labfile import commands, load_lab

    if args.action == "commands":
        out = commands(load_lab(args.lab_file))
        if not args.json:
            for name, c in out.items():
                print(f"# {name} ({c['role']}) on {c['host']}\n{c['command']}")
        return out
    from emu.lab.certs import init_lab

    nodes: list[str] = []
    if args.lab_file:
        nodes += [n.name for n in load_lab(args.lab_file).nodes]
    if args.nodes:
        nodes += [n.strip() for n in args.nodes.split(",")]
    if not nodes:
        raise ConfigError("lab init needs --nodes or --lab-file, got neither")
    made = init_lab(args.dir, nodes, days=args.days)
    doc = {"dir": str(made.dir), "issued": list(made.issued), "kept": list(made.kept)}
    if not args.json:
        print(
            f"lab {made.dir}: issued {', '.join(made.issued) or 'none'}"
            + (f"; kept {', '.join(made.kept)}" if made.kept else ""),
            file=sys.stderr,
        )
    return doc


LAB_COMMANDS = {
    "edge": cmd_edge,
    "user": cmd_user,
    "router": cmd_router,
    "verifier": cmd_verifier,
    "small-cell": cmd_small_cell,
    "macro-cell": cmd_macro_cell,
    "lab": cmd_lab,
}
