"""Human-readable output: short tables on stderr (stdout is kept for --json).

Layer: emu (orchestration).
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_channel", "print_profile", "print_run", "print_sim", "print_solve"]

LOG_WIDTH = 120  # where stderr is a file or a pipe (a log, CI), not rich's 80 columns


def _stderr() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console


def print_solve(out: dict[str, Any], console: Console | None = None) -> None:
    console = console or _stderr()
    if out.get("system") == "hetnet":
        _print_solve_hetnet(out, console)
        return
    plan = out["plan"]
    head = (
        f"[bold]{out['policy']}[/] on scenario [bold]{out['scenario']}[/]: {out['users']} users, "
        f"[bold green]{out['throughput_tok_s']:.2f} tok/s[/], cycle {out['cycle_ms']:.1f} ms, "
        f"solved in {out['solve_ms']:.0f} ms"
    )
    console.print(head)
    if abs(out["expected_tok_s"] / out["throughput_tok_s"] - 1) > 1e-6:
        console.print(
            f"with the links' noise and the edge's deadline: {out['expected_tok_s']:.2f} tok/s "
            f"expected, cycle {out['expected_cycle_ms']:.1f} ms"
        )
    t = Table(title="plan (batches verified in this order, cyclically)", title_justify="left")
    for col in ("batch", "users", "draft lengths", "ready ms", "verify ms", "memory GB"):
        t.add_column(col, justify="right" if col != "users" else "left")
    for n, users in enumerate(plan["batches"]):
        t.add_row(
            str(n),
            " ".join(map(str, users)),
            " ".join(str(plan["draft_len"][u]) for u in users),
            f"{plan['ready_ms'][n]:.1f}",
            f"{plan['verify_ms'][n]:.1f}",
            f"{plan['memory_bytes'][n] / 1e9:.1f}",
        )
    console.print(t)
    b = Table(title="baselines", title_justify="left")
    b.add_column("policy")
    b.add_column("tok/s", justify="right")
    b.add_column(f"{out['policy']} speedup", justify="right")
    for key, thr in out["baselines"].items():
        b.add_row(key.replace("_", "-"), f"{thr:.2f}", f"{out['speedup'][key]:.2f}x")
    console.print(b)


def _print_solve_hetnet(out: dict[str, Any], console: Console) -> None:
    lat, plan = out["latency_ms"], out["plan"]
    console.print(
        f"[bold]{out['policy']}[/] on scenario [bold]{out['scenario']}[/]: {out['tasks']} tasks, "
        f"mean latency [bold green]{lat['mean'] / 1000:.2f} s[/] (p95 {lat['p95'] / 1000:.2f} s, "
        f"makespan {lat['makespan'] / 1000:.2f} s), solved in {out['solve_ms']:.0f} ms"
    )
    t = Table(title="plan (batches in the order they run)", title_justify="left")
    opens = plan.get("opens_ms") or []
    cols = ["batch", "tasks", "spec len", "rounds"] + (["window opens ms"] if opens else [])
    for col in (*cols, "uploaded by ms"):
        t.add_column(col, justify="right")
    for m, batch in enumerate(plan["batches"]):
        t.add_row(
            str(m),
            str(len(batch)),
            str(plan["spec_len"][m]),
            str(plan["rounds"][m]),
            *([f"{opens[m]:.0f}"] if opens else []),
            f"{plan['release_ms'][m]:.2f}",
        )
    console.print(t)
    parts = ", ".join(
        f"{k.replace('_', ' ')} {v / 1000:.2f} s" for k, v in out["breakdown_ms"].items()
    )
    console.print(f"a task's mean latency: {parts}")
    b = Table(title="against the reconstructed DP and the baselines", title_justify="left")
    b.add_column("plan")
    b.add_column("mean latency s", justify="right")
    b.add_column("p95 s", justify="right")
    b.add_column(f"{out['policy']} lower by", justify="right")
    rows = [("dp (reconstructed)", out["dp"]), *out["baselines"].items()]
    for name, other in rows:
        o = other["latency_ms"]
        gain = 100.0 * (1.0 - lat["total"] / o["total"])
        b.add_row(
            name.replace("_", " "),
            f"{o['mean'] / 1000:.2f}",
            f"{o['p95'] / 1000:.2f}",
            f"{gain:.1f}%",
        )
    console.print(b)


def _print_hetnet(out: dict[str, Any], console: Console) -> None:
    """The heterogeneous edge's sim or run: each policy's latency against the evaluator's."""
    m = out["models"]
    where = "Mininet hosts" if out["mode"] == "emu" else "a virtual clock"
    console.print(
        f"[bold]{'run' if out['mode'] == 'emu' else 'sim'}[/] of scenario "
        f"[bold]{out['scenario']}[/]: {out['tasks']} tasks on {where}, {m['kind']} models "
        f"(acceptance {m['acceptance']}), seed {out['seed']}, {out['wall_s']:.1f} s wall"
    )
    t = Table()
    cols = ["policy", "done", "mean s", "predicted", "error", "p95 s", "makespan s"]
    cols += ["accept", "rounds (predicted)", "TTFT p50 ms", "lossless"]
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right")
    for pol, r in out["results"].items():
        lat, pred = r["latency_ms"] or {}, r["predicted_latency_ms"]
        t.add_row(
            pol,
            f"{r['finished']}/{r['tasks']}",
            _f(lat.get("mean", 0) / 1000, ".2f") if lat else "-",
            f"{pred['mean'] / 1000:.2f}",
            _f(r["error_pct"], "+.1f") + ("%" if r["error_pct"] is not None else ""),
            _f(lat.get("p95", 0) / 1000, ".2f") if lat else "-",
            _f(lat.get("makespan", 0) / 1000, ".2f") if lat else "-",
            _f(r["acceptance_rate"], ".3f"),
            f"{r['rounds']} ({r['predicted_rounds']})",
            _f((r["ttft_ms"] or {}).get("p50"), ".0f"),
            {None: "-", True: "yes", False: "NO"}[r.get("lossless")],
        )
    console.print(t)
    for pol, r in out["results"].items():
        parts = ", ".join(
            f"{k.replace('_', ' ')} {v / 1000:.2f} s ({r['predicted_breakdown_ms'][k] / 1000:.2f})"
            for k, v in r["breakdown_ms"].items()
        )
        console.print(f"{pol}: a task's mean latency, measured (predicted): {parts}")


