"""Scenarios: typed sections (``sections``) and the loader from TOML, presets and overrides
(``load``)."""

from emu.scenario.load import load_scenario, scenario_toml
from emu.scenario.sections import PRESETS, Scenario

__all__ = ["PRESETS", "Scenario", "load_scenario", "scenario_toml"]
