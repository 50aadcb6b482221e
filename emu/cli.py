"""The ``draftnet`` command line: parse arguments, load a scenario, call one function.

Layer: entry point. With ``--json`` a command prints one JSON object on stdout and nothing
else; human output goes to stderr. Exit status: 0 success, 2 bad input (one line naming the
field, the value and the rule), 1 anything else (a ``run`` whose results are no results among
it: one line naming the policy and why, after its output); a run stopped by a signal (SIGINT,
SIGTERM, SIGHUP) exits 128 + the signal's number (130, 143, 129) after one line saying where
it stopped and where its partial results are.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from emu.errors import ConfigError, DraftnetError, Infeasible
from emu.lab.commands import LAB_COMMANDS, add_lab_parsers
from emu.planner.policies import policy_names
from emu.scenario.sections import SHAPING, TIMING

__all__ = ["main"]

# Flags that override scenario fields, by dotted path: applied generically after the file.
OVERRIDES = {
    "users": "users.count",
    "alpha": "users.alpha",
    "policy": "planner.policy",
    "duration": "sim.duration_s",
    "seed": "sim.seed",
    "models": "models.kind",
    "profiles": "profiles",
    "shaping": "emu.shaping",
    "timing": "emu.timing",
    "time_scale": "emu.time_scale",
    "strict": "emu.strict",
    "plots": "channel.plots",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, status 2, like every other bad input.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _policies_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--policy",
        dest="policies",
        action="append",
        help=f"policy to run (repeatable; one of {', '.join(policy_names())}; default: {default})",
    )


def _scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="scenario TOML file (default: the embedded one)")
    p.add_argument("--preset", help="start from a built-in preset (default, dipsd-paper)")
    p.add_argument("--users", type=int, help="number of users (users.count)")
    p.add_argument("--alpha", type=float, help="every user's acceptance rate (users.alpha)")
    _set_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        type=_setting,
        metavar="SECTION.FIELD=VALUE",
        help="override any scenario field, validated like the file (repeatable; after the "
        "other flags); VALUE is TOML (a bare word is a string)",
    )


def _setting(text: str) -> tuple[str, Any]:
    """``section.field=value``: the value read as TOML (a bare word is a string)."""
    import tomllib

    path, eq, raw = text.partition("=")
    path = path.strip()
    if not eq or not path or any(not part.isidentifier() for part in path.split(".")):
        raise argparse.ArgumentTypeError(
            f"must be SECTION.FIELD=VALUE (a dotted scenario field), got {text!r}"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="draftnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    solve = sub.add_parser("solve", help="plan one scenario with the analytic cost model")
    _scenario_args(solve)
    solve.add_argument(
        "--policy", help=f"planning policy (planner.policy): one of {', '.join(policy_names())}"
    )
    solve.add_argument(
        "--profile",
        dest="profiles",
        action="append",
        metavar="FILE",
        help="a draftnet profile TOML (profiles; repeatable)",
    )
    sim = sub.add_parser("sim", help="run the nodes on a virtual clock with simulated links")
    _scenario_args(sim)
    _policies_arg(sim, "the scenario's planner.policy")
    sim.add_argument("--duration", type=float, help="virtual seconds per policy (sim.duration_s)")
    sim.add_argument("--seed", type=int, help="random seed (sim.seed)")
    sim.add_argument(
        "--models",
        choices=["synthetic", "embedded", "files"],
        help="backends (models.kind): synthetic (Bernoulli acceptance), embedded (the "
        "SmolLM2 pair), files (the scenario's models.draft and models.target); time always "
        "comes from the scenario's cost model or profile",
    )
    sim.add_argument(
        "--profile",
        dest="profiles",
        action="append",
        metavar="FILE",
        help="a draftnet profile TOML (profiles; repeatable)",
    )
    sim.add_argument("--out", type=Path, help="run directory (default: runs/sim-<time>)")
    run = sub.add_parser(
        "run", help="the main job: Mininet hosts, shaped links, real sockets (root)"
    )
    _scenario_args(run)
    _policies_arg(run, "dipsd, ad and ad-batch")
    run.add_argument("--duration", type=float, help="seconds per policy (sim.duration_s)")
    run.add_argument("--seed", type=int, help="random seed (sim.seed)")
    run.add_argument("--models", choices=["synthetic", "embedded", "files"], help="models.kind")
    run.add_argument("--shaping", choices=SHAPING, help="the links' shaper (emu.shaping)")
    run.add_argument("--timing", choices=TIMING, help="the nodes' compute time (emu.timing)")
    run.add_argument(
        "--time-scale",
        type=_time_scale,
        help="run every modelled time this many times slower on the wall (a slow host's "
        "headroom; results in modelled time); auto (the default) calibrates this host's draft "
        "and verify steps against the profile and picks the smallest scale with headroom "
        "(emu.time_scale)",
    )
    run.add_argument(
        "--strict",
        action="store_const",
        const=True,
        help="fail on a link outside tolerance (emu.strict)",
    )
    run.add_argument("--out", type=Path, help="run directory (default: runs/run-<time>)")
    chan = sub.add_parser("channel", help="the radio model: link states, traces and plots")
    chan.add_argument("scenario", nargs="?", help="scenario TOML file (default: the embedded one)")
    chan.add_argument("--preset", help="start from a built-in preset (default, dipsd-paper)")
    chan.add_argument("--users", type=int, help="number of users (users.count)")
    chan.add_argument("--duration", type=float, help="seconds of link states (sim.duration_s)")
    chan.add_argument("--seed", type=int, help="random seed (sim.seed)")
    chan.add_argument(
        "--no-plots",
        dest="plots",
        action="store_const",
        const=False,
        help="write no plots, only the series, traces and summary (channel.plots)",
    )
    _set_arg(chan)
    chan.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    chan.add_argument("--out", type=Path, help="run directory (default: runs/channel-<time>)")
    sweep = sub.add_parser(
        "sweep", help="run a study file: its cases (axes x seeds), resumable, into a table"
    )
    sweep.add_argument(
        "study_file",
        type=Path,
        help="the study (TOML; see emu/sweep/spec.py), or a built-in one: network-sensitivity, "
        "network-sensitivity-emu",
    )
    sweep.add_argument(
        "--out", type=Path, help="output dir (default: runs/sweep-<name>); resumes what is there"
    )
    _engine_args(sweep)
    sweep.add_argument("--json", action="store_true", help="print the summary as JSON")
    study = sub.add_parser("study", help="run a reproduction study (CSV and plots)")
    study.add_argument("name", choices=["dipsd-paper"], help="which study")
    study.add_argument("--out", type=Path, default=Path("study/dipsd-paper"), help="output dir")
    study.add_argument("--max-users", type=int, default=32, help="largest M in the sweep")
    _engine_args(study)
    study.add_argument("--json", action="store_true", help="print the headline as JSON")
    prof = sub.add_parser("profile", help="measure a model here and fit the cost model's latency")
    which = prof.add_mutually_exclusive_group(required=True)
    which.add_argument("--draft", type=Path, metavar="GGUF", help="a draft model (llama.cpp)")
    which.add_argument("--target", type=Path, metavar="DIR", help="a target checkpoint")
    prof.add_argument("--device", default="auto", help="the target's device: auto, cpu, cuda")
    prof.add_argument("--threads", type=int, default=1, help="the draft's llama.cpp threads")
    prof.add_argument("--batches", type=_ints, help="batch sizes (e.g. 1,2,4,8)")
    prof.add_argument("--draft-lens", type=_ints, help="draft lengths per user (e.g. 1,4,8)")
    prof.add_argument("--prefixes", type=_ints, help="prefix lengths [tokens] (e.g. 32,128)")
    prof.add_argument("--repeats", type=int, help="timed passes per grid point")
    prof.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    prof.add_argument("--out", type=Path, help="profile TOML (default: profiles/<model>.toml)")
    prof.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    train = sub.add_parser(
        "train-awc",
        help="train DSD's adaptive window control on oracle runs of the simulation",
    )
    _scenario_args(train)
    train.add_argument("--out", type=Path, required=True, help="the weights (.npz) to write")
    train.add_argument(
        "--grid", choices=["full", "quick"], default="full",
        help="the oracle's scenarios: full (60, minutes) or quick (4, seconds; a smoke test)",
    )  # fmt: skip
    train.add_argument("--workers", type=int, default=0, help="processes (default: one a core)")
    train.add_argument("--seed", type=int, default=0, help="the held-out split's and fit's seed")
    clean = sub.add_parser(
        "clean", help="remove what killed runs left behind, as they recorded it (root)"
    )
    clean.add_argument("--json", action="store_true", help="print what it removed as JSON")
    add_lab_parsers(
        sub,
        _scenario_args,
        f"planning policy (planner.policy): one of {', '.join(policy_names())}",
        _Parser,
    )
    models = sub.add_parser("models", help="the embedded model pair")
    models_sub = models.add_subparsers(dest="action", required=True, parser_class=_Parser)
    prep = models_sub.add_parser("prepare", help="make the embedded pair (cached; offline after)")
    prep.add_argument("--json", action="store_true", help="print the pair as JSON")
    return parser


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be integers separated by commas, got {text!r}"
        ) from None


def _load(args: argparse.Namespace) -> Any:
    from emu.scenario import load_scenario

    overrides = {path: getattr(args, flag, None) for flag, path in OVERRIDES.items()}
    for path, value in getattr(args, "sets", None) or ():
        overrides.pop(path, None)  # a later setting of the same field wins
        overrides[path] = value
    return load_scenario(args.scenario, preset=args.preset, overrides=overrides)


def cmd_solve(args: argparse.Namespace) -> dict[str, Any]:
    from emu.results.report import print_solve
    from emu.runners.solve import solve

    out = solve(_load(args))
    if not args.json:
        print_solve(out)
    return out


def cmd_sim(args: argparse.Namespace) -> dict[str, Any]:
    from emu.results.report import print_sim
    from emu.runners.sim import simulate

    scenario = _load(args)
    policies = args.policies or [scenario.planner.policy]
    out_dir = _out_dir(args, "sim")
    total = scenario.sim.duration_s * len(policies)
    with _progress("sim", "virtual s", total, quiet=args.json) as progress:
        out = simulate(scenario, policies, out_dir=out_dir, progress=progress)
    out["out_dir"] = str(out_dir)
    if not args.json:
        print_sim(out)
    return out


@contextmanager
def _progress(kind: str, unit: str, total: float, *, quiet: bool) -> Iterator[Any]:
    """A progress bar over every policy's seconds (on a terminal only); yields the
    ``progress(policy, seconds_done)`` callback the runners call."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    done: dict[str, float] = {}
    with Progress(
        TextColumn(f"{kind} {{task.description}}"),
        BarColumn(),
        TextColumn(f"{{task.completed:.0f}}/{{task.total:.0f}} {unit}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not sys.stderr.isatty() or quiet,
    ) as bar:
        task = bar.add_task("", total=total)

        def progress(policy: str, t: float) -> None:
            done[policy] = t
            bar.update(task, completed=sum(done.values()), description=policy)

        yield progress


def _time_scale(text: str) -> float:
    if text == "auto":
        return 0.0  # emu.time_scale's auto
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number, got {text!r}") from None


def _out_dir(args: argparse.Namespace, kind: str) -> Path:
    out_dir: Path = args.out or Path("runs") / time.strftime(f"{kind}-%Y%m%d-%H%M%S")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(out_dir)!r} cannot be created: {exc.strerror}") from exc
    args.run_dir = out_dir  # where main() logs a traceback, should one come
    return out_dir


