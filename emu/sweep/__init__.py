"""Sweeps and studies: study files expanded into cases (``spec``), run resumably on an engine
(``runner``, ``engine``: this process or Dask distributed), summarised over seeds
(``summary``), and the DiP-SD reproduction study (``study``).

From a notebook::

    from emu.sweep import DaskEngine, load_study, read_results, run_study

    study = load_study("jitter.toml")
    with DaskEngine(workers=2) as engine:        # or DaskEngine(address="tcp://host:8786")
        run_study(study, Path("runs/jitter"), engine=engine)
    rows = read_results(Path("runs/jitter"))     # or pandas.read_csv("runs/jitter/results.csv")
"""

from emu.sweep.engine import DaskEngine, InProcess, engine_for
from emu.sweep.runner import read_results, run_study
from emu.sweep.spec import expand, load_study

__all__ = [
    "DaskEngine",
    "InProcess",
    "engine_for",
    "expand",
    "load_study",
    "read_results",
    "run_study",
]
