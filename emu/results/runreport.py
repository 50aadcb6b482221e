"""The main job's report: ``report.md`` and plots in the run directory.

Layer: emu (orchestration); writes files. Reads the ``run --json`` object and the nodes' records
(``<policy>/events-*.jsonl``). A run that is no result says so first: a policy whose edge died
(``valid`` false) is flagged above the table and struck through in it; a run stopped by a
signal (``partial``) says where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NO_THROUGHPUT",
    "PARTIAL",
    "idle_note",
    "invalid_note",
    "lossless_note",
    "notes",
    "overrun_note",
    "partial_note",
    "stopped_line",
    "warnings",
    "write_run_report",
]


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _round_times(out_dir: Path, policy: str) -> list[float]:
    """Per-token times (round_ms / committed) of every user's rounds."""
    tpot = []
    for f in sorted((out_dir / policy).glob("events-u*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("ev") == "round" and r.get("committed"):
                tpot.append(r["round_ms"] / r["committed"])
    return tpot


def overrun_note(doc: dict[str, Any]) -> str | None:
    """What to do about compute steps that ran longer than their profile (None if none did)."""
    n = sum(sum(r.get("overruns", {}).values()) for r in doc["results"].values())
    if not n or doc.get("timing") != "profile":
        return None
    rounds = sum(int(r.get("rounds") or 0) for r in doc["results"].values())
    share = n / rounds if rounds else 1.0
    said = f"{n} compute steps ({100 * share:.1f}% of the rounds) took longer than their profile"
    if share < 0.01:
        return said + "."
    scale = float(doc.get("time_scale", 1.0))
    return (
        f"{said}: this host is slower than the devices it stands for, so the results understate "
        f"them (late drafts follow). Rerun with --time-scale {2 * scale:g} for headroom."
    )


def lossless_note(doc: dict[str, Any]) -> str | None:
    """One line on the losslessness check of every policy (None where none was made: synthetic
    models or sampling). A policy whose nodes committed nothing was not checked, and says so."""
    parts = []
    for pol, r in doc["results"].items():
        if "lossless_checked" not in r:
            continue
        if r.get("lossless") is None:
            parts.append(f"{pol} not checked (nothing committed)")
            continue
        verdict = "lossless" if r["lossless"] else "NOT lossless"
        parts.append(f"{pol} {verdict} ({r['lossless_checked'].get('tokens', 0)} tokens)")
    if not parts:
        return None
    return "Greedy check against the target alone: " + ", ".join(parts) + "."


NO_THROUGHPUT = "NO THROUGHPUT"  # opens the note that is a warning, not a remark


def idle_note(doc: dict[str, Any]) -> str | None:
    """A warning naming every policy that committed no token in its steady window (None if
    each committed some): its row is no result, and its node records say why."""
    idle = [pol for pol, r in doc["results"].items() if not r.get("throughput_tok_s")]
    if not idle:
        return None
    return (
        f"{NO_THROUGHPUT}: {', '.join(idle)} committed no token in the measured window; their rows "
        "are not results. The nodes' records (events-*.jsonl) and the deaths and stalls say why."
    )


PARTIAL = "PARTIAL RUN"  # opens the note of a run stopped before its end


def _valid(r: dict[str, Any]) -> bool:
    return bool(r.get("valid", True))


def invalid_note(doc: dict[str, Any]) -> str | None:
    """A warning naming every policy that is no result, and why (None if all are results)."""
    bad = [
        f"{pol} ({r.get('invalid_reason', 'no reason recorded')})"
        for pol, r in doc["results"].items()
        if not _valid(r)
    ]
    if not bad:
        return None
    return (
        f"{NO_THROUGHPUT}: the run is INVALID: " + "; ".join(bad) + ". These rows are not results."
    )


def stopped_line(doc: dict[str, Any]) -> str:
    """Where a partial run stopped, in words (``doc["stopped"]``)."""
    st = doc["stopped"]
    line = f"stopped by {st['signal']} while {st['phase']}"
    if st.get("policy") is not None:
        line += f" (policy {st['policy']}"
        if st.get("t_s") is not None:
            line += f", at {st['t_s']:.1f} s of {doc['duration_s']:g}"
        line += ")"
    return line


def partial_note(doc: dict[str, Any]) -> str | None:
    """Where a run stopped by a signal stopped, and what it did not run (None if it ended)."""
    if not doc.get("partial"):
        return None
    not_run = doc["stopped"].get("not_run") or []
    said = f"{PARTIAL}: {stopped_line(doc)}"
    if not_run:
        said += f"; not run: {', '.join(not_run)}"
    return said + ". The rows are what the nodes recorded until then."


def warnings(doc: dict[str, Any]) -> list[str]:
    """What makes the run's results no results, or not all of them: above everything."""
    found = (invalid_note(doc), partial_note(doc))
    return [n for n in found if n is not None]


def notes(doc: dict[str, Any]) -> list[str]:
    """The terminal's notes under the results, the warnings first (the report puts
    ``warnings`` above its table and the rest below)."""
    found = (idle_note(doc), lossless_note(doc), overrun_note(doc))
    return [*warnings(doc), *(n for n in found if n is not None)]


def _scale_note(doc: dict[str, Any]) -> list[str]:
    scale, why = float(doc.get("time_scale", 1.0)), doc.get("time_scale_why", "")
    lines = ["", f"Time scale {scale:g}" + (f": {why}." if why else ".")]
    if scale != 1.0:
        lines[-1] += (
            f" Every modelled time ran {scale:g} times slower on the wall (compute, link delays "
            "and the duration; link rates that much lower). Results are in modelled time; the "
            "link fidelity table is on the wall, as the links were shaped."
        )
    return lines


def _row_name(pol: str, r: dict[str, Any]) -> str:
    if not _valid(r):
        return f"**{pol} (INVALID)**"
    if not r["throughput_tok_s"]:
        return f"**{pol} (no tokens)**"
    return f"{pol} (partial)" if r.get("partial") else pol


def write_run_report(out_dir: Path, doc: dict[str, Any]) -> None:
    res = doc["results"]
    ad_res = res.get("ad", {})
    ad = ad_res.get("throughput_tok_s") if _valid(ad_res) else None
    top = warnings(doc)
    lines = [
        f"# draftnet run: {doc['scenario']}",
        "",
        *(line for w in top for line in (f"**{w}**", "")),
        f"{doc['users']} users on Mininet hosts; {doc['models']} models, {doc['timing']} timing, "
        f"{doc['shaping']} shaping ({doc.get('shaping_why', '')}); "
        f"{doc['duration_s']:g} s per policy; "
        f"{doc.get('wall_s', 0):.0f} s wall.",
        *_scale_note(doc),
        "",
        "## Results",
        "",
        "| policy | tok/s | predicted | vs ad | acceptance | mean accepted len | TTFT p50/p95 ms "
        "| TPOT p50/p95 ms | late drafts | overruns | deaths |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pol, r in res.items():
        tok_s = f"{r['throughput_tok_s']:.2f}"
        lines.append(
            f"| {_row_name(pol, r)} | {tok_s if _valid(r) else f'~~{tok_s}~~'} | "
            f"{r['predicted_tok_s']:.2f} | "
            f"{_fmt(r['throughput_tok_s'] / ad if ad else None, '.2f')} | "
            f"{_fmt(r['acceptance_rate'], '.3f')} | {_fmt(r['mean_accepted_len'], '.2f')} | "
            f"{_fmt(r['ttft_ms']['p50'], '.0f')}/{_fmt(r['ttft_ms']['p95'], '.0f')} | "
            f"{_fmt(r['tpot_ms']['p50'])}/{_fmt(r['tpot_ms']['p95'])} | {r['late_drafts']} | "
            f"{sum(r['overruns'].values())} | {len(r['deaths'])} |"
        )
    lines += [
        "",
        "## Link fidelity (configured against measured, before the workload)",
        "",
        "| link | RTT ms configured | RTT ms measured | up rate configured "
        "| up rate measured | ok |",
        "|---|---|---|---|---|---|",
    ]
    for f in doc["fidelity"]:
        c, m = f["configured"], f["measured"]
        lines.append(
            f"| {f['link']} | {c['rtt_ms']:.2f} | {_fmt(m.get('rtt_ms'), '.2f')} | "
            f"{_fmt(c['up_rate_bps'] or None, '.3g')} | {_fmt(m.get('up_rate_bps'), '.3g')} | "
            f"{'yes' if f['ok'] else '**NO**'} |"
        )
    for note in notes(doc)[len(top) :]:
        lines += ["", f"**{note}**" if note.startswith(NO_THROUGHPUT) else note]
    bad = [f["link"] for f in doc["fidelity"] if not f["ok"]]
    if bad:
        lines += ["", f"**Links outside tolerance: {', '.join(bad)}.** Read the results with care."]
    deaths = [(pol, d) for pol, r in res.items() for d in r["deaths"]]
    stalls = [(pol, d) for pol, r in res.items() for d in r.get("stalls", [])]
    if deaths or stalls:
        lines += ["", "## Node deaths and stalls", ""]
        for pol, d in deaths:
            out = " / ".join(d["last_output"][-3:]) or "(no output)"
            lines.append(f"- {pol}: {d['node']} exited {d['exit']} at {d['t_s']:.1f} s: {out}")
        for pol, d in stalls:
            out = " / ".join(d["last_output"][-3:]) or "(no output)"
            lines.append(
                f"- {pol}: {d['node']} stalled (alive, nothing recorded for {d['silent_s']:.0f} s) "
                f"at {d['t_s']:.1f} s: {out}"
            )
    injected = [(pol, f) for pol, r in res.items() for f in r.get("faults_injected", [])]
    if injected:
        lines += ["", "## Faults injected ([faults])", ""]
        lines += [f"- {pol}: {f['kind']} {f['target']} at {f['t_s']:.1f} s" for pol, f in injected]
    lines += ["", "Plots: `throughput.png`, `tpot_cdf.png`.", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    _plots(out_dir, doc)


def _plots(out_dir: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    names = list(res)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(names))
    measured = [res[p]["throughput_tok_s"] if _valid(res[p]) else 0.0 for p in names]
    ax.bar(x - 0.2, measured, 0.4, label="measured")
    ax.bar(x + 0.2, [res[p]["predicted_tok_s"] for p in names], 0.4, label="predicted")
    ax.set_xticks(x, [p if _valid(res[p]) else f"{p}\n(invalid)" for p in names])
    ax.set_ylabel("tokens/s (all users)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for p in names:
        t = np.sort(_round_times(out_dir, p))
        if t.size:
            ax.step(t, np.arange(1, t.size + 1) / t.size, where="post", label=p)
    ax.set_xlabel("time per output token [ms]")
    ax.set_ylabel("CDF over rounds")
    if ax.get_legend_handles_labels()[0]:  # a run stopped before any round has none
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "tpot_cdf.png", dpi=110)
    plt.close(fig)
