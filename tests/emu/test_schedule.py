"""The userspace shaper's per-packet schedule (pure: no root, no clock)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from channel_models.link import LinkState, serialised_until
from emu.shaping.schedule import GilbertElliott, LinkSchedule


def _link(state: LinkState, **kw: object) -> LinkSchedule:
    return LinkSchedule(lambda _t: state, np.random.default_rng(1), **kw)  # type: ignore[arg-type]


def test_rate_serialises_packets_back_to_back_then_adds_the_delay() -> None:
    link = _link(LinkState(rate_bps=10e6, delay_ms=20.0), queue_bytes=2_000_000)
    out = [link.arrive(0.0, 1250).deliver_at for _ in range(1000)]  # 1000 x 1 ms at 10 Mbit/s
    assert out[0] == pytest.approx(0.001 + 0.020)
    assert out[-1] == pytest.approx(1.000 + 0.020)


def test_jitter_adds_delay_but_never_reorders() -> None:
    link = _link(LinkState(delay_ms=20.0, jitter_ms=5.0))
    t = np.arange(5000) * 0.0005  # one packet every 0.5 ms, faster than the jitter
    out = np.array([link.arrive(x, 100).deliver_at for x in t])
    assert np.all(np.diff(out) >= 0)
    extra = (out - t) * 1000 - 20.0
    assert extra.min() >= 0 and 3.0 < extra.mean() < 12.0


def test_bernoulli_loss_over_many_packets() -> None:
    link = _link(LinkState(loss=0.1))
    lost = sum(link.arrive(i * 1e-3, 100).deliver_at is None for i in range(20000))
    assert lost / 20000 == pytest.approx(0.1, abs=0.01)
    assert link.lost == lost and link.sent == 20000 - lost


def test_gilbert_elliott_loss_comes_in_bursts_at_its_mean_rate() -> None:
    ge = GilbertElliott(p=0.02, r=0.2)  # mean loss p/(p+r) = 0.0909, bursts of 1/r = 5
    link = _link(LinkState(), burst_loss=ge)
    lost = np.array([link.arrive(i * 1e-3, 100).deliver_at is None for i in range(50000)])
    assert lost.mean() == pytest.approx(ge.mean_loss, abs=0.015)
    starts = np.flatnonzero(np.diff(lost.astype(int)) == 1)
    assert lost.sum() / max(starts.size, 1) == pytest.approx(5.0, rel=0.2)


def test_a_full_queue_drops_the_tail() -> None:
    link = _link(LinkState(rate_bps=1e6), queue_bytes=10_000)
    verdicts = [link.arrive(0.0, 1000) for _ in range(15)]
    assert [v.reason for v in verdicts[10:]] == ["queue"] * 5
    assert link.arrive(1.0, 1000).deliver_at is not None  # drained by then


def test_a_time_varying_state_applies_to_packets_after_each_tick() -> None:
    states = {0: LinkState(rate_bps=1e6, delay_ms=10.0), 1: LinkState(rate_bps=4e6, delay_ms=30.0)}
    link = LinkSchedule(lambda t: states[int(t >= 1.0)], np.random.default_rng(0))
    before = link.arrive(0.5, 1250).deliver_at
    after = link.arrive(1.5, 1250).deliver_at
    assert before == pytest.approx(0.5 + 0.010 + 0.010)
    assert after == pytest.approx(1.5 + 0.0025 + 0.030)


def test_a_packet_sent_into_an_outage_leaves_when_the_link_comes_back() -> None:
    """A radio series' outage (a handover's interruption) has a rate of 1 bit/s for 30 ms: a
    packet that starts then is slowed by it, not frozen at it (1000 bytes at 1 bit/s would
    hold the link for 8000 s, and every packet behind it)."""

    def state_at(t: float) -> LinkState:
        return LinkState(rate_bps=1.0 if t < 0.030 else 8e6)

    link = LinkSchedule(state_at, np.random.default_rng(1))
    first = link.arrive(0.0, 1000).deliver_at
    assert first == pytest.approx(0.031, abs=0.0011)  # the outage, then 1 ms at 8 Mbit/s
    assert link.arrive(0.040, 1000).deliver_at == pytest.approx(0.041)


def test_full_size_packets_take_an_opportunity_each_and_the_trace_repeats() -> None:
    # ms 1: one opportunity, ms 2: none, ms 3: two; then again from ms 4.
    link = _link(LinkState(), trace_ms=np.array([1, 0, 2]))
    out = [link.arrive(0.0, 1500).deliver_at for _ in range(6)]
    assert out == pytest.approx([0.001, 0.003, 0.003, 0.004, 0.006, 0.006])


def test_small_packets_share_an_opportunitys_1504_bytes_and_a_large_one_spans_two() -> None:
    """mm-link (LinkQueue::rationalize): each opportunity carries 1504 bytes of the packets
    queued by its time, first come first served. One opportunity a millisecond: thirty
    100-byte packets queued at 0 leave 15 at 1 ms (1500 bytes), then the 16th takes the 4 bytes
    left and 96 of the next (2 ms), ..., packet i at ceil(100 i / 1504) ms."""
    link = _link(LinkState(), trace_ms=np.array([1]))
    out = [link.arrive(0.0, 100).deliver_at for _ in range(30)]
    assert out == pytest.approx([math.ceil(100 * i / 1504) / 1000 for i in range(1, 31)])
    big = _link(LinkState(), trace_ms=np.array([1]))
    assert big.arrive(0.0, 2000).deliver_at == pytest.approx(0.002)  # 1504 + 496 bytes


def test_what_an_opportunity_has_left_is_lost_once_it_has_passed() -> None:
    """A packet queued before an opportunity shares it; one that arrives after it waits for the
    next: the bytes the first left are not kept."""
    link = _link(LinkState(), trace_ms=np.array([0, 1]))  # one opportunity every 2 ms
    assert link.arrive(0.0, 100).deliver_at == pytest.approx(0.002)
    assert link.arrive(0.0015, 100).deliver_at == pytest.approx(0.002)  # queued by then
    assert link.arrive(0.0025, 100).deliver_at == pytest.approx(0.004)  # it had passed


@pytest.mark.parametrize("size", [1500, 100])
def test_a_recorded_trace_delivers_its_own_rate_to_full_size_and_to_small_packets(
    size: int,
) -> None:
    """A 10 ms pattern of 10 opportunities (2 0 1 3 0 0 1 2 0 1 a millisecond), replayed for 2 s
    under a full queue: it delivers 1000 opportunities a second of 1504 bytes each, and with
    the queue never empty no byte of one is left unused (a packet spans two where it must), so
    packets of 1500 bytes and of 100 bytes both get the trace's 1504 x 1000 bytes a second."""
    pattern = np.array([2, 0, 1, 3, 0, 0, 1, 2, 0, 1])
    link = _link(LinkState(), trace_ms=pattern, queue_bytes=10**9)
    sent = 0
    while True:
        t = link.arrive(0.0, size).deliver_at
        assert t is not None
        if t > 2.0:
            break
        sent += size
    assert sent / 2.0 == pytest.approx(1504 * 1000, rel=0.002)


