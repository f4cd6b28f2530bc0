"""The report's figures as plotly :class:`~plotly.graph_objects.Figure` objects (usable in notebooks).

One module per section of the page (:mod:`ppmech.report.build`):

* :mod:`~ppmech.report.figures.runs`: energy terms along the trajectory, phase portrait,
  distributions, the Table 1 comparison, tokens shaded by a term;
  :mod:`~ppmech.report.figures.nulls`: the null-model controls of each run;
* :mod:`~ppmech.report.figures.sweep`: Table 5 (drift and ⟨|ΔH|⟩ against model size);
* :mod:`~ppmech.report.figures.monitor_benchmark` and :mod:`~ppmech.report.figures.monitor_scores`;
* :mod:`~ppmech.report.figures.steering` and :mod:`~ppmech.report.figures.steering_evaluation`.

The claims ledger is a table only. Every function reads loaded outputs (see
:mod:`ppmech.report.sources`) and returns a figure whose ``layout.meta["caption"]``
says what is plotted and in what units (:mod:`~ppmech.report.figures.common`). No
figure module imports anything that runs a model.
"""

from __future__ import annotations

from ppmech.report.figures.common import (
    TERM_AXIS,
    TERM_LABEL,
    TERM_UNITS,
    caption_of,
    kv_parts,
    padded_range,
    per_trajectory,
    step_quantiles,
    terms,
)
from ppmech.report.figures.monitor_benchmark import monitor_detection, monitor_roc
from ppmech.report.figures.monitor_scores import monitor_trace
from ppmech.report.figures.nulls import (
    REPORT_PERMUTATIONS,
    REPORT_SCALES,
    controls,
    controls_rows,
    null_estimates,
    null_models,
)
from ppmech.report.figures.runs import (
    COMPARED,
    comparison,
    constant_h_levels,
    distributions,
    energy_vs_step,
    phase_portrait,
    trajectory_tokens,
)
from ppmech.report.figures.steering import steering_traces
from ppmech.report.figures.steering_evaluation import table3_pairs
from ppmech.report.figures.sweep import SCALED, scaling, scaling_frame, scaling_groups

__all__ = [
    "COMPARED",
    "REPORT_PERMUTATIONS",
    "REPORT_SCALES",
    "SCALED",
    "TERM_AXIS",
    "TERM_LABEL",
    "TERM_UNITS",
    "caption_of",
    "comparison",
    "constant_h_levels",
    "controls",
    "controls_rows",
    "distributions",
    "energy_vs_step",
    "kv_parts",
    "monitor_detection",
    "monitor_roc",
    "monitor_trace",
    "null_estimates",
    "null_models",
    "padded_range",
    "per_trajectory",
    "phase_portrait",
    "scaling",
    "scaling_frame",
    "scaling_groups",
    "steering_traces",
    "step_quantiles",
    "table3_pairs",
    "terms",
    "trajectory_tokens",
]
