"""``draftnet sim`` of DSD: drafters, a router and verifiers on the discrete-event clock, each
window policy in turn (emu.runners.sim_dsd), and its bad input."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import emu.scenario.dsd as scenario_dsd
from emu.errors import ConfigError
from emu.planner import get_policy
from emu.planner.dsd.awc import ALLOWED_WINDOWS, HAND_SET_HEAD, AwcNetwork
from emu.planner.dsd.compute import Compat, FlopCompute, Work
from emu.planner.dsd.routing import ROUTERS
from emu.planner.dsd.windows import Static
from emu.planner.model import draft_flops, verify_flops
from emu.runners.sim_dsd import dsd_problem_of, simulate_dsd_policy
from emu.scenario import load_scenario
from tests.test_cli import draftnet


def _problem(**dsd: object):  # type: ignore[no-untyped-def]
    overrides = {"deployment.system": "dsd", "planner.policy": "specpp"}
    overrides |= {f"dsd.{k}": v for k, v in dsd.items()}
    return load_scenario(preset="dsd", overrides=overrides).dsd_problem()


def _run(problem, policy: str = "static", seconds: float = 20.0, seed: int = 0):  # type: ignore[no-untyped-def]
    return simulate_dsd_policy(
        problem, get_policy(policy).plan(problem), duration_s=seconds, seed=seed
    )


def test_sim_json_gives_each_window_policy_its_figures(tmp_path: Path) -> None:
    r = draftnet(
        "sim", "--preset", "dsd", "--duration", "10",
        *["--policy", "static", "--policy", "backoff", "--policy", "specpp", "--policy", "awc"],
        "--json", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["system"] == "dsd" and (doc["drafters"], doc["verifiers"]) == (20, 5)
    assert set(doc["results"]) == {"static", "backoff", "specpp", "awc"}
    for policy, res in doc["results"].items():
        assert res["throughput_tok_s"] > 0 and res["conversations"] > 0, policy
        for key in ("tpot_ms", "ttft_ms"):
            assert 0 < res[key]["p50"] <= res[key]["p95"], (policy, key)
        assert 0 < res["acceptance_rate"] < 1
        assert all(0 < u <= 1 for u in res["verifier_utilisation"].values())
    means = {p: res["mean_window"] for p, res in doc["results"].items()}
    assert means["static"] == 4.0 and means["specpp"] == 7.0  # the curve's at short contexts
    assert 4.0 < means["backoff"] < 8.0  # it swings between 4 and 8
    assert means["awc"] < 2.0  # the trained head drafts on the verifier (fused) at this load
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["results"].keys() == doc["results"].keys()


def test_sim_without_json_prints_each_policys_row(tmp_path: Path) -> None:
    """The human summary (a bug: it read the dipsd summary's users and crashed)."""
    r = draftnet("sim", "--preset", "dsd", "--duration", "2", "--policy", "static",
                 "--policy", "awc", "--out", str(tmp_path / "out"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sim of scenario dsd: 20 drafters, 5 verifiers" in r.stderr
    rows = [
        line for line in r.stderr.splitlines() if line.strip("│ ").startswith(("static", "awc"))
    ]
    assert len(rows) == 2, r.stderr


def test_a_run_is_its_seed_and_every_router_agrees_with_one_verifier() -> None:
    problem = _problem(tiers=[{"name": "one", "count": 1}], fanout=1)
    first = _run(problem).summary()
    assert _run(problem).summary() == first
    assert _run(problem, seed=1).summary() != first
    for router in ROUTERS:
        res = _run(replace(problem, router=router)).summary()
        assert res == first, router


def test_every_conversation_gets_its_whole_answer() -> None:
    """draftnet's accounting: each finished conversation has exactly its answer's tokens, in
    rounds that each emit their accepted drafts plus one; the authors': ceil(A / gamma)
    rounds whatever is accepted."""
    problem = _problem()
    run = _run(problem)
    assert run.finished and all(c.tokens == c.answer for c in run.finished)
    assert all(c.rounds <= c.answer - 1 for c in run.finished)
    assert run.accepted <= run.drafted and run.tokens >= sum(c.tokens for c in run.finished)
    authors = _problem(compat=True)
    assert authors.compat.gamma_granularity == "conversation"
    fixed = _run(authors)
    assert fixed.finished
    assert all(c.rounds == math.ceil(c.answer / 4) for c in fixed.finished)
    # Every draft counts as output, accepted or not: an answer is "whole" with a fifth of it
    # rejected (the snapshot's defect, kept under compat).
    assert sum(c.drafted for c in fixed.finished) == sum(c.answer for c in fixed.finished)
    assert sum(c.accepted for c in fixed.finished) < 0.9 * sum(c.answer for c in fixed.finished)


def test_jsq_spreads_the_load_over_unequal_verifiers_better_than_random() -> None:
    problem = _problem(drafters=24)
    jsq = _run(replace(problem, router="jsq"), seconds=30.0).summary()
    rnd = _run(replace(problem, router="random"), seconds=30.0).summary()
    assert jsq["queue_wait_ms"]["p95"] < rnd["queue_wait_ms"]["p95"]
    assert jsq["ttft_ms"]["p95"] < rnd["ttft_ms"]["p95"]


def test_awc_runs_the_network_it_is_given(tmp_path: Path) -> None:
    """A head that always says +4 keeps the window at its clamp (dsd.max_gamma is Spec++'s;
    AWC's is gamma_default unless raised)."""
    net = AwcNetwork.hand_set()
    up = {**net.arrays(), "head": np.zeros(11), "bias": 4.0}
    np.savez(tmp_path / "up.npz", **up)
    res = _run(_problem(awc_weights=str(tmp_path / "up.npz")), policy="awc").summary()
    assert res["mean_window"] == pytest.approx(4.0, abs=0.2)  # short ends of answers aside


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "dsd.router=fastest"], "dsd.router must be one of random, round-robin, jsq"),
        (["--policy", "dipsd"], "--policy must be one of dsd's policies (specpp, static"),
        (["--set", "dsd.fanout=9"], "dsd.fanout must be at most the 5 verifiers of dsd.tiers"),
        (["--set", "dsd.batching=sjf"], "dsd.batching must be one of fifo, priority, lab"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], needle: str) -> None:
    r = draftnet("sim", "--preset", "dsd", "--duration", "1", *args, "--json")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_files_are_one_line_and_status_2(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", **{**AwcNetwork.hand_set().arrays(), "w1": np.zeros((11, 3))})
    (tmp_path / "t.csv").write_text("74,140\n80,x\n")
    for setting, needle in (
        (f"dsd.awc_weights={tmp_path / 'w.npz'}", "array 'w1' must have shape (11x11)"),
        (f"dsd.trace={tmp_path / 't.csv'}", "line 2"),
    ):
        r = draftnet("sim", "--preset", "dsd", "--duration", "1", "--set", setting, "--json")
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_phase_lanes_hold_a_job_at_most_their_window() -> None:
    with_lanes = _run(_problem()).summary()["lane_wait_ms"]
    assert with_lanes["p50"] > 0.0 and with_lanes["p99"] <= 0.8 + 1e-9  # 0.3 alone, 0.8 else
    assert _run(_problem(lanes=False)).summary()["lane_wait_ms"]["p99"] == 0.0


def test_fused_execution_pays_no_round_network_and_loses_where_the_network_is_cheap() -> None:
    """The verifier drafts too, a token a round: far verifiers (50 ms each way) make its tokens
    come faster (TPOT: the arrivals, not the mode, set the throughput below saturation); near
    ones with a slow fused drafter make them come slower."""
    far = {"tiers": [{"name": "far", "count": 2, "one_way_ms": [50.0, 50.0]}], "fanout": 2}
    near = {"tiers": [{"name": "near", "count": 2, "one_way_ms": [0.5, 0.5],
                       "fused_draft_base_ms": 40.0}], "fanout": 2}  # fmt: skip
    for tiers, fused_wins in ((far, True), (near, False)):
        distributed = _run(_problem(**tiers, mode="distributed")).summary()
        fused = _run(_problem(**tiers, mode="fused")).summary()
        assert fused["mean_window"] == 1.0 and fused["fused_rounds"] >= fused["rounds"] > 0
        assert distributed["fused_rounds"] == 0
        faster = fused["tpot_ms"]["p50"] < distributed["tpot_ms"]["p50"]
        assert faster == fused_wins, (tiers, fused["tpot_ms"], distributed["tpot_ms"])
    hybrid = _run(_problem(mode="hybrid", awc_weights="hand-set"), policy="awc").summary()
    assert 0 < hybrid["fused_rounds"] < hybrid["rounds"]  # fused only at a window of 1


def test_a_kv_cache_too_small_for_any_prefill_fails_every_conversation() -> None:
    """Every prefill (at least 32 tokens) is refused by a 16-token cache, tried again 3 times
    (dsd.md 4.2), then its conversation fails; its drafter's user thinks and starts another."""
    tiny = {"tiers": [{"name": "t", "count": 2, "kv_tokens": 16}], "fanout": 2}
    res = _run(_problem(**tiny), seconds=10.0).summary()
    assert res["conversations"] == 0 and res["tokens"] == 0 and res["rounds"] == 0
    assert res["failed_conversations"] > 20  # 20 drafters, each more than once in 10 s
    assert res["kv_refusals"] == 4 * res["failed_conversations"]
    assert all(peak == 0 for peak in res["kv_peak_tokens"].values())


def test_a_kv_cache_that_fits_a_few_jobs_holds_the_rest_back() -> None:
    """A cache for a few jobs: dispatches are refused and retried, every finished conversation
    is still whole, and no verifier ever held more than its cache."""
    small = {"tiers": [{"name": "t", "count": 2, "kv_tokens": 1200}], "fanout": 2}
    run = _run(_problem(**small), seconds=20.0)
    res = run.summary()
    assert res["kv_refusals"] > 0 and res["conversations"] > 0
    assert all(c.tokens == c.answer for c in run.finished)
    assert all(0 < peak <= 1200 for peak in res["kv_peak_tokens"].values())
    roomy = _run(_problem(tiers=[{"name": "t", "count": 2}], fanout=2), seconds=20.0).summary()
    assert roomy["kv_refusals"] == 0 and roomy["failed_conversations"] == 0
    assert res["lane_wait_ms"]["p99"] <= roomy["lane_wait_ms"]["p99"] + 1e-9  # lanes unchanged
    assert res["throughput_tok_s"] < roomy["throughput_tok_s"]  # the retries' waits, lost work


def test_a_lane_too_deep_defers_jobs_and_loses_none() -> None:
    """A lane of depth 0 (one job at most) with 60 drafters: jobs wait outside it and ask
    again every poll; the conversations still finish whole."""
    run = _run(_problem(drafters=60, lane_depth=0, lane_poll_ms=0.5), seconds=10.0)
    res = run.summary()
    base = _run(_problem(drafters=60), seconds=10.0).summary()
    assert res["lane_deferrals"] > 0 and base["lane_deferrals"] == 0
    assert res["lane_wait_ms"]["p99"] > 0.8  # the lane's window and then some
    assert run.finished and all(c.tokens == c.answer for c in run.finished)


def test_the_speculative_decoding_counters_add_up() -> None:
    res = _run(_problem()).summary()
    per_pos = res["accepted_per_pos"]
    assert sum(per_pos) == res["spec_decode_num_accepted_tokens"]
    assert res["spec_decode_num_accepted_tokens"] <= res["spec_decode_num_draft_tokens"]
    assert per_pos == sorted(per_pos, reverse=True)  # a position needs every earlier one
    assert per_pos[0] / res["spec_decode_num_drafts"] == pytest.approx(0.93, abs=0.02)  # p_0
    # One inter-token latency a token after the first: their mean is TPOT's, token-weighted.
    assert res["itl_ms"]["mean"] == pytest.approx(res["tpot_ms"]["mean"], rel=0.1)


def _sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more of ``n`` fair coin flips."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def _baseline_experiment(seed: int) -> dict[str, tuple[float, float]]:
    """One seed of the note's baseline experiment: each window policy's and each constant
    window's (throughput [tok/s], mean TPOT [ms]).

    The static policy is a constant window (``dsd.gamma_default``): the constant window equal
    to it is the same run of the same seed, so it takes static's figures instead of running
    again (a tenth of the experiment)."""
    sc = load_scenario(preset="dsd", overrides={"sim.seed": seed})
    problem = sc.dsd_problem()
    makers = {p: get_policy(p).plan(problem) for p in ("awc", "static", "backoff", "specpp")}
    makers |= {f"constant {g}": (lambda g=g: Static(default=g)) for g in ALLOWED_WINDOWS}
    out = {}
    ran: dict[Static, tuple[float, float]] = {}  # each constant window's figures, by window
    for name, make in makers.items():
        constant = make() if name == "static" or name.startswith("constant") else None
        if isinstance(constant, Static) and constant in ran:
            out[name] = ran[constant]
            continue
        s = simulate_dsd_policy(problem, make, duration_s=30.0, seed=seed).summary()
        out[name] = (s["throughput_tok_s"], s["tpot_ms"]["mean"])
        if isinstance(constant, Static):
            ran[constant] = out[name]
    return out


def test_trained_awc_beats_the_window_baselines_over_seeds() -> None:
    """The note's baseline experiment (the dsd preset, hybrid), 8 seeds, each drawing the
    deployment and the run: AWC's throughput beats static's, backoff's and Spec++'s in a
    paired sign test at 5%, and its mean TPOT is lower than each's; it is as good as the best
    constant window (every allowed window run as a constant). The seeds are independent runs,
    one a process on each core (a run is its seed: the figures are those of one process)."""
    seeds = range(8)
    tok: dict[str, list[float]] = {}
    tpot: dict[str, list[float]] = {}
    workers = min(len(seeds), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for figures in pool.map(_baseline_experiment, seeds):  # in the seeds' order
            for name, (throughput, tpot_ms) in figures.items():
                tok.setdefault(name, []).append(throughput)
                tpot.setdefault(name, []).append(tpot_ms)
    for baseline in ("static", "backoff", "specpp"):
        wins = sum(a > b for a, b in zip(tok["awc"], tok[baseline], strict=True))
        assert _sign_test_p(wins, len(seeds)) < 0.05, (baseline, tok["awc"], tok[baseline])
        assert np.mean(tpot["awc"]) < np.mean(tpot[baseline]), baseline
    best = max((n for n in tok if n.startswith("constant")), key=lambda n: np.mean(tok[n]))
    assert np.mean(tok["awc"]) >= 0.99 * np.mean(tok[best]), (best, tok["awc"], tok[best])


def test_train_awc_writes_weights_a_scenario_runs_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "awc.npz"
    args = ["train-awc", "--preset", "dsd", "--grid", "quick", "--workers", "1", "--json"]
    r = draftnet(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["scenarios"] == 4 and doc["runs"] == 24 and doc["snapshots"] > 0
    assert set(doc["labels"].values()) <= {1, 2, 3, 4, 6, 8}
    assert 0.0 <= doc["holdout_accuracy"] <= 1.0 and len(doc["holdout"]) == 1
    runs = sorted((tmp_path / "awc.runs").glob("*.npz"))
    assert len(runs) == 24  # every oracle run kept as it ended
    net = AwcNetwork.from_arrays(dict(np.load(out)), where="awc.npz")
    assert net.p.shape == (16, 11) and net.max_gamma == 8
    again = draftnet(*args, "--out", str(out))  # every run read back: the same weights
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["train_loss"] == doc["train_loss"]
    sim = _run(_problem(awc_weights=str(out)), policy="awc", seconds=5.0).summary()
    assert sim["conversations"] > 0 and 1.0 <= sim["mean_window"] <= 8.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--out", "w.txt"], "--out must name an .npz file, got '"),
        (["--preset", "hetnet", "--out", "w.npz"], "train-awc needs a dsd deployment"),
        (["--workers", "-1", "--out", "w.npz"], "--workers must be >= 1"),
    ],
)
def test_train_awc_bad_input_is_one_line_and_status_2(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    preset = [] if "--preset" in args else ["--preset", "dsd"]
    args = [str(tmp_path / a) if a.startswith("w.") else a for a in args]
    r = draftnet("train-awc", *preset, *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_awc_is_the_trained_head_by_default_and_the_authors_under_compat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = _problem().awc
    assert trained.max_gamma == 8 and trained.p.shape == (16, 11)
    assert np.array_equal(_problem(compat=True).awc.head, np.array(HAND_SET_HEAD))
    assert np.array_equal(_problem(awc_weights="hand-set").awc.head, np.array(HAND_SET_HEAD))
    monkeypatch.setattr(scenario_dsd, "TRAINED", "data/none.npz")
    with pytest.raises(ConfigError, match=r"draftnet's trained weights .* are missing"):
        _problem()


def _profile_toml(path: Path, role: str, *, beta_ms: float, c_ms_per_flop: float) -> str:
    section, shape, latency = ("users", "draft", "device") if role == "draft" else (
        "edge", "target", "latency")  # fmt: skip
    path.write_text(
        f'[{section}.{shape}]\nname = "m"\nlayers = 24\nhidden = 1024\nffn = 2816\n'
        f"[{section}.{latency}]\nc_ms_per_flop = {c_ms_per_flop}\nbeta_ms = {beta_ms}\n"
    )
    return str(path)


def test_compute_from_profiles_prices_passes_by_their_flops(tmp_path: Path) -> None:
    """A tier's target profile and the drafters' draft profile (as `draftnet profile` writes
    them) replace the affine constants: a pass costs beta + c x its FLOPs, so a longer context
    costs more, and the run goes on those times."""
    target = _profile_toml(tmp_path / "t.toml", "target", beta_ms=12.0, c_ms_per_flop=2e-9)
    draft = _profile_toml(tmp_path / "d.toml", "draft", beta_ms=1.0, c_ms_per_flop=4e-9)
    problem = _problem(tiers=[{"name": "t", "count": 2, "profile": target}], fanout=2,
                       draft_profile=draft)  # fmt: skip
    v, d = problem.verifiers[0].compute, problem.drafters[0].compute
    assert isinstance(v, FlopCompute) and isinstance(d, FlopCompute) and d.drafter
    short, long = v.pass_ms([Work(5, 100)] * 4), v.pass_ms([Work(5, 2000)] * 4)
    flops = 4 * float(verify_flops(v.arch, 5, 100))
    assert short == pytest.approx(12.0 + 2e-9 * flops) and long > short
    assert d.draft_ms(4, 100, Compat()) == pytest.approx(
        sum(1.0 + 4e-9 * float(draft_flops(d.arch, 100 + k)) for k in range(4)))  # fmt: skip
    res = _run(problem, seconds=5.0).summary()
    assert res["conversations"] > 0
    slower = _profile_toml(tmp_path / "s.toml", "target", beta_ms=40.0, c_ms_per_flop=2e-9)
    slow = _run(_problem(tiers=[{"name": "t", "count": 2, "profile": slower}], fanout=2,
                         draft_profile=draft), seconds=5.0).summary()  # fmt: skip
    assert slow["tpot_ms"]["mean"] > res["tpot_ms"]["mean"]


def test_a_profile_of_the_wrong_role_is_one_line_and_status_2(tmp_path: Path) -> None:
    draft = _profile_toml(tmp_path / "d.toml", "draft", beta_ms=1.0, c_ms_per_flop=4e-9)
    for setting, needle in (
        (f'dsd.tiers=[{{name = "t", profile = "{draft}"}}]',
         "must be a target profile (`draftnet profile --target`)"),
        (f"dsd.draft_profile={tmp_path / 'none.toml'}", "cannot be read as TOML"),
    ):  # fmt: skip
        r = draftnet("sim", "--preset", "dsd", "--duration", "1", "--set", "dsd.fanout=1",
                     "--set", setting, "--json")  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_acceptance_curve_is_the_scenarios_or_the_embedded_pairs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A lower curve accepts fewer drafts; ``acceptance_from = "embedded"`` takes the embedded
    pair's measured greedy rate (what `draftnet models prepare` recorded) at every position."""
    authors = _run(_problem(), seconds=10.0).summary()
    lower = _run(_problem(acceptance_base=0.7, acceptance_decay=0.9), seconds=10.0).summary()
    assert lower["acceptance_rate"] < authors["acceptance_rate"] - 0.2
    from emu.models import embedded

    pair = embedded.EmbeddedPair(draft=tmp_path / "d.gguf", target=tmp_path / "t",
                                 draft_type="Q3_K_M", acceptance=0.62)  # fmt: skip
    monkeypatch.setattr(embedded, "embedded_pair", lambda: pair)
    sc = load_scenario(preset="dsd", overrides={"dsd.acceptance_from": "embedded"})
    curve = dsd_problem_of(sc).curve
    assert list(curve.probabilities(3000, 6)) == pytest.approx([0.62] * 6)
    with pytest.raises(ConfigError, match=r"dsd\.acceptance_from must be one of"):
        _problem(acceptance_from="measured")
