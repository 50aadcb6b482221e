"""The tc backend's parameters for a link state (no root): what HTB and netem are told."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from channel_models.link import LinkState
from emu.shaping.sources import needs_netem, tc_refusal
from emu.shaping.tcd import MTU, UNLIMITED_BPS, htb_params, netem_params


def test_htb_gives_the_link_rate_and_a_short_burst() -> None:
    p = htb_params(LinkState(rate_bps=5e6))
    assert p["rate"] == p["ceil"] == "5000000bit"
    assert p["burst"] == 2 * MTU  # 2 ms at 5 Mbit/s is less than two packets
    fast = htb_params(LinkState(rate_bps=400e6))
    assert fast["burst"] == 100_000  # 2 ms at 400 Mbit/s
    assert htb_params(LinkState())["rate"] == f"{int(UNLIMITED_BPS)}bit"


def test_netem_uniform_jitter_has_the_half_normal_mean_and_spread() -> None:
    sigma, delay = 4.0, 10.0
    p = netem_params(LinkState(delay_ms=delay, jitter_ms=sigma, loss=0.1, rate_bps=2e6))
    rng = np.random.default_rng(1)
    wanted = delay + np.abs(rng.normal(0.0, sigma, 200_000))  # what the userspace shaper draws
    given = rng.uniform(p["delay"] - p["jitter"], p["delay"] + p["jitter"], 200_000) / 1000
    assert given.mean() == pytest.approx(wanted.mean(), rel=0.01)
    assert given.std() == pytest.approx(wanted.std(), rel=0.01)
    assert p["loss"] == pytest.approx(10.0)
    assert p["rate"] == "2000000bit"  # jittered packets are paced, so never reordered
    plain = netem_params(LinkState(delay_ms=20.0))
    assert plain["delay"] == 20_000 and plain["jitter"] == 0 and "rate" not in plain
    assert math.isclose(netem_params(LinkState(jitter_ms=1.0))["delay"], 798, abs_tol=1)


def test_what_tc_refuses_and_why(tmp_path: Path) -> None:
    rate_only = {"state": {"rate_bps": 5e6}}
    delayed = {"state": {"rate_bps": 5e6, "delay_ms": 5.0}}
    assert not needs_netem(rate_only) and needs_netem(delayed)
    assert tc_refusal(rate_only, netem=False) is None
    assert tc_refusal(delayed, netem=True) is None
    why = tc_refusal(delayed, netem=False)
    assert why is not None and "netem" in why and "--shaping userspace" in why
    assert "userspace" in (tc_refusal({**rate_only, "trace": "x.trace"}, netem=True) or "")
    ge = {"p": 0.01, "r": 0.3, "loss_bad": 0.5, "loss_good": 0.0}
    assert "userspace" in (tc_refusal({**rate_only, "gilbert_elliott": ge}, netem=True) or "")
    # A radio series needs netem when any tick has delay, jitter or loss.
    ticks = 5
    z = np.zeros((1, ticks))
    np.savez(
        tmp_path / "s.npz",
        t_s=np.arange(ticks) * 0.01,
        up_rate_bps=z + 1e6,
        up_delay_ms=z,
        up_jitter_ms=np.array([[0, 0, 0, 1.0, 0]]),
        up_loss=z,
    )
    series = {"series": {"npz": str(tmp_path / "s.npz"), "prefix": "up", "user": 0}}
    assert needs_netem(series)


def test_a_time_scale_stretches_a_link_and_its_series(tmp_path: Path) -> None:
    from emu.shaping.sources import state_source

    fixed = state_source({"state": {"rate_bps": 8e6, "delay_ms": 5.0, "jitter_ms": 1.0,
                                    "loss": 0.1}, "time_scale": 4.0})(0.0)  # fmt: skip
    assert fixed == LinkState(rate_bps=2e6, delay_ms=20.0, jitter_ms=4.0, loss=0.1)
    z = np.zeros((1, 10))
    np.savez(
        tmp_path / "s.npz",
        t_s=np.arange(10) * 0.1,
        up_rate_bps=np.arange(10.0)[None, :] * 1e6,
        up_delay_ms=z + 2.0,
        up_jitter_ms=z,
        up_loss=z,
    )
    spec = {"series": {"npz": str(tmp_path / "s.npz"), "prefix": "up", "user": 0}}
    at = state_source({**spec, "time_scale": 2.0})
    # At 0.65 s on the wall the series is at 0.325 s: tick 3 (3 Mbit/s), run at half rate.
    assert at(0.65) == LinkState(rate_bps=1.5e6, delay_ms=4.0)
    assert state_source(spec)(0.65).rate_bps == 6e6


def test_a_link_spec_is_a_state_or_a_series_and_reads_as_the_shapers_config() -> None:
    from emu.shaping.spec import LinkPair, LinkSpec, SeriesRef

    fixed = LinkSpec.fixed(rate_bps=5e6, delay_ms=3.0)
    assert fixed.config() == {"state": {"rate_bps": 5e6, "delay_ms": 3.0}}
    series = LinkSpec(series=SeriesRef("s.npz", "up", 2), trace="x.trace")
    assert series.scaled(3.0).config() == {
        "series": {"npz": "s.npz", "prefix": "up", "user": 2},
        "trace": "x.trace",
        "time_scale": 3.0,
    }
    assert LinkPair.both(fixed).config() == {"up": fixed.config(), "down": fixed.config()}
    for bad in ({}, {"state": LinkState(), "series": SeriesRef("s.npz", "up", 0)}):
        with pytest.raises(ValueError, match="exactly one"):
            LinkSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_scale"):
        fixed.scaled(0.5)


def test_the_shaper_is_chosen_in_one_place_and_says_why() -> None:
    from emu.errors import ConfigError
    from emu.runners.shapers import SHAPERS, choose_shaper, has_netem
    from emu.shaping.spec import LinkPair, LinkSpec, ServerLink

    rate_only = LinkPair.both(LinkSpec.fixed(rate_bps=5e6))
    traced = LinkPair(LinkSpec(state=LinkState(rate_bps=5e6), trace="t"), LinkSpec.fixed())
    assert set(SHAPERS) == {"userspace", "tc"}
    shaper, why = choose_shaper("userspace", [traced])
    assert (shaper.name, why) == ("userspace", "asked for")
    with pytest.raises(ConfigError, match=r"emu.shaping must be one of auto, userspace, tc"):
        choose_shaper("netem", [rate_only])
    with pytest.raises(ConfigError, match=r"cannot shape link u1 up: trace-driven.*userspace"):
        choose_shaper("tc", [rate_only, traced])
    shaper, why = choose_shaper("auto", [rate_only, traced])
    assert shaper.name == "userspace"
    if has_netem():
        assert why.startswith("auto: tc cannot shape link u1 up (trace-driven")
    else:
        assert why == "auto: this kernel has no netem"
    assert choose_shaper("tc", [rate_only])[0].name == "tc"  # HTB alone gives a rate
    fronthaul = ServerLink("small", "macro", LinkSpec.fixed(delay_ms=1.0))
    with pytest.raises(ConfigError, match=r"cannot shape link small->macro: .*users' links only"):
        choose_shaper("tc", [rate_only], [fronthaul])
    assert choose_shaper("auto", [rate_only], [fronthaul])[0].name == "userspace"
