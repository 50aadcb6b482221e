"""The scenario loader: defaults, presets, files, per-user entries, generic overrides."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from emu.errors import ConfigError
from emu.planner.lattice import LinkNoise
from emu.scenario import load_scenario


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "s.toml"
    f.write_text(text)
    return f


def test_bare_load_is_the_embedded_default() -> None:
    s = load_scenario()
    p = s.problem()
    assert s.name == "default"
    # The main job: 4 users in one UMi cell, the embedded model pair, the paper's devices' timing.
    assert p.size == 4
    assert (s.network.model, s.radio.scenario, s.radio.cells) == ("radio", "umi", 1)
    assert s.models.kind == "embedded"
    assert p.edge.memory_bytes == 80e9
    assert s.planner.policy == "dipsd"


def test_preset_then_file_then_override(tmp_path: Path) -> None:
    f = _write(tmp_path, 'preset = "dipsd-paper"\n[users]\ncount = 3\ncomm_ms = 9.5\n')
    s = load_scenario(f, overrides={"users.alpha": 0.6})
    p = s.problem()
    assert s.preset == "dipsd-paper"
    assert p.size == 3
    assert list(p.comm_ms) == [9.5] * 3
    assert list(p.alpha) == [0.6] * 3


def test_per_user_entries_and_flag_broadcast(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        "[users]\ncount = 3\nalpha = 0.7\n"
        "[[users.each]]\nalpha = 0.9\nprefix_len = 2048\n"
        "[[users.each]]\ndevice = { c_ms_per_flop = 1e-11, beta_ms = 10.0 }\n",
    )
    p = load_scenario(f).problem()
    assert list(p.alpha) == [0.9, 0.7, 0.7]
    assert list(p.prefix) == [2048, 512, 512]
    assert p.users[1].device.beta_ms == 10.0
    assert p.users[2].device.beta_ms == pytest.approx(33.8151)
    # A flag means every user: it clears the per-user value.
    q = load_scenario(f, overrides={"users.alpha": 0.55}).problem()
    assert list(q.alpha) == [0.55] * 3
    assert list(q.prefix) == [2048, 512, 512]


def test_each_users_link_noise_is_its_own_or_the_networks(tmp_path: Path) -> None:
    """A user's jitter and loss, where it sets them, drive its simulated and emulated links and
    its planning noise; the others take [network]'s; radio links take theirs from the series."""
    f = _write(
        tmp_path,
        '[network]\nmodel = "fixed"\njitter_ms = 5.0\nrto_ms = 150.0\n[users]\ncount = 3\n'
        "[[users.each]]\njitter_ms = 20.0\n[[users.each]]\njitter_ms = 0.0\nloss = 0.01\n",
    )
    s = load_scenario(f)
    assert [s.link_noise(m) for m in range(3)] == [
        LinkNoise(20.0, 0.0, 150.0), LinkNoise(0.0, 0.01, 150.0), LinkNoise(5.0, 0.0, 150.0)
    ]  # fmt: skip
    p = s.problem()
    means = [u.comm_noise.mean for u in p.users if u.comm_noise is not None]
    assert means == pytest.approx(
        [
            2 * 20.0 * math.sqrt(2 / math.pi),
            2 * 150.0 * 0.01 / 0.99,
            2 * 5.0 * math.sqrt(2 / math.pi),
        ],
        rel=5e-3,
    )
    quiet = load_scenario(f, overrides={"network.jitter_ms": 0.0})  # users 0 and 1 keep theirs
    assert [u.comm_noise is None for u in quiet.problem().users] == [False, False, True]
    on_radio = load_scenario(f, overrides={"network.model": "radio"}).problem()
    assert all(u.comm_noise is None for u in on_radio.users)


