"""``draftnet channel``: the radio model of a scenario, written out as traces, series and plots.

Layer: emu (orchestration); writes files. ``channel_models.cell.generate`` makes the link
states; this module writes, into the run directory:

- ``traces/user-<i>.up`` and ``.down``: packet-delivery traces in Mahimahi's format (one line
  per delivery opportunity of 1504 bytes), for trace-driven shaping;
- ``linkstates.npz``: per user, per direction, per tick: rate_bps, delay_ms, jitter_ms, loss
  (and the tick times, SINR, the serving cell, distance, LOS state, coupling loss and
  geometry SINR);
- ``summary.json`` (the ``--json`` object) and ``scenario.toml`` (resolved), then, unless
  ``channel.plots`` is false (``--no-plots``), plots: SINR, rate and delay against time for a
  few users, and CDFs over all users.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from channel_models.cell import RadioTrace, generate
from channel_models.trace import to_mahimahi
from emu.errors import ConfigError
from emu.scenario import Scenario, scenario_toml
from emu.scenario.streams import Streams

__all__ = ["run_channel"]

PLOTTED_USERS = 4


def run_channel(sc: Scenario, out_dir: Path) -> dict[str, Any]:
    users = sc.users.count
    if users < 1:
        raise ConfigError(f"users.count must be >= 1, got {users}")
    t0 = time.perf_counter()
    trace = generate(sc.radio, users, sc.sim.duration_s, Streams(sc.sim.seed).radio())
    gen_s = time.perf_counter() - t0
    (out_dir / "scenario.toml").write_text(scenario_toml(sc))
    written = _write_traces(trace, out_dir / "traces")
    _save_npz(
        out_dir / "linkstates.npz",
        t_s=trace.t_s,
        **{
            f"{d}_{k}": getattr(getattr(trace, d), k)
            for d in ("up", "down")
            for k in ("rate_bps", "delay_ms", "jitter_ms", "loss")
        },
        sinr_up_db=trace.sinr_up_db,
        sinr_down_db=trace.sinr_down_db,
        distance_m=trace.distance_m,
        los=trace.los,
        cell=trace.cell,
        coupling_loss_db=trace.coupling_loss_db,
        geometry_db=trace.geometry_db,
    )
    out = {
        "mode": "channel",
        "scenario": sc.name,
        "radio": {
            "scenario": sc.radio.scenario,
            "carrier_hz": sc.radio.carrier_hz,
            "bandwidth_hz": sc.radio.bandwidth_hz,
            "numerology": sc.radio.numerology,
            "sites": sc.radio.sites,
            "sectors": sc.radio.sectors,
            "cells": sc.radio.cells,
            "link": sc.radio.link,
            "scheduler": sc.radio.scheduler,
            "mobility": sc.radio.mobility,
            "fading": sc.radio.fading,
            "tick_ms": sc.radio.tick_ms,
        },
        "duration_s": sc.sim.duration_s,
        "seed": sc.sim.seed,
        "users": _users(trace),
        "handovers": int(trace.handovers.sum()),
        "handovers_per_user_minute": float(
            trace.handovers.mean() / max(sc.sim.duration_s, 1e-9) * 60.0
        ),
        "traces": written,
        "generate_s": gen_s,
    }
    wall_s = time.perf_counter() - t0
    out["wall_s"] = wall_s
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")  # before the plots
    if sc.channel.plots:
        _plots(trace, out_dir)
        out["plots_s"] = time.perf_counter() - t0 - wall_s
        (out_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _save_npz(path: Path, **arrays: npt.ArrayLike) -> None:
    """``np.savez_compressed`` at zlib's fastest level (its default, 6, took 4 s for 100
    users x 60 s against 1 s here, for a file a few percent larger); ``np.load`` reads it."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def _users(tr: RadioTrace) -> list[dict[str, Any]]:
    rows = []
    for u in range(tr.handovers.size):
        up, dn = tr.up, tr.down
        rows.append(
            {
                "user": u,
                "cell": int(tr.cell[u, 0]),  # the first; then ``handovers`` changes of cell
                "handovers": int(tr.handovers[u]),
                "distance_m": float(tr.distance_m[u].mean()),
                "los": bool(tr.los[u].mean() >= 0.5),
                "los_share": float(tr.los[u].mean()),
                "mean_sinr_db": float(tr.sinr_down_db[u].mean()),
                "mean_sinr_up_db": float(tr.sinr_up_db[u].mean()),
                "up_rate_bps": float(up.rate_bps[u].mean()),
                "down_rate_bps": float(dn.rate_bps[u].mean()),
                "delay_ms": float((up.delay_ms[u].mean() + dn.delay_ms[u].mean()) / 2),
                "up_delay_ms": float(up.delay_ms[u].mean()),
                "down_delay_ms": float(dn.delay_ms[u].mean()),
                "jitter_ms": float((up.jitter_ms[u].mean() + dn.jitter_ms[u].mean()) / 2),
                "loss": float((up.loss[u].mean() + dn.loss[u].mean()) / 2),
                "up_loss": float(up.loss[u].mean()),
                "down_loss": float(dn.loss[u].mean()),
            }
        )
    return rows


def _write_traces(tr: RadioTrace, where: Path) -> list[str]:
    where.mkdir(parents=True, exist_ok=True)
    written = []
    for u in range(tr.handovers.size):
        for name, series in (("up", tr.up), ("down", tr.down)):
            path = where / f"user-{u}.{name}"
            try:
                path.write_text(to_mahimahi(series.goodput_bits_per_ms[u]))
            except ConfigError:
                continue  # the user never got a packet through: no trace to replay
            written.append(str(path))
    return written


def _plots(tr: RadioTrace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = range(min(PLOTTED_USERS, tr.handovers.size))
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for u in shown:
        axes[0].plot(tr.t_s, tr.sinr_down_db[u], label=f"user {u}")
        axes[1].plot(tr.t_s, tr.up.rate_bps[u] / 1e6, label=f"user {u} up")
        axes[1].plot(tr.t_s, tr.down.rate_bps[u] / 1e6, "--", label=f"user {u} down")
        axes[2].plot(tr.t_s, tr.up.delay_ms[u], label=f"user {u} up")
    axes[0].set_ylabel("downlink SINR [dB]")
    axes[1].set_ylabel("rate [Mbit/s]")
    axes[2].set_ylabel("uplink delay [ms]")
    axes[2].set_xlabel("time [s]")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "timeseries.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        ("mean SINR [dB]", tr.sinr_down_db.mean(axis=1), tr.sinr_up_db.mean(axis=1)),
        (
            "mean rate [Mbit/s]",
            tr.down.rate_bps.mean(axis=1) / 1e6,
            tr.up.rate_bps.mean(axis=1) / 1e6,
        ),
        ("mean one-way delay [ms]", tr.down.delay_ms.mean(axis=1), tr.up.delay_ms.mean(axis=1)),
        ("loss after HARQ", tr.down.loss.mean(axis=1), tr.up.loss.mean(axis=1)),
    ]
    for ax, (label, down, up) in zip(axes.ravel(), panels, strict=True):
        for values, name in ((down, "downlink"), (up, "uplink")):
            xs = np.sort(values)
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("CDF over users")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cdf.png", dpi=110)
    plt.close(fig)
