"""Human-readable output: short tables on stderr (stdout is kept for --json).

Layer: emu (orchestration).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_solve"]


def print_solve(out: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    plan = out["plan"]
    head = (
        f"[bold]{out['policy']}[/] on scenario [bold]{out['scenario']}[/]: {out['users']} users, "
        f"[bold green]{out['throughput_tok_s']:.2f} tok/s[/], cycle {out['cycle_ms']:.1f} ms, "
        f"solved in {out['solve_ms']:.0f} ms"
    )
    console.print(head)
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
