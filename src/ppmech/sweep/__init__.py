"""``ppmech sweep``: a multi-model study on Ray.

* :mod:`ppmech.sweep.study` — the TOML schema, validation and the grid of runs;
* :mod:`ppmech.sweep.names` — safe run names from the PROTOCOL settings' roles;
* :mod:`ppmech.sweep.reuse` — what the study directory holds: reuse, re-analyse, stale, foreign;
* :mod:`ppmech.sweep.cluster` — starting or joining Ray (join timeout, causes, resources);
* :mod:`ppmech.sweep.runner` — Ray tasks calling :func:`ppmech.measure.measure`,
  retries, and the driver-side writing of run directories (through :mod:`ppmech.artifacts`);
* :mod:`ppmech.sweep.progress` — runs done, running and failed;
* :mod:`ppmech.sweep.outputs` — ``study.json``, ``study.parquet`` and the tables;
* :mod:`ppmech.sweep.ledger` — Table 5 for ``ppmech verify --sweep``.

Ray is the extra ``ppmech[sweep]``; it is imported only when a run must be recorded.

Python use::

    from ppmech.sweep import load_study, sweep
    result = sweep(load_study("study.toml"), "studies/small")
    result.frame  # one row per run (also OUT/study.parquet)
"""

from ppmech.sweep.outputs import RunOutcome
from ppmech.sweep.runner import SweepOptions, SweepResult, sweep
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
