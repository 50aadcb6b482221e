"""Reproduction study of DiP-SD: throughput against users, acceptance and draft length.

Layer: emu (orchestration); writes CSV and PNG files into an output directory, each as soon as
its sweep finishes.

Its three sweeps are studies at the ``solve`` level, run on a sweep engine (``emu.sweep``):
each keeps its cases' results under ``sweeps/<sweep>/`` (resumable: an interrupted study
started again solves only what is missing), and the figures' tables are made from them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console

from emu.planner import get_policy, policy_names
from emu.scenario import load_scenario
from emu.sweep.engine import Engine, InProcess
from emu.sweep.runner import read_results, run_study
from emu.sweep.spec import Study

__all__ = ["PAPER", "run_dipsd_paper"]

# The paper's headline figures (Qwen3-1.7B drafting, Qwen3-32B verifying).
PAPER = {"speedup_vs_ad": 17.89, "speedup_vs_ad_batch": 1.93}
# Every DiP-SD policy that plans any number of users (``exact`` stops at 10).
POLICIES = tuple(n for n in policy_names("dipsd") if get_policy(n).max_users is None)
ALPHAS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.78, 0.8, 0.85, 0.9, 0.95)
ALPHA_USERS = (4, 8, 16, 32)
FIXED_USERS = (6, 16)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _solved(
    name: str, out: Path, engine: Engine, policies: tuple[str, ...], axes: dict[str, list[Any]]
) -> dict[tuple[Any, ...], dict[str, dict[str, Any]]]:
    """The preset solved at every point of ``axes`` (field: values, in a cross product; at
    a = 0.78 unless an axis sets it) for every policy: point values -> policy -> its row."""
    study = Study(
        name=f"dipsd-paper-{name}",
        level="solve",
        policies=policies,
        seeds=(1,),
        preset="dipsd-paper",
        scenario=None,
        base_set={"users.alpha": 0.78},
        axes=tuple(((f,), tuple((v,) for v in vals)) for f, vals in axes.items()),
    )
    where = out / "sweeps" / name
    result = run_study(study, where, engine=engine)
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} cases of the {name} sweep failed: see {where}")
    table: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in read_results(where):
        table.setdefault(tuple(row[f] for f in study.fields), {})[row["policy"]] = row
    return table


def run_dipsd_paper(
    out: Path, *, max_users: int = 32, quiet: bool = False, engine: Engine | None = None
) -> dict[str, Any]:
    """The study's CSV files, plots and headline, its sweeps run on ``engine`` (default: in
    this process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    console = Console(stderr=True, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Throughput of every policy against M at a = 0.78.
    engine = engine if engine is not None else InProcess()
    users_rows: list[dict[str, Any]] = []
    with console.status("throughput against users"):
        by_users = _solved(
            "users", out, engine, POLICIES, {"users.count": list(range(1, max_users + 1))}
        )
        for (M,), solved in by_users.items():
            users_rows.append(
                {"users": M, **{pol: solved[pol]["throughput_tok_s"] for pol in POLICIES}}
            )
    _write(out / "throughput_vs_users.csv", users_rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for pol in POLICIES:
        ax.plot([r["users"] for r in users_rows], [r[pol] for r in users_rows], label=pol)
    ax.set(xlabel="users M", ylabel="throughput [tokens/s]", title="DiP-SD preset, a = 0.78")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_users.png", dpi=120)
    plt.close(fig)

    # 2. dipsd's gain against a, at a few M.
    alpha_rows: list[dict[str, Any]] = []
    with console.status("gain against acceptance rate"):
        by_alpha = _solved(
            "alpha",
            out,
            engine,
            POLICIES,
            {
                "users.count": [m for m in ALPHA_USERS if m <= max_users],
                "users.alpha": list(ALPHAS),
            },
        )
        for (M, a), solved in by_alpha.items():
            thr = {pol: float(solved[pol]["throughput_tok_s"]) for pol in POLICIES}
            alpha_rows.append(
                {
                    "users": M,
                    "alpha": a,
                    **thr,
                    "speedup_vs_ad": thr["dipsd"] / thr["ad"],
                    "speedup_vs_ad_batch": thr["dipsd"] / thr["ad-batch"],
                }
            )
    _write(out / "gain_vs_alpha.csv", alpha_rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for M in sorted({r["users"] for r in alpha_rows}):
        rows = [r for r in alpha_rows if r["users"] == M]
        for ax, key in zip(axes, ("speedup_vs_ad", "speedup_vs_ad_batch"), strict=True):
            ax.plot([r["alpha"] for r in rows], [r[key] for r in rows], marker="o", label=f"M={M}")
    axes[0].set(xlabel="acceptance rate a", ylabel="dipsd / ad", title="speedup over AD")
    axes[1].set(xlabel="acceptance rate a", ylabel="dipsd / ad-batch", title="over AD, batched")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gain_vs_alpha.png", dpi=120)
    plt.close(fig)

    # 3. Optimised lengths against every fixed length.
    fixed_rows: list[dict[str, Any]] = []
    with console.status("optimised against fixed draft lengths"):
        longest = load_scenario(preset="dipsd-paper").planner.max_draft_len
        by_length = _solved(
            "fixed",
            out,
            engine,
            ("dipsd",),
            {
                "users.count": [m for m in FIXED_USERS if m <= max_users],
                "planner.fixed_draft_len": list(range(1, longest + 1)),
            },
        )
        for (M, ln), solved in by_length.items():
            row = solved["dipsd"]
            fixed_rows.append(
                {
                    "users": M,
                    "draft_len": ln,
                    "fixed": row["baselines.fixed"],
                    "dipsd": row["throughput_tok_s"],
                }
            )
    if fixed_rows:
        _write(out / "optimised_vs_fixed.csv", fixed_rows)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for M in sorted({r["users"] for r in fixed_rows}):
            rows = [r for r in fixed_rows if r["users"] == M]
            line = ax.plot(
                [r["draft_len"] for r in rows],
                [r["fixed"] for r in rows],
                marker="o",
                label=f"fixed, M={M}",
            )
            ax.axhline(rows[0]["dipsd"], color=line[0].get_color(), ls="--", label=f"dipsd, M={M}")
        ax.set(
            xlabel="fixed draft length",
            ylabel="throughput [tokens/s]",
            title="optimised against fixed draft lengths, a = 0.78",
        )
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "optimised_vs_fixed.png", dpi=120)
        plt.close(fig)

    best_ad = max(users_rows, key=lambda r: r["dipsd"] / r["ad"])
    best_adb = max(users_rows, key=lambda r: r["dipsd"] / r["ad-batch"])
    headline: dict[str, Any] = {
        "paper": PAPER,
        "draftnet": {
            "speedup_vs_ad": best_ad["dipsd"] / best_ad["ad"],
            "at_users_ad": best_ad["users"],
            "speedup_vs_ad_batch": best_adb["dipsd"] / best_adb["ad-batch"],
            "at_users_ad_batch": best_adb["users"],
            "speedup_vs_ad_at_6": users_rows[min(5, len(users_rows) - 1)]["dipsd"]
            / users_rows[min(5, len(users_rows) - 1)]["ad"],
        },
        "out": str(out),
    }
    d: dict[str, Any] = headline["draftnet"]
    console.print(
        f"dipsd over AD: up to {d['speedup_vs_ad']:.2f}x (M={d['at_users_ad']}); paper "
        f"{PAPER['speedup_vs_ad']}x\n"
        f"dipsd over AD with greedy batching: up to {d['speedup_vs_ad_batch']:.2f}x "
        f"(M={d['at_users_ad_batch']}); paper {PAPER['speedup_vs_ad_batch']}x\n"
        f"CSV and plots in {out}"
    )
    return headline
