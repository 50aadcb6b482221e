"""``draftnet profile``'s measurement and fit, on backends with known timing (synthetic:
their time is an exact affine cost model of the prefix they really hold)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.models.profile import (
    Grid,
    _document,
    fit_samples,
    measure_draft,
    measure_verify,
    write_profile,
)
from emu.planner.model import LatencyModel, ModelArch, draft_flops, verify_flops
from emu.scenario import load_scenario
from nodes.backends import DraftOut, VerifyItem, VerifyOut

ARCH = ModelArch(name="toy", layers=4, hidden=256, ffn=1024)
DEVICE = LatencyModel(c_ms_per_flop=3e-9, beta_ms=7.5)
EDGE = LatencyModel(c_ms_per_flop=2e-10, beta_ms=40.0)


class AffineDrafter:
    """Drafts zeros; each token takes G(1, F_d(its prefix)), tracked from what it holds."""

    def __init__(self) -> None:
        self.seq: list[int] = []
        self.pending: tuple[int, ...] = ()

    def start(self, prompt: Sequence[int]) -> None:
        self.seq = list(prompt)

    def draft(self, n: int) -> DraftOut:
        self.pending = (0,) * n
        ms = sum(DEVICE(1, float(draft_flops(ARCH, len(self.seq)))) for _ in range(n))
        return DraftOut(tokens=self.pending, compute_ms=ms)

    def commit(self, accepted: int, token: int) -> None:
        self.seq += [*self.pending[:accepted], token]


class AffineVerifier:
    """Rejects every draft; a pass takes G(b, F_v(L, I)) at the longest committed prefix."""

    def __init__(self) -> None:
        self.held: dict[int, int] = {}

    def prefill(self, prompts: Mapping[int, Sequence[int]]) -> tuple[dict[int, int], float]:
        self.held.update({u: len(p) + 1 for u, p in prompts.items()})
        return dict.fromkeys(prompts, 0), 0.0

    def verify(self, batch: Sequence[VerifyItem]) -> tuple[list[VerifyOut], float]:
        for it in batch:
            assert it.base_len == self.held[it.user], "the profiler lost track of a prefix"
        L = max(len(it.tokens) for it in batch)
        I = max(self.held[it.user] for it in batch)
        for it in batch:
            self.held[it.user] += 1
        ms = EDGE(len(batch), float(verify_flops(ARCH, L, I)))
        return [VerifyOut(accepted=0, token=1) for _ in batch], ms

    def drop(self, user: int) -> None:
        del self.held[user]


def test_draft_profile_recovers_the_device_constants() -> None:
    grid = Grid(batches=(1,), draft_lens=(6,), prefixes=(16, 200, 900), repeats=3)
    samples = measure_draft(AffineDrafter(), ARCH, grid, vocab=100, rng=np.random.default_rng(0))
    assert len(samples) == 9 and {s.batch for s in samples} == {1}
    fit = fit_samples(samples)
    assert fit.c_ms_per_flop == pytest.approx(DEVICE.c_ms_per_flop, rel=1e-6)
    assert fit.beta_ms == pytest.approx(DEVICE.beta_ms, rel=1e-6)
    assert fit.max_rel_err < 1e-6


def test_verify_profile_recovers_the_edge_constants_over_the_grid() -> None:
    grid = Grid(batches=(1, 3, 8), draft_lens=(1, 4, 9), prefixes=(10, 300), repeats=2)
    verifier = AffineVerifier()
    samples = measure_verify(verifier, ARCH, grid, vocab=100, rng=np.random.default_rng(0))
    assert len(samples) == 3 * 3 * 2 * 2
    assert {(s.batch, s.tokens) for s in samples} == {(b, L) for b in (1, 3, 8) for L in (1, 4, 9)}
    assert verifier.held == {}  # every profiled user was dropped
    fit = fit_samples(samples)
    assert fit.c_ms_per_flop == pytest.approx(EDGE.c_ms_per_flop, rel=1e-6)
    assert fit.beta_ms == pytest.approx(EDGE.beta_ms, rel=1e-6)


def test_a_scenario_takes_in_a_written_profile(tmp_path: Path) -> None:
    grid = Grid(batches=(1, 4), draft_lens=(2, 8), prefixes=(64,), repeats=2)
    samples = measure_verify(AffineVerifier(), ARCH, grid, vocab=100, rng=np.random.default_rng(0))
    doc = _document(
        "target",
        model=tmp_path / "toy",
        arch=ARCH,
        fit=fit_samples(samples),
        samples=samples,
        meta={"device": "cpu"},
    )
    write_profile(doc, tmp_path / "edge.toml")
    saved = tomllib.loads((tmp_path / "edge.toml").read_text())
    assert saved["profile"]["fit"]["points"] == len(samples) == len(saved["profile"]["samples"])
    (tmp_path / "s.toml").write_text('profiles = ["edge.toml"]\n[users]\ncount = 2\n')
    sc = load_scenario(tmp_path / "s.toml")
    edge = sc.problem().edge
    assert (edge.target.layers, edge.target.hidden, edge.target.ffn) == (4, 256, 1024)
    assert edge.latency.c_ms_per_flop == pytest.approx(EDGE.c_ms_per_flop, rel=1e-6)
    assert edge.latency.beta_ms == pytest.approx(EDGE.beta_ms, rel=1e-6)
    # The users keep the default (the paper's) device: the profile only measured the edge.
    assert sc.users.draft.name == "Qwen3-1.7B" and sc.edge.target.name == "toy"


def test_a_scenario_file_overrides_its_profile_and_bad_profiles_are_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "p.toml").write_text(
        '[profile]\nrole = "draft"\n[users.device]\nc_ms_per_flop = 1e-9\nbeta_ms = 5.0\n'
    )
    (tmp_path / "s.toml").write_text('profiles = ["p.toml"]\n[users.device]\nbeta_ms = 9.0\n')
    u = load_scenario(tmp_path / "s.toml").problem().users[0]
    assert (u.device.c_ms_per_flop, u.device.beta_ms) == (1e-9, 9.0)
    (tmp_path / "bad.toml").write_text("[planner]\npolicy = 'ad'\n")
    for name, rule in [
        ("missing.toml", "does not exist"),
        ("bad.toml", "may only set"),
    ]:
        (tmp_path / "s2.toml").write_text(f'profiles = ["{name}"]\n')
        with pytest.raises(ConfigError, match=rule):
            load_scenario(tmp_path / "s2.toml")


def test_a_grid_needs_positive_sizes() -> None:
    with pytest.raises(ConfigError, match="--batches must be integers >= 1"):
        Grid(batches=(0, 2), draft_lens=(1,), prefixes=(8,), repeats=1)
