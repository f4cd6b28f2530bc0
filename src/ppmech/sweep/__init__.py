"""``ppmech sweep``: a multi-model study on Ray.

* :mod:`ppmech.sweep.study` — the TOML schema, validation and the grid of runs;
* :mod:`ppmech.sweep.runner` — Ray tasks calling :func:`ppmech.measure.measure`,
  retries, and the driver-side writing of run directories;
* :mod:`ppmech.sweep.outputs` — ``study.json``, ``study.parquet`` and the tables.

Python use::

    from ppmech.sweep import load_study, sweep
    result = sweep(load_study("study.toml"), "studies/small")
    result.frame  # one row per run (also OUT/study.parquet)
"""

from ppmech.sweep.runner import RunOutcome, SweepOptions, SweepResult, sweep
from ppmech.sweep.study import PRESETS, PlannedRun, Resources, Study, load_study, parse_study, preset_study

__all__ = [
    "PRESETS",
    "PlannedRun",
    "Resources",
    "RunOutcome",
    "Study",
    "SweepOptions",
    "SweepResult",
    "load_study",
    "parse_study",
    "preset_study",
    "sweep",
]