def _log_traceback(args: argparse.Namespace) -> Path | None:
    """The current exception's traceback, in the run directory (``error.log``) or, for a
    command without one, in ``$DRAFTNET_HOME/logs``; None if neither can be written."""
    import traceback

    from emu.models.embedded import draftnet_home

    run_dir: Path | None = getattr(args, "run_dir", None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = run_dir / "error.log" if run_dir else draftnet_home() / "logs" / f"error-{stamp}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"draftnet {' '.join(sys.argv[1:])}\n{traceback.format_exc()}")
    except OSError:
        return None
    return path


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local Dask cluster (default: one per core; 1: one case "
        "after another in this process)",
    )
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786; README)",
    )


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from emu.sweep.engine import engine_for
    from emu.sweep.runner import finished, run_study
    from emu.sweep.spec import expand, load_study

    study = load_study(args.study_file)
    cases = expand(study)  # every case validated before the first runs
    engine = engine_for(study.level, workers=args.workers, cluster=args.cluster)
    args.out = args.out or Path("runs") / f"sweep-{study.name}"
    out_dir = _out_dir(args, "sweep")
    console = Console(stderr=True, quiet=args.json)
    with (
        engine,
        Progress(
            TextColumn(f"sweep {study.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done, {task.fields[failed]} failed, {task.fields[running]} running"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=args.json or not console.is_terminal,
        ) as bar,
    ):
        console.print(
            f"sweep [bold]{study.name}[/]: {len(cases)} cases at level {study.level}, "
            f"{engine.describe()}"
        )
        done = finished(out_dir)
        already = sum(c.case_id in done for c in cases)
        slots = engine.slots(study.level)
        left = len(cases) - already
        task = bar.add_task(
            "", total=len(cases), completed=already, failed=0, running=min(slots, left)
        )
        failed = 0

        def said(case: Any, status: str) -> None:
            nonlocal failed, left
            failed += status != "ok"
            left -= 1
            point = ", ".join(f"{k}={v}" for k, v in case.point.items())
            bar.console.print(f"case {case.index} ({point or 'base'}, seed {case.seed}): {status}")
            bar.update(task, advance=1, failed=failed, running=min(slots, left))

        out = run_study(study, out_dir, on_case=said, cases=cases, engine=engine)
    console.print(
        f"{out['ran']} ran ({out['failed']} failed), {out['skipped']} already done; "
        f"results in {out['results']}"
    )
    return out


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    from emu.results.report import print_run
    from emu.runners.emulate import emulate

    scenario = _load(args)
    dipsd = scenario.deployment.system == "dipsd"
    policies = args.policies or (
        ["dipsd", "ad", "ad-batch"] if dipsd else [scenario.planner.policy]
    )
    out_dir = _out_dir(args, "run")
    total = scenario.sim.duration_s * len(policies)
    with _progress("run", "s", total, quiet=args.json) as progress:
        out = emulate(
            scenario,
            policies,
            out_dir,
            progress=progress,
        )
    out["out_dir"] = str(out_dir)
    if not args.json:
        print_run(_marked(out))
    bad = [f"{pol}: {r['invalid_reason']}" for pol, r in out["results"].items() if not r["valid"]]
    if bad:
        args.failure = f"invalid run: {'; '.join(bad)} (results in {out_dir})"
    return out


def _marked(out: dict[str, Any]) -> dict[str, Any]:
    """The run's object with each policy that is no result, or only part of one, named so
    in the terminal's table."""

    def name(pol: str, r: dict[str, Any]) -> str:
        if not r["valid"]:
            return f"{pol} INVALID"
        return f"{pol} (partial)" if r.get("partial") else pol

    return {**out, "results": {name(pol, r): r for pol, r in out["results"].items()}}


def cmd_channel(args: argparse.Namespace) -> dict[str, Any]:
    from emu.results.report import print_channel
    from emu.runners.channel import run_channel

    scenario = _load(args)
    out_dir = _out_dir(args, "channel")
    with _spinner(f"generating {scenario.sim.duration_s:g} s of link states", quiet=args.json):
        out = run_channel(scenario, out_dir)
    out["out_dir"] = str(out_dir)
    if not args.json:
        print_channel(out)
    return out


def _spinner(text: str, *, quiet: bool) -> Any:
    from contextlib import nullcontext

    from rich.console import Console

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return nullcontext()
    return console.status(text)


def cmd_study(args: argparse.Namespace) -> dict[str, Any]:
    from emu.sweep.engine import engine_for
    from emu.sweep.study import run_dipsd_paper

    if args.max_users < 1:
        raise ConfigError(f"--max-users must be >= 1, got {args.max_users}")
    with engine_for("solve", workers=args.workers, cluster=args.cluster) as engine:
        return run_dipsd_paper(args.out, max_users=args.max_users, quiet=args.json, engine=engine)


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    from emu.models.profile import (
        DRAFT_GRID,
        VERIFY_GRID,
        Grid,
        profile_draft,
        profile_target,
        write_profile,
    )
    from emu.results.report import print_profile

    def say(line: str) -> None:
        if not args.json:
            print(f"draftnet: {line}", file=sys.stderr)

    role = "draft" if args.draft else "target"
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    base = DRAFT_GRID if args.draft else VERIFY_GRID["cuda" if "cuda" in args.device else "cpu"]
    grid = Grid(
        batches=base.batches if args.draft or not args.batches else args.batches,
        draft_lens=args.draft_lens or base.draft_lens,
        prefixes=args.prefixes or base.prefixes,
        repeats=args.repeats or base.repeats,
    )
    if args.draft and args.batches:
        raise ConfigError("--batches applies to --target only: a device drafts for one user")
    if args.draft:
        doc = profile_draft(args.draft, threads=args.threads, grid=grid, seed=args.seed, say=say)
        model = args.draft
    else:
        custom = any((args.batches, args.draft_lens, args.prefixes, args.repeats))
        doc = profile_target(
            args.target,
            device=args.device,
            grid=grid if custom else None,
            seed=args.seed,
            say=say,
        )
        model = args.target
    meta = doc["profile"]
    out_path = args.out or Path("profiles") / f"{model.stem}.{role}.{meta['device']}.toml"
    write_profile(doc, out_path)
    section = doc["users"] if role == "draft" else doc["edge"]
    out = {
        "role": role,
        "model": meta["model"],
        "device": meta["device"],
        "arch": section["draft" if role == "draft" else "target"],
        "fit": meta["fit"],
        "out": str(out_path),
    }
    if not args.json:
        print_profile(out)
    return out


def cmd_train_awc(args: argparse.Namespace) -> dict[str, Any]:
    from emu.runners.train_awc import GRIDS, train_awc

    scenario = _load(args)
    if scenario.deployment.system != "dsd":
        raise ConfigError(
            f'train-awc needs a dsd deployment (deployment.system = "dsd", e.g. --preset '
            f"dsd), got deployment.system = {scenario.deployment.system!r}"
        )
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 1 (or 0: one a core), got {args.workers}")
    if args.out.suffix != ".npz":
        raise ConfigError(f"--out must name an .npz file, got {str(args.out)!r}")

    def say(line: str) -> None:
        if not args.json:
            print(f"draftnet: {line}", file=sys.stderr)

    out = train_awc(scenario, args.out, grid=GRIDS[args.grid], workers=args.workers,
                    seed=args.seed, progress=say)  # fmt: skip
    if not args.json:
        print(f"AWC weights written to {out['out']}: {out['snapshots']} snapshots from "
              f"{out['scenarios']} scenarios; label accuracy {out['train_accuracy']:.1%} "
              f"(training), {out.get('holdout_accuracy', math.nan):.1%} (held out)")  # fmt: skip
    return out


def cmd_clean(args: argparse.Namespace) -> dict[str, Any]:
    from emu.runners.manifest import clean

    if os.geteuid() != 0:
        raise ConfigError("clean must run as root: it kills the processes a run left as root")
    done = clean()
    for line in done or ["nothing to clean"]:
        print(f"draftnet: {line}", file=sys.stderr)
    return {"removed": done}


def cmd_models(args: argparse.Namespace) -> dict[str, Any]:
    from emu.models.embedded import prepare

    pair = prepare(say=lambda line: print(f"draftnet: {line}", file=sys.stderr))
    out = {
        "draft": str(pair.draft),
        "target": str(pair.target),
        "draft_type": pair.draft_type,
        "acceptance": pair.acceptance,
    }
    if not args.json:
        print(
            f"embedded pair ready: draft {pair.draft.name} ({pair.draft_type}), target "
            f"{pair.target.name}; greedy acceptance {pair.acceptance:.3f}\n"
            f"  in {pair.target.parent}"
        )
    return out


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "solve": cmd_solve,
    "sim": cmd_sim,
    "run": cmd_run,
    "channel": cmd_channel,
    "study": cmd_study,
    "sweep": cmd_sweep,
    "profile": cmd_profile,
    "train-awc": cmd_train_awc,
    "models": cmd_models,
    "clean": cmd_clean,
    **{name: functools.partial(cmd, load=_load) for name, cmd in LAB_COMMANDS.items()},
}