def _print_dsd(out: dict[str, Any], console: Console) -> None:
    """DSD's sim or run: each window policy's throughput, windows and latencies."""
    emu = out["mode"] == "emu"
    where = "Mininet hosts" if emu else "a virtual clock"
    scale = f", time scale {out['time_scale']:g}" if emu else ""
    console.print(
        f"[bold]{'run' if emu else 'sim'}[/] of scenario [bold]{out['scenario']}[/]: "
        f"{out['drafters']} drafters, {out['verifiers']} verifiers behind {out['router']} on "
        f"{where}, {out['execution']} execution, {out['duration_s']:g} s per policy{scale}, "
        f"seed {out['seed']}, {out.get('wall_s', 0.0):.1f} s wall"
    )
    t = Table()
    cols = ["policy", "tok/s", "conversations", "accept", "mean window", "fused rounds"]
    cols += ["TTFT p50/p95 ms", "TPOT p50/p95 ms", "failed"]
    cols += ["overruns", "lossless"] if emu else []
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right")
    for pol, r in out["results"].items():
        ttft, tpot = r["ttft_ms"], r["tpot_ms"]
        row = [
            pol,
            f"{r['throughput_tok_s']:.0f}",
            str(r["conversations"]),
            f"{r['acceptance_rate']:.3f}",
            f"{r['mean_window']:.2f}",
            str(r["fused_rounds"]),
            f"{ttft['p50']:.0f} / {ttft['p95']:.0f}",
            f"{tpot['p50']:.1f} / {tpot['p95']:.1f}",
            str(r.get("failed_conversations", 0)),
        ]
        if emu:
            row += [
                f"{r.get('overrun_pct', 0.0):.2f}%",
                {None: "-", True: "yes", False: "NO"}[r.get("lossless")],
            ]
        t.add_row(*row)
    console.print(t)


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _servers(out: dict[str, Any]) -> str:
    """ ", on N verifiers behind ROUTER" where a deployment has several verifiers."""
    d = out.get("deployment") or {}
    n = len(d.get("verifiers", ()))
    if n < 2:
        return ""
    behind = f" behind {d['router']} ({d['router_policy']})" if d.get("router") else ""
    return f" on {n} verifiers{behind}"


