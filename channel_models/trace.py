"""Packet-delivery traces in Mahimahi's format: to and from per-millisecond goodput.

Layer: pure (strings and arrays; the caller reads and writes files).

A Mahimahi trace is one line per delivery opportunity: the time in milliseconds (an integer,
non-decreasing) at which the link may deliver ``OPPORTUNITY_BYTES`` (1504, mm-link's
PACKET_SIZE: an MTU-sized packet and its TUN header) of what is queued. The trace repeats
with a period of its last line's millisecond. A millisecond with n lines delivers n
opportunities: 12.032 Mbit/s is one line per millisecond.

``to_mahimahi`` turns goodput per millisecond [bits] into opportunities, carrying the fraction
of a packet over to the next millisecond so that no capacity is lost to rounding;
``from_mahimahi`` reads a trace back into packets per millisecond (so that recorded cellular
traces can be replayed), and ``rate_bps`` turns those into a rate.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from emu.errors import ConfigError

__all__ = ["OPPORTUNITY_BYTES", "from_mahimahi", "opportunities", "rate_bps", "to_mahimahi"]

OPPORTUNITY_BYTES = 1504  # what one line delivers (mm-link's PACKET_SIZE)
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def opportunities(bits_per_ms: npt.ArrayLike, mtu_bytes: int = OPPORTUNITY_BYTES) -> IntArray:
    """Delivery opportunities per millisecond: the whole packets the goodput has made so far,
    less those already given out."""
    cum = np.cumsum(np.asarray(bits_per_ms, dtype=np.float64)) / (8.0 * mtu_bytes)
    whole = np.floor(cum + 1e-9).astype(np.int64)
    return np.diff(whole, prepend=0)


def to_mahimahi(bits_per_ms: npt.ArrayLike, mtu_bytes: int = OPPORTUNITY_BYTES) -> str:
    """The trace text: one line per opportunity, times in ms from 1 (Mahimahi's first)."""
    per_ms = opportunities(bits_per_ms, mtu_bytes)
    if per_ms.sum() == 0:
        raise ConfigError("a delivery trace needs at least one packet: the link never delivered")
    times = np.repeat(np.arange(1, per_ms.size + 1), per_ms)
    return "\n".join(map(str, times.tolist())) + "\n"


def from_mahimahi(text: str, *, where: str = "trace") -> IntArray:
    """Packets per millisecond from a trace's text: index i is millisecond i + 1, the line
    ``i + 1`` (a line 0, which some recorded traces have, counts as millisecond 1)."""
    try:
        times = np.array([int(x) for x in text.split()], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"{where} must hold one integer millisecond per line") from None
    if times.size == 0:
        raise ConfigError(f"{where} is empty: a Mahimahi trace needs at least one line")
    if times.min() < 0 or np.any(np.diff(times) < 0):
        raise ConfigError(f"{where} must list non-negative, non-decreasing milliseconds")
    if times.max() == 0:
        raise ConfigError(f"{where} must last at least 1 ms (its last line is its period), got 0")
    return np.bincount(np.maximum(times, 1) - 1)


def rate_bps(packets_per_ms: npt.ArrayLike, mtu_bytes: int = OPPORTUNITY_BYTES) -> FloatArray:
    """The rate each millisecond of a trace delivers [bit/s]."""
    return np.asarray(packets_per_ms, dtype=np.float64) * 8.0 * mtu_bytes * 1000.0
