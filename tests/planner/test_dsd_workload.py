"""DSD's workload and network models against ../shared/systems/dsd.md sections 3.1, 3.2, 6 and
9 items 6-7: the stand-in trace's shape, the trace's regeneration, think times, the no-trace
workload, the payloads, the transfer formula and the wiring of drafters to verifiers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.planner.dsd import links, workload
from emu.planner.dsd.links import (
    NET_MS_RANGES,
    PairLink,
    draw_u,
    prefill_request_bytes,
    prefill_response_bytes,
    round_request_bytes,
    round_response_bytes,
    transfer_ms,
    wire,
)
from emu.planner.dsd.workload import (
    NoTraceWorkload,
    Request,
    ThinkTime,
    parse_trace,
    regenerate,
    regenerated_count,
    synthetic_trace,
)

# The preset's drafters: 80, capability 0.32-0.60; its verifiers: 4 tiers x 5.
CAPABILITIES = tuple(np.linspace(0.32, 0.60, 80))
TIER_OF = {f"{tier}-{k}": tier for tier in NET_MS_RANGES for k in range(5)}


@pytest.mark.parametrize("module", [workload, links])
def test_all_names_exist(module: object) -> None:
    assert all(hasattr(module, name) for name in module.__all__)  # type: ignore[attr-defined]


# --- workload ------------------------------------------------------------------------------


def test_request_rejects_empty_prompt_or_answer() -> None:
    with pytest.raises(ConfigError, match=r"dsd.trace prompt_tokens must be at least 1, got 0"):
        Request(prompt_tokens=0, answer_tokens=5)
    with pytest.raises(ConfigError, match=r"dsd.trace answer_tokens .* got -2"):
        Request(prompt_tokens=5, answer_tokens=-2)


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_synthetic_trace_has_the_gsm8k_ranges_and_means(seed: int) -> None:
    trace = synthetic_trace(np.random.default_rng(seed))
    p = np.array([c.prompt_tokens for c in trace])
    a = np.array([c.answer_tokens for c in trace])
    assert len(trace) == 41
    assert (p.min(), p.max(), p.mean()) == (32, 119, pytest.approx(74.0, abs=1e-12))
    assert (a.min(), a.max(), a.mean()) == (80, 194, pytest.approx(140.0, abs=1e-12))
    assert trace == synthetic_trace(np.random.default_rng(seed))
    assert trace != synthetic_trace(np.random.default_rng(seed + 1))


def test_synthetic_trace_other_shapes_and_impossible_ones() -> None:
    rng = np.random.default_rng(5)
    trace = synthetic_trace(rng, records=1000, prompt=(10, 20, 11.5), answer=(7, 7, 7.0))
    p = np.array([c.prompt_tokens for c in trace])
    assert (p.min(), p.max(), p.sum()) == (10, 20, 11_500)
    assert {c.answer_tokens for c in trace} == {7}
    for kw in ({"records": 1}, {"prompt": (32, 119, 120.0)}, {"answer": (80, 194, 79.0)}):
        with pytest.raises(ConfigError, match=r"dsd.trace.(prompt|answer)_tokens must take"):
            synthetic_trace(rng, **kw)  # type: ignore[arg-type]


def test_parse_trace_reads_lines_and_skips_comments() -> None:
    text = "# P,A\n74,140\n\n 32 , 194 \n# end\n"
    assert parse_trace(text) == (
        Request(prompt_tokens=74, answer_tokens=140),
        Request(prompt_tokens=32, answer_tokens=194),
    )


@pytest.mark.parametrize("bad", ["74", "74,x", "0,140", "-3,140", "74,140,1", "7.5,140", ","])
def test_parse_trace_names_the_malformed_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trace(f"74,140\n{bad}\n", where="dsd.trace_file")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dsd.trace_file line 2 must be")
    assert repr(bad) in msg and "two positive integers" in msg


def test_parse_trace_rejects_an_empty_trace() -> None:
    with pytest.raises(ConfigError, match=r"dsd.trace must hold at least one record"):
        parse_trace("# nothing\n\n")


@pytest.mark.parametrize(
    ("capabilities", "horizon_s", "want"),
    [
        (CAPABILITIES, 2.0, 80),  # golden 9.7: ceil(0.5 x 2 x 36.8) = 37 < 80 drafters
        (CAPABILITIES[:5], 2.0, 5),  # golden 9.7
        ((0.60,) * 80, 2.0, 80),  # the most capable preset: 48 < 80
        ((0.5,) * 5, 100.0, 125),  # the rate wins: ceil(0.5 x 100 x 2.5)
        ((0.5,) * 5, 100.1, 126),  # and is rounded up
        ((0.0, 0.0), 50.0, 2),
        ((), 2.0, 0),
    ],
)
def test_regenerated_count(capabilities: tuple[float, ...], horizon_s: float, want: int) -> None:
    assert regenerated_count(capabilities, horizon_s=horizon_s) == want


def test_regenerate_cycles_the_trace_up_to_the_horizon() -> None:
    trace = synthetic_trace(np.random.default_rng(0))
    arrivals = regenerate(trace, CAPABILITIES, np.random.default_rng(1), horizon_s=2.0)
    at = np.array([a.at_ms for a in arrivals])
    assert len(arrivals) == 80
    assert [a.request for a in arrivals] == [trace[i % 41] for i in range(80)]
    assert at[0] > 0 and np.all(np.diff(at) >= 0) and at[-1] == pytest.approx(2000.0)
    assert arrivals == regenerate(trace, CAPABILITIES, np.random.default_rng(1), horizon_s=2.0)
    assert len(regenerate(trace, CAPABILITIES[:5], np.random.default_rng(1), horizon_s=2.0)) == 5


def test_regenerate_gaps_are_exponential() -> None:
    trace = synthetic_trace(np.random.default_rng(0))
    arrivals = regenerate(trace, CAPABILITIES, np.random.default_rng(2), horizon_s=1000.0)
    gaps = np.diff([0.0] + [a.at_ms for a in arrivals])
    assert len(arrivals) == 18_400  # ceil(0.5 x 1000 x 36.8)
    assert gaps.mean() == pytest.approx(1e6 / 18_400, rel=1e-9)  # rescaled to the horizon
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: cv 1
    assert np.median(gaps) / gaps.mean() == pytest.approx(math.log(2), abs=0.03)


@pytest.mark.parametrize(
    ("trace", "capabilities", "horizon_s", "match"),
    [
        ((), CAPABILITIES, 2.0, "dsd.trace must hold at least one record, got 0"),
        (None, (0.5, -0.1), 2.0, r"dsd.drafter.capability must be >= 0, got -0.1"),
        (None, CAPABILITIES, 0.0, r"dsd.horizon_s must be > 0, got 0.0"),
    ],
)
def test_regenerate_rejects_bad_input(
    trace: tuple[Request, ...] | None, capabilities: tuple[float, ...], horizon_s: float,
    match: str,
) -> None:  # fmt: skip
    records = synthetic_trace(np.random.default_rng(0)) if trace is None else trace
    with pytest.raises(ConfigError, match=match):
        regenerate(records, capabilities, np.random.default_rng(0), horizon_s=horizon_s)


def test_think_time_lognormal_parameters() -> None:
    t = ThinkTime()
    assert (t.mean_ms, t.cv, t.min_ms) == (1700.0, 0.6, 220.0)
    assert t.sigma == pytest.approx(math.sqrt(math.log(1.36)))
    assert t.mu == pytest.approx(math.log(1700.0) - math.log(1.36) / 2)
    assert ThinkTime(cv=0.0).samples_ms(np.random.default_rng(0), 3) == pytest.approx([1700.0] * 3)


def test_think_time_mean_and_cv_over_many_draws() -> None:
    x = ThinkTime(min_ms=0.0).samples_ms(np.random.default_rng(11), 400_000)
    assert x.mean() == pytest.approx(1700.0, rel=0.01)
    assert x.std() / x.mean() == pytest.approx(0.6, rel=0.03)
    rng = np.random.default_rng(12)
    one = [ThinkTime(min_ms=0.0).sample_ms(rng) for _ in range(20_000)]
    assert np.mean(one) == pytest.approx(1700.0, rel=0.03)


def test_think_time_floor() -> None:
    t = ThinkTime(min_ms=1500.0)
    x = t.samples_ms(np.random.default_rng(13), 200_000)
    below = 0.5 * (1 + math.erf((math.log(1500.0) - t.mu) / (t.sigma * math.sqrt(2))))
    assert x.min() == 1500.0
    assert np.mean(x == 1500.0) == pytest.approx(below, abs=0.005)
    assert ThinkTime().samples_ms(np.random.default_rng(14), 200_000).min() >= 220.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mean_ms": 0.0}, r"dsd.think_time.mean_ms must be > 0, got 0.0"),
        ({"mean_ms": -5.0}, r"dsd.think_time.mean_ms must be > 0, got -5.0"),
        ({"cv": -0.1}, r"dsd.think_time.cv must be >= 0, got -0.1"),
        ({"min_ms": -1.0}, r"dsd.think_time.min_ms must be >= 0, got -1.0"),
    ],
)
def test_think_time_rejects_bad_input(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ThinkTime(**kw)


@pytest.mark.parametrize(
    ("capability", "want"),
    [(0.0, 24), (1.0, 512), (0.5, 268), (0.32, 180), (0.6, 316), (-0.2, 24), (1.7, 512)],
)
def test_no_trace_prompt_scales_with_capability(capability: float, want: int) -> None:
    # P = 24 + c x 488, truncated; c clipped to [0, 1]
    assert NoTraceWorkload().prompt_tokens(capability) == want


def test_no_trace_answers() -> None:
    rng = np.random.default_rng(21)
    a = np.array([NoTraceWorkload().answer_tokens(rng) for _ in range(50_000)])
    assert a.min() >= 96 and a.max() <= 960
    assert a.mean() == pytest.approx(420.0, rel=0.01) and a.std() == pytest.approx(120, rel=0.03)
    wide = NoTraceWorkload(answer_tokens_std=2000.0)
    w = np.array([wide.answer_tokens(rng) for _ in range(2000)])
    assert (w.min(), w.max()) == (96, 960)  # clipped, both ends reached
    assert 0.3 < np.mean(w == 96) < 0.6 and 0.3 < np.mean(w == 960) < 0.6
    c = NoTraceWorkload().request(0.5, rng)
    assert c.prompt_tokens == 268 and 96 <= c.answer_tokens <= 960


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"answer_tokens_std": -1.0}, r"dsd.answer_tokens_std must be >= 0, got -1.0"),
        ({"answer_tokens_range": (960, 96)}, r"dsd.answer_tokens_range must be .* \(960, 96\)"),
        ({"prompt_tokens_range": (0, 512)}, r"dsd.prompt_tokens_range must be .* \(0, 512\)"),
    ],
)
def test_no_trace_rejects_bad_input(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NoTraceWorkload(**kw)  # type: ignore[arg-type]


# --- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "prefill_req", "prefill_rsp", "round_req", "round_rsp"),
    [(0, 512, 256, 128, 256), (1, 514, 258, 130, 258), (4, 520, 264, 136, 264),
     (74, 660, 404, 276, 404)],
)  # fmt: skip
def test_payload_bytes(
    tokens: int, prefill_req: int, prefill_rsp: int, round_req: int, round_rsp: int
) -> None:
    assert prefill_request_bytes(tokens) == prefill_req
    assert prefill_response_bytes(tokens) == prefill_rsp
    assert round_request_bytes(tokens) == round_req
    assert round_response_bytes(tokens) == round_rsp


@pytest.mark.parametrize(
    ("base_ms", "payload", "mbps", "u", "want"),
    [
        (8.0, 1000, 10.0, 0.05, (8.0 + 1000 / 1250) * 1.05),  # bytes term at 10 Mbit/s
        (8.0, 1000, 0.0, -0.05, 8.0 * 0.95),  # no bandwidth: no bytes term
        (8.0, 1000, 0.0, 0.0, 8.0),
        (0.0, 250, 2.0, 0.12, 1.0 * 1.12),  # 250 B at 250 B/ms, jitter at its edge
        (6.5, 660, 100.0, -0.12, (6.5 + 660 / 12_500) * 0.88),
    ],
)
def test_transfer_formula(base_ms: float, payload: int, mbps: float, u: float, want: float) -> None:
    assert transfer_ms(base_ms, payload, mbps, 0.12, u) == pytest.approx(want, rel=1e-12)


def test_transfer_rejects_u_or_jitter_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"u must be within"):
        transfer_ms(8.0, 0, 0.0, 0.12, 0.13)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=rf"dsd.jitter must be in \[0, 1\), got {bad}"):
            draw_u(np.random.default_rng(0), bad)


def test_transfers_stay_within_the_jitter() -> None:
    link = PairLink(drafter="d", verifier="v", forward_ms=8.0, response_ms=10.0)
    rng = np.random.default_rng(31)
    fwd = np.array([link.forward(660, rng) for _ in range(20_000)])
    rsp = np.array([link.response(404, rng) for _ in range(20_000)])
    for x, base in ((fwd, 8.0), (rsp, 10.0)):
        assert x.min() >= base * 0.88 and x.max() <= base * 1.12
        assert x.min() == pytest.approx(base * 0.88, rel=2e-3)  # the whole band is used
        assert x.max() == pytest.approx(base * 1.12, rel=2e-3)
        assert x.mean() == pytest.approx(base, rel=3e-3)
    assert PairLink(drafter="d", verifier="v", forward_ms=8.0, response_ms=1.0,
                    jitter=0.0).forward(660, rng) == 8.0  # fmt: skip


def test_a_transfer_draws_only_its_jitter() -> None:
    link = PairLink(drafter="d", verifier="v", forward_ms=8.0, response_ms=9.0,
                    bandwidth_mbps=10.0)  # fmt: skip
    a, b = np.random.default_rng(41), np.random.default_rng(41)
    for _ in range(5):
        want = transfer_ms(8.0, 660, 10.0, 0.12, draw_u(b))
        assert link.forward(660, a) == want


def test_wire_the_preset() -> None:
    allowed = {f"d{k}": list(TIER_OF) for k in range(80)}
    pairs = wire(allowed, TIER_OF, np.random.default_rng(123))
    assert len(pairs) == 320
    assert len({(p.drafter, p.verifier) for p in pairs}) == 320  # each pair drawn once
    for d in allowed:
        assert len({p.verifier for p in pairs if p.drafter == d}) == 4  # distinct targets
    for p in pairs:
        lo, hi = NET_MS_RANGES[TIER_OF[p.verifier]]
        assert lo <= p.forward_ms <= hi and lo <= p.response_ms <= hi
        assert p.forward_ms != p.response_ms  # drawn independently
        assert p.jitter == 0.12 and p.bandwidth_mbps == 0.0
    assert pairs == wire(allowed, TIER_OF, np.random.default_rng(123))
    assert pairs != wire(allowed, TIER_OF, np.random.default_rng(124))


def test_wire_draws_uniformly() -> None:
    qwen = [v for v, t in TIER_OF.items() if t == "qwen_h100"]
    allowed = {f"d{k}": qwen for k in range(4000)}
    pairs = wire(allowed, TIER_OF, np.random.default_rng(7), fanout=2)
    assert {p.verifier for p in pairs} == set(qwen)  # only the allowed verifiers
    hits = np.array([sum(p.verifier == v for p in pairs) for v in qwen])
    assert hits == pytest.approx([8000 / 5] * 5, rel=0.06)
    base = np.array([(p.forward_ms, p.response_ms) for p in pairs])
    assert base.min() >= 5.2 and base.max() <= 9.2
    assert base.mean(axis=0) == pytest.approx([7.2, 7.2], abs=0.03)
    assert np.corrcoef(base.T)[0, 1] == pytest.approx(0.0, abs=0.04)


@pytest.mark.parametrize(
    ("allowed", "kw", "match"),
    [
        ({"d0": ["llama_a100-0", "qwen_h100-1", "llama3_a100-2"]}, {},
         r"^dsd.fanout must be at most drafter d0's 3 allowed verifiers, got 4$"),
        ({"d0": ["llama_a100-0"]}, {"fanout": 0}, r"dsd.fanout must be at least 1, got 0"),
        ({"d0": ["llama_a100-0", "llama_a100-0"]}, {"fanout": 1}, r"must be distinct"),
        ({"d0": ["elsewhere"]}, {"fanout": 1},
         r"verifier elsewhere's tier must be one of dsd.net_ms_ranges .* got None"),
        ({"d0": ["llama_a100-0"]}, {"fanout": 1, "ranges_ms": {"llama_a100": (9.0, 3.0)}},
         r"dsd.net_ms_ranges.llama_a100 must be \[lo, hi\]"),
    ],
)  # fmt: skip
def test_wire_rejects_bad_input(allowed: dict[str, list[str]], kw: dict[str, object],
                                match: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        wire(allowed, TIER_OF, np.random.default_rng(0), **kw)  # type: ignore[arg-type]