def test_a_packet_uses_only_opportunities_after_its_arrival_also_at_the_repeat() -> None:
    """mm-link spends the opportunities at or before a packet's arrival before it queues it
    (``rationalize(now)``), inside the trace's period and at its end alike: with opportunities
    at 3 ms of a 3 ms period, a packet arriving at 3 ms leaves at 6 ms, one at 2 ms at 3 ms."""
    assert _link(LinkState(), trace_ms=np.array([0, 0, 1])).arrive(0.003, 100).deliver_at == (
        pytest.approx(0.006)
    )
    assert _link(LinkState(), trace_ms=np.array([0, 0, 1])).arrive(0.002, 100).deliver_at == (
        pytest.approx(0.003)
    )
    every = _link(LinkState(), trace_ms=np.array([1, 1, 1]))
    assert [every.arrive(t, 1500).deliver_at for t in (0.002, 0.0035)] == pytest.approx(
        [0.003, 0.004]
    )  # the second, after 3 ms, waits for the next period's first opportunity, at 4 ms


def test_a_slowed_run_stretches_its_trace_by_the_time_scale() -> None:
    """At time scale 3 every trace millisecond lasts 3 ms on the wall: the same opportunities,
    each three times later."""
    link = _link(LinkState(), trace_ms=np.array([1, 0, 2]), trace_scale=3.0)
    out = [link.arrive(0.0, 1500).deliver_at for _ in range(6)]
    assert out == pytest.approx([0.003, 0.009, 0.009, 0.012, 0.018, 0.018])


def test_the_emulation_refuses_to_start_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from emu.errors import ConfigError
    from emu.runners.network import preflight

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="must run as root"):
        preflight()
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(ConfigError, match="mnexec is missing: install Debian's mininet"):
        preflight()


def test_an_unknown_topology_is_one_clear_error() -> None:
    from emu.errors import ConfigError
    from topologies.registry import topology

    with pytest.raises(ConfigError, match="topology must be one of star, got 'ring'"):
        topology("ring", users=2)


def test_a_long_outage_costs_few_looks_at_the_link() -> None:
    """A packet that starts in a 10 s outage leaves within 2% of its end (the rate is looked at
    every 1 ms, then every 2% of the time spent), after a few hundred looks, not ten
    thousand: the shaper's loop must not stall on a dead link."""
    looks = []

    def state_at(t: float) -> LinkState:
        looks.append(t)
        return LinkState(rate_bps=1.0 if t < 10.0 else 8e6)

    leave = serialised_until(state_at, 0.0, 8000.0)
    assert 10.0 <= leave <= 10.2 and len(looks) < 500