def _alone(exc: BaseException) -> BaseException:
    """The one error a trio nursery wrapped in a group (every group of one, unwrapped), or
    ``exc`` itself: a node's ConfigError raised inside a nursery is still one line."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            out = COMMANDS[args.command](args)
        except BaseExceptionGroup as group:
            alone = _alone(group)
            if alone is group or not isinstance(alone, DraftnetError):
                raise
            raise alone from group
    except (ConfigError, Infeasible) as exc:
        print(f"draftnet: error: {exc}", file=sys.stderr)
        return 2
    except DraftnetError as exc:
        print(f"draftnet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        # emu.runners.emulate's Interrupted says which signal, and where the run stopped.
        said = getattr(exc, "said", "") or (f"stopped by {exc}" if str(exc) else "interrupted")
        print(f"draftnet: {said}", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except Exception as exc:
        # A bug, not the user's input: one line and where the whole traceback went.
        log = _log_traceback(args)
        where = f"; the traceback is in {log}" if log else ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"draftnet: internal error: {type(exc).__name__}: {first}{where}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        try:
            json.dump(out, sys.stdout, indent=None, allow_nan=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`draftnet solve --json | head`): not our failure. Point
            # stdout at /dev/null so the interpreter's final flush does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    failure = getattr(args, "failure", None)
    if failure:
        print(f"draftnet: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