def test_a_users_measured_link_noise_is_what_it_plans_with(tmp_path: Path) -> None:
    """``comm_noise_ms`` lists a user's link time per round beyond its mean, equally likely:
    the planner takes it as given, on any network; its links are shaped as before."""
    f = _write(
        tmp_path,
        '[network]\nmodel = "fixed"\njitter_ms = 5.0\n[users]\ncount = 2\n'
        "[[users.each]]\ncomm_noise_ms = [-2.0, -1.0, 0.0, 9.0]\n",
    )
    s = load_scenario(f)
    given = s.problem().users[0].comm_noise
    assert given is not None
    assert given.mean == pytest.approx(1.5) and given.top_ms == pytest.approx(9.0)
    assert s.link_noise(0) == s.link_noise(1)  # the link is [network]'s still
    on_radio = load_scenario(f, overrides={"network.model": "radio"}).problem()
    assert on_radio.users[0].comm_noise is not None and on_radio.users[1].comm_noise is None


def test_count_below_entries_truncates(tmp_path: Path) -> None:
    f = _write(tmp_path, "[[users.each]]\nalpha = 0.9\n[[users.each]]\nalpha = 0.8\n")
    assert load_scenario(f, overrides={"users.count": 1}).problem().size == 1


def test_example_scenarios_load() -> None:
    for f in Path(__file__).parents[1].joinpath("scenarios").glob("*.toml"):
        assert load_scenario(f).problem().size >= 1, f


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[users]\nalhpa = 0.5\n", r"unknown field users\.alhpa"),
        ("[radio]\ncells = 7\n", r"radio\.cells is now radio\.sites .*got radio\.cells = 7"),
        ("[users]\ncount = 'six'\n", r"users\.count must be of type int, got 'six'"),
        ("[users]\ncount = true\n", r"users\.count must be of type int, got True"),
        ("[users]\nalpha = 1.5\n", r"users\[0\]\.alpha must be in \(0, 1\), got 1\.5"),
        ("[users]\ncomm_ms = -3\n", r"comm_ms must be a finite number >= 0, got -3\.0"),
        ("[planner]\nmax_draft_len = 0\n", r"planner\.max_draft_len must be an integer >= 1"),
        ("[edge.latency]\nbeta_ms = -1\n", r"edge\.latency\.beta_ms must be"),
        ("[edge]\nmemory_bytes = 1e9\n", r"edge\.memory_bytes must exceed the target"),
        ('preset = "nope"\n', r"preset must be one of default, dipsd-paper, hetnet, dsd, dsd-full"),
        ("users = 3\n", r"users must be a table, got 3"),
        ("[users\n", r"is not valid TOML"),
        ('[network]\nmodel = "trace"\n', r'network\.model = "trace" needs network\.trace_up or'),
        ('[network]\nmodel = "trace"\ntrace_up = "/nonexistent/up.trace"\n',
         r"network\.trace_up '/nonexistent/up\.trace' cannot be read"),
        ('[network]\nmodel = "fixed"\ntrace_down = "d.trace"\n',
         r"network\.trace_down needs network\.model = trace, got model 'fixed'"),
        ('[network]\nmodel = "wifi"\n', r"network\.model must be one of fixed, radio, trace"),
        ("[[users.each]]\n[[users.each]]\njitter_ms = -1\n",
         r"users\.each\[1\]\.jitter_ms must be in \[0, 1e5\], got -1"),
        ("[[users.each]]\nloss = 0.7\n",
         r"users\.each\[0\]\.loss must be in \[0, 0\.5\], got 0\.7"),
        ("[[users.each]]\ncomm_noise_ms = []\n",
         r"users\.each\[0\]\.comm_noise_ms must list 1 to 4096 .*got \[\] \(0 values\)"),
        ("[[users.each]]\ncomm_noise_ms = [1.0, nan, 2.0]\n",
         r"users\.each\[0\]\.comm_noise_ms must list .*got \[1\.0, nan, 2\.0\] \(3 values\)"),
        ("[users]\ncomm_ms = 3.0\n[[users.each]]\ncomm_noise_ms = [-5.0, 1.0]\n",
         r"users\.each\[0\]\.comm_noise_ms must not take the link time below 0 ms: its least "
         r"value is -5\.0 and comm_ms is 3\.0"),
        ("[[users.each]]\ncomm_noise_ms = 3.0\n",
         r"users\.each\[0\]\.comm_noise_ms must be a list, got 3\.0"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_field_value_and_rule(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_scenario(_write(tmp_path, text)).problem()


def test_a_trace_link_must_be_a_mahimahi_trace_with_an_opportunity(tmp_path: Path) -> None:
    bad = tmp_path / "bad.trace"
    for text, says in (("", "is empty"), ("5\n3\n", "non-decreasing"), ("x\n", "one integer")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=rf"network\.trace_up '.*bad\.trace' .*{says}"):
            load_scenario(overrides={"network.model": "trace", "network.trace_up": str(bad)})
    good = tmp_path / "up.trace"
    good.write_text("1\n2\n")
    with pytest.raises(ConfigError, match=r"network\.rate_bps is the traces'"):
        load_scenario(overrides={"network.model": "trace", "network.trace_up": str(good),
                                 "network.rate_bps": 1e6})  # fmt: skip
    net = load_scenario(overrides={"network.model": "trace", "network.trace_up": str(good)}).network
    assert list(net.trace("trace_up")) == [1, 1] and net.trace("trace_down") is None


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario("/nonexistent/scenario.toml")


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            {"models.temperature": 0.8, "models.top_k": 64, "limits.max_frame_bytes": 4096},
            "limits.max_frame_bytes must hold a sampled draft of planner.max_draft_len = 20",
        ),
        (
            {"limits.heartbeat_ms": 10.0, "limits.messages_per_s": 100.0},
            "limits.messages_per_s must allow four times the heartbeats",
        ),
        (
            {"limits.heartbeat_ms": 3000.0, "limits.idle_timeout_s": 5.0},
            "limits.heartbeat_ms must be > 0 and under half of limits.idle_timeout_s",
        ),
    ],
)
def test_limits_that_would_refuse_honest_users_are_one_line(
    overrides: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_scenario(overrides=overrides)


def test_the_edge_runs_the_scenarios_own_runtime_section() -> None:
    """One type for [runtime] in the file and in the node: nothing is copied field by field."""
    from emu.deploy.runtime import edge_settings

    sc = load_scenario(overrides={"runtime.grace_ms": 7.0, "runtime.comm_quantile": 0.9})
    settings = edge_settings(sc, sc.users.count)
    assert settings.runtime is sc.runtime
    assert settings.runtime.pipeline.close.grace_ms == 7.0
    assert settings.runtime.replan.comm_quantile == 0.9
    assert load_scenario().runtime.replan.comm_quantile is None  # 0 in the file: the mean


def test_set_chooses_a_preset_and_refuses_a_field_of_a_value() -> None:
    assert load_scenario(overrides={"preset": "dipsd-paper"}).users.count == 6
    with pytest.raises(ConfigError, match=r"sim\.seed\.x: sim\.seed is a value, not a table"):
        load_scenario(overrides={"sim.seed.x": 1})


def test_a_node_loads_its_scenario_wherever_the_runner_writes_it(tmp_path: Path) -> None:
    """The runner's per-policy scenario keeps no relative profile path (its values are merged
    in): a node process loads it from the run directory as the user's file resolved."""
    from emu.deploy.runtime import node_scenario
    from emu.scenario import scenario_toml

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "edge.toml").write_text("[edge.latency]\nbeta_ms = 42.0\n")
    (tmp_path / "s.toml").write_text('profiles = ["sub/edge.toml"]\n[models]\nkind = "synthetic"\n')
    sc = load_scenario(tmp_path / "s.toml")
    assert sc.edge.latency.beta_ms == 42.0
    mine = node_scenario(sc, policy="ad", time_scale=2.0, comm_ms=None)
    run = tmp_path / "run" / "ad"
    run.mkdir(parents=True)
    (run / "scenario.toml").write_text(scenario_toml(mine))
    loaded = load_scenario(run / "scenario.toml")
    assert loaded == mine and loaded.edge.latency.beta_ms == 42.0
    assert (loaded.planner.policy, loaded.emu.time_scale) == ("ad", 2.0)