def print_sim(out: dict[str, Any], console: Console | None = None) -> None:
    """The sim summary: one row per policy, measured against predicted."""
    console = console or _stderr()
    if out.get("system") in ("hetnet", "dsd"):
        (_print_hetnet if out["system"] == "hetnet" else _print_dsd)(out, console)
        return
    console.print(
        f"[bold]sim[/] of scenario [bold]{out['scenario']}[/]: {out['users']} users"
        f"{_servers(out)}, "
        f"{out['duration_s']:g} virtual s per policy, seed {out['seed']}, "
        f"{out['wall_s']:.1f} s wall"
    )
    t = Table()
    cols = ["policy", "tok/s", "predicted", "error", "vs ad", "accept", "mean len"]
    cols += ["TTFT p50/p95 ms", "TPOT p50/p95 ms", "late", "util", "replans"]
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right")
    res = out["results"]
    ad = res.get("ad", {}).get("throughput_tok_s")
    for pol, r in res.items():
        thr, pred = r["throughput_tok_s"], r["predicted_tok_s"]
        t.add_row(
            pol,
            f"{thr:.2f}",
            f"{pred:.2f}",
            f"{100 * (thr / pred - 1):+.1f}%" if pred else "-",
            f"{thr / ad:.2f}x" if ad else "-",
            _f(r["acceptance_rate"], ".3f"),
            _f(r["mean_accepted_len"], ".2f"),
            f"{_f(r['ttft_ms']['p50'], '.0f')}/{_f(r['ttft_ms']['p95'], '.0f')}",
            f"{_f(r['tpot_ms']['p50'])}/{_f(r['tpot_ms']['p95'])}",
            str(r["late_drafts"]),
            f"{r['edge_utilisation']:.2f}",
            str(r["replans"]),
        )
    console.print(t)
    if out.get("out_dir"):
        console.print(f"results in {out['out_dir']}")


def print_profile(out: dict[str, Any], console: Console | None = None) -> None:
    """The fitted latency model and how well it holds."""
    console = console or _stderr()
    fit, arch = out["fit"], out["arch"]
    form = "G(1, F_d(i)) per token" if out["role"] == "draft" else "G(b, F_v(L, I)) per pass"
    console.print(
        f"[bold]{out['role']}[/] {arch['name']} on {out['device']} "
        f"(J={arch['layers']}, h1={arch['hidden']}, h2={arch['ffn']}): {form} = "
        f"[bold]{fit['c_ms_per_flop']:.4g}[/] ms/FLOP x b F + [bold]{fit['beta_ms']:.2f}[/] ms"
    )
    console.print(
        f"fit over {fit['points']} points: mean error {100 * fit['mean_rel_err']:.1f}%, "
        f"largest {100 * fit['max_rel_err']:.1f}%, R^2 {fit['r2']:.3f}"
    )
    if fit["max_rel_err"] > 0.25:
        console.print(
            "[yellow]the affine model misses some points by more than 25%: plans made with "
            "this profile are only as good as the line (see the samples in the file)[/]"
        )
    console.print(f"profile in {out['out']}")


def print_channel(out: dict[str, Any], console: Console | None = None) -> None:
    """Per user: where it is and what its links give."""
    console = console or _stderr()
    r = out["radio"]
    console.print(
        f"[bold]channel[/] of scenario [bold]{out['scenario']}[/]: {len(out['users'])} users, "
        f"{r['scenario']} at {r['carrier_hz'] / 1e9:g} GHz, {r['bandwidth_hz'] / 1e6:g} MHz, "
        f"{r['scheduler']} scheduler, {r['link']} link, {out['duration_s']:g} s "
        f"(generated in {out['generate_s']:.1f} s)"
        + (
            f", {out['handovers']} handovers ({out['handovers_per_user_minute']:.2f} a user "
            "a minute)"
            if out.get("handovers")
            else ""
        )
    )
    t = Table()
    cols = ["user", "cell", "distance m", "LOS", "SINR dB", "up Mbit/s", "down Mbit/s"]
    cols += ["delay ms up/down", "jitter ms", "loss"]
    for col in cols:
        t.add_column(col, justify="right")
    for u in out["users"][:50]:
        t.add_row(
            str(u["user"]),
            str(u["cell"]),
            f"{u['distance_m']:.0f}",
            "yes" if u["los"] else "no",
            f"{u['mean_sinr_db']:.1f}",
            f"{u['up_rate_bps'] / 1e6:.2f}",
            f"{u['down_rate_bps'] / 1e6:.2f}",
            f"{u['up_delay_ms']:.1f}/{u['down_delay_ms']:.1f}",
            f"{u['jitter_ms']:.1f}",
            f"{u['loss']:.4f}",
        )
    console.print(t)
    if len(out["users"]) > 50:
        console.print(f"(first 50 of {len(out['users'])} users; all in summary.json)")
    if out.get("out_dir"):
        console.print(f"traces, link states and plots in {out['out_dir']}")


