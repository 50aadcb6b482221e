"""TS 38.214 look-ups, the BLER abstraction and HARQ."""

from __future__ import annotations

import numpy as np
import pytest

from channel_models import nr
from emu.errors import ConfigError


@pytest.mark.parametrize(
    ("sinr_db", "cqi", "mcs"),
    [(-10.0, 0, -1), (-6.7, 1, 0), (0.2, 4, 4), (10.0, 8, 13), (22.7, 15, 28), (40.0, 15, 28)],
)
def test_sinr_to_cqi_to_mcs(sinr_db: float, cqi: int, mcs: int) -> None:
    assert int(nr.cqi_from_sinr(sinr_db)) == cqi
    assert int(nr.mcs_from_cqi(cqi)) == mcs


def test_mcs_for_each_cqi_never_exceeds_its_efficiency() -> None:
    m = nr.mcs_from_cqi(np.arange(2, 16))
    assert np.all(nr.MCS_TABLE[m, 2] <= nr.CQI_EFFICIENCY[2:] + 1e-9)
    assert np.all(np.diff(m) >= 0)


# Worked from TS 38.214 5.1.3.2 with 12 data symbols (N'_RE = 144 per PRB):
# 1 PRB, MCS 0: N_info = 144 * 120/1024 * 2 = 33.75 -> n = 3, N'_info = 32 -> TBS 32.
# 10 PRB, MCS 10 (16QAM, 340): N_info = 1912.5 -> n = 4, N'_info = 1904 -> table: 1928.
# 100 PRB, MCS 0: N_info = 3375 -> n = 5, N'_info = 3360 -> table: 3368.
# 51 PRB, MCS 28: N_info = 40793.4 -> n = 10, N'_info = 40960, C = 5 -> 40976.
# 273 PRB, MCS 0 (R <= 1/4): N_info = 9213.75 -> n = 8, N'_info = 9216, C = 3 -> 9216.
@pytest.mark.parametrize(
    ("prb", "mcs", "tbs"),
    [(1, 0, 32), (10, 10, 1928), (100, 0, 3368), (51, 28, 40976), (273, 0, 9216), (5, -1, 0)],
)
def test_transport_block_size(prb: int, mcs: int, tbs: int) -> None:
    assert float(nr.tbs_bits(prb, mcs)) == tbs
    assert float(nr.tbs_for(prb, mcs)) == tbs


def test_a_tie_in_step_4s_rounding_goes_to_the_larger_integer() -> None:
    """TS 38.214 5.1.3.2 step 4: "round() rounds to the nearest integer, ties towards the next
    largest". 32 PRB, 8 data symbols (N'_RE = 96), MCS 12 (16QAM, R = 434/1024):
    N_info = 3072 * 434/1024 * 4 = 5208 > 3824, n = floor(log2(5208 - 24)) - 5 = 7,
    (N_info - 24) / 2^7 = 40.5 -> 41, N'_info = max(3840, 128 * 41) = 5248; R > 1/4 and
    N'_info <= 8424, so TBS = 8 * ceil((5248 + 24) / 8) - 24 = 5248. Half to even (40) gave
    N'_info = 5120 and TBS 5120."""
    assert float(nr.tbs_bits(32, 12, symbols=8)) == 5248
    assert float(nr.tbs_for(32, 12, symbols=8)) == 5248


def test_prbs_per_carrier_and_a_bandwidth_the_table_lacks() -> None:
    assert nr.prb_count(20e6, 1) == 51
    assert nr.prb_count(100e6, 1) == 273
    assert nr.prb_count(20e6, 0) == 106
    with pytest.raises(ConfigError, match=r"radio\.bandwidth_hz must be a TS 38\.101-1"):
        nr.prb_count(7e6, 1)


def test_bler_falls_as_sinr_rises_and_is_10_percent_at_the_threshold() -> None:
    sinr = np.linspace(-15, 35, 501)
    for m in (0, 9, 16, 28):
        b = nr.bler(np.full(sinr.size, m), sinr)
        assert np.all(np.diff(b) <= 0) and b[0] > 0.99 and b[-1] < 1e-3
        assert float(nr.bler(m, nr.MCS_SINR_DB[m])) == pytest.approx(0.1)
    # A more efficient MCS needs more SINR for the same BLER (MCS 17 is less efficient than 16).
    order = np.argsort(nr.MCS_TABLE[:, 2], kind="stable")
    assert np.all(np.diff(nr.MCS_SINR_DB[order]) >= 0)


def test_harq_lowers_the_residual_loss_and_the_table_matches_the_direct_formula() -> None:
    m = np.full(200, 15)
    sinr = np.linspace(0, 20, 200)
    one = nr.bler(m, sinr)
    residual, mean_tx, var = nr.harq(m, sinr, 4)
    exact = nr.harq_exact(m, sinr, 4)
    # The table's step is 0.02 dB; the steepest BLER slope is 3/4 per dB: error <= 0.0075.
    np.testing.assert_allclose(residual, exact[0], atol=0.0075)
    np.testing.assert_allclose(mean_tx, exact[1], atol=4 * 0.0075)
    assert np.all(residual <= one + 1e-12)
    assert np.all((mean_tx >= 1) & (mean_tx <= 4)) and np.all(var >= 0)
    # A single transmission: no HARQ gain, exactly one transmission.
    r1, t1, v1 = nr.harq_exact(m, sinr, 1)
    np.testing.assert_allclose(r1, one)
    assert np.all(t1 == 1) and np.all(v1 == 0)
