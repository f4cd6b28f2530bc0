"""Table 5, pure: correlate a run statistic with parameter count across sizes of one family.

This module reads stored runs only (their ``summary.json`` statistics and config)
and never imports anything that loads or runs a model: ``ppmech.sweep`` and
``ppmech.report`` import :func:`scaling_from_runs` from here (not from
:mod:`ppmech.claims.verify`, the orchestrator that records runs).

Runs are comparable when every setting that changes what is measured agrees:
the PROTOCOL settings of :class:`~ppmech.run_settings.RunSettings`
(:func:`ppmech.settings.keys`), less the model's identity (:data:`MODEL_IDENTITY`),
which is what the correlation varies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ppmech.errors import PPMechError
from ppmech.run_settings import RunSettings
from ppmech.settings import Role, keys

if TYPE_CHECKING:
    from ppmech.runs import Run

#: PROTOCOL settings that name the model itself: the one thing a scaling correlation varies.
MODEL_IDENTITY: tuple[str, ...] = ("model", "revision")


def comparison_keys() -> tuple[str, ...]:
    """The settings that must agree across runs before they share a Table 5 group.

    Every PROTOCOL setting of the run config (declared once on its field, see
    :mod:`ppmech.settings`) except :data:`MODEL_IDENTITY`.
    """
    return tuple(k for k in keys(RunSettings, Role.PROTOCOL) if k not in MODEL_IDENTITY)


def protocol_differences(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The comparison settings (:func:`comparison_keys`) on which these run configs disagree."""
    return [k for k in comparison_keys() if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation of a metric with parameter count."""

    r: float
    p: float
    n: int


def scaling_correlation(
    params: Sequence[float], values: Sequence[float], metric: str = "metric"
) -> Correlation:
    """Table 5: Pearson ``r`` and two-sided ``p`` of ``values`` against ``params``.

    Raises:
        PPMechError: fewer than 3 distinct model sizes, or non-finite values.
    """
    from scipy import stats

    x = np.asarray(params, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape:
        raise PPMechError("parameter counts and metric values differ in length", "pass one value per run")
    if np.unique(x).size < 3:
        raise PPMechError(
            f"a correlation of {metric} with model size needs at least 3 sizes of one family "
            f"(got {np.unique(x).size})",
            "add runs of more model sizes from the same family",
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise PPMechError(f"{metric} is undefined for some runs", "check those runs' statistics")
    if np.ptp(y) == 0:
        raise PPMechError(f"{metric} is the same for every run; r is undefined", "use another metric")
    res = stats.pearsonr(x, y)
    return Correlation(r=float(res.statistic), p=float(res.pvalue), n=int(x.size))


def pearson_p(r: float, n: int) -> float:
    """Two-sided p-value of a Pearson ``r`` from ``n`` pairs (t-test, ``n - 2`` df)."""
    from scipy import stats

    if n < 3 or abs(r) >= 1:
        return 0.0 if abs(r) >= 1 else float("nan")
    t = abs(r) * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * stats.t.sf(t, n - 2))


def implied_sample_size(r: float, p: float, max_n: int = 100) -> int:
    """The ``n`` whose two-sided p-value for ``r`` is closest to ``p`` (in log space)."""
    best, best_err = 3, float("inf")
    for n in range(3, max_n + 1):
        q = pearson_p(r, n)
        if q > 0 and (err := abs(math.log(q) - math.log(p))) < best_err:
            best, best_err = n, err
    return best


def scaling_from_runs(runs: list[Run], metric: str) -> tuple[pd.DataFrame, Correlation]:
    """Table 5 from run directories: Pearson ``r`` of a summary statistic with parameter count.

    Returns:
        One row per run (``run``, ``model``, ``parameters``, ``metric``) and the correlation.

    Raises:
        PPMechError: runs of several families (``model_type``), runs whose PROTOCOL
            settings differ in anything but the model (:func:`protocol_differences`),
            an unknown metric, or fewer than 3 sizes (via :func:`scaling_correlation`).
    """
    families = {str(r.model.get("model_type")) for r in runs}
    if len(families) != 1:
        raise PPMechError(
            f"a scaling correlation needs runs of one model family (got {', '.join(sorted(families))})",
            "pass runs of several sizes of one family",
        )
    differing = protocol_differences([r.config for r in runs])
    if differing:
        raise PPMechError(
            f"these runs were made with different protocols ({', '.join(differing)})",
            "compare runs that differ only in the model",
        )
    values = []
    for r in runs:
        stats = r.summary.get("statistics", {})
        if metric not in stats:
            known = ", ".join(k for k, v in stats.items() if isinstance(v, int | float))
            raise PPMechError(f"unknown metric '{metric}'", f"use one of: {known}")
        v = stats[metric]
        values.append(float("nan") if v is None else float(v))
    params = [float(r.model.get("num_parameters", float("nan"))) for r in runs]
    corr = scaling_correlation(params, values, metric)
    frame = pd.DataFrame(
        {
            "run": [str(r.path) for r in runs],
            "model": [str(r.model.get("spec")) for r in runs],
            "parameters": params,
            metric: values,
        }
    )
    return frame, corr


__all__ = [
    "MODEL_IDENTITY",
    "Correlation",
    "comparison_keys",
    "implied_sample_size",
    "pearson_p",
    "protocol_differences",
    "scaling_correlation",
    "scaling_from_runs",
]