def print_run(out: dict[str, Any], console: Console | None = None) -> None:
    """The main job's summary: the policies, then every link's fidelity."""
    console = console or _stderr()
    if out.get("system") in ("hetnet", "dsd"):
        (_print_hetnet if out["system"] == "hetnet" else _print_dsd)(out, console)
        for f in out["fidelity"]:
            mark = "ok" if f["ok"] else "OUTSIDE TOLERANCE"
            console.print(f"link {f['link']}: {mark}")
        return
    console.print(
        f"[bold]run[/] of scenario [bold]{out['scenario']}[/]: {out['users']} users"
        f"{_servers(out)} on Mininet hosts, {out['models']} models, {out['timing']} timing, "
        f"{out['shaping']} shaping ({out.get('shaping_why', '')}), "
        f"{out['duration_s']:g} s per policy, {out['wall_s']:.0f} s wall"
        + f", time scale {out.get('time_scale', 1.0):g}"
    )
    if out.get("time_scale_why"):
        console.print(f"time scale {out['time_scale']:g}: {out['time_scale_why']}")
    t = Table()
    cols = ["policy", "tok/s", "predicted", "vs ad", "accept", "TTFT ms p50/95"]
    cols += ["TPOT ms p50/95", "late", "util", "bubbles", "overruns", "deaths"]
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right")
    res = out["results"]
    ad = res.get("ad", {}).get("throughput_tok_s")
    for pol, r in res.items():
        idle = not r["throughput_tok_s"]
        t.add_row(
            f"[red]{pol} (no tokens)[/]" if idle else pol,
            f"[red]{r['throughput_tok_s']:.2f}[/]" if idle else f"{r['throughput_tok_s']:.2f}",
            f"{r['predicted_tok_s']:.2f}",
            f"{r['throughput_tok_s'] / ad:.2f}x" if ad else "-",
            _f(r["acceptance_rate"], ".3f"),
            f"{_f(r['ttft_ms']['p50'], '.0f')}/{_f(r['ttft_ms']['p95'], '.0f')}",
            f"{_f(r['tpot_ms']['p50'])}/{_f(r['tpot_ms']['p95'])}",
            str(r["late_drafts"]),
            f"{r['edge_utilisation']:.2f}",
            str(r["pipeline_bubbles"]),
            str(sum(r.get("overruns", {}).values())),
            str(len(r["deaths"])),
        )
    console.print(t)
    f = Table(title="link fidelity (configured against measured)", title_justify="left")
    for col in ("link", "RTT ms", "up rate Mbit/s", "ok"):
        f.add_column(col, justify="left" if col == "link" else "right")
    for link in out["fidelity"]:
        c, m = link["configured"], link["measured"]
        rate = "-" if not c["up_rate_bps"] else f"{c['up_rate_bps'] / 1e6:.2f}"
        meas_rate = "-" if not m.get("up_rate_bps") else f"{m['up_rate_bps'] / 1e6:.2f}"
        f.add_row(
            link["link"],
            f"{c['rtt_ms']:.1f} / {_f(m.get('rtt_ms'))}",
            f"{rate} / {meas_rate}",
            "yes" if link["ok"] else "[red]NO[/]",
        )
    console.print(f)
    for pol, r in res.items():
        for d in r["deaths"]:
            console.print(
                f"[red]{pol}: node {d['node']} died (exit {d['exit']})[/]: {d['last_output'][-1:]}"
            )
        for d in r.get("stalls", []):
            console.print(
                f"[red]{pol}: node {d['node']} stalled[/] (alive, nothing recorded for "
                f"{d['silent_s']:.0f} s): {d['last_output'][-1:]}"
            )
    from emu.results.runreport import NO_THROUGHPUT, notes

    for note in notes(out):
        console.print(f"[red]{note}[/]" if note.startswith(NO_THROUGHPUT) else note)
    if out.get("out_dir"):
        console.print(f"results in {out['out_dir']}")
