"""Null models and confounder controls: is the "conservation" of ``H = K + V`` real?

A low coefficient of variation of ``H`` can arise without any dynamics behind it.
These pure functions (float64, seeded :class:`numpy.random.Generator`) test the
known ways it can, on per-step ``K`` and ``V`` of recorded trajectories (valid
steps: ``K`` and ``V`` both finite, as in :mod:`ppmech.statistics`):

* **Compensation ratio** ``R = Var(H) / (Var(K) + Var(V))`` (ddof 0). Since
  ``Var(H) = Var(K) + Var(V) + 2 Cov(K, V)``, ``R < 1`` exactly when ``K`` and ``V``
  covary negatively (they compensate), ``R ≈ 1`` when they are unrelated, and
  ``R`` does not change when ``h`` is rescaled. Pooled over all valid steps (it
  then includes differences between trajectories), and per trajectory
  (``R_i`` on trajectory ``i``'s steps, averaged over trajectories with at least
  :data:`MIN_STEPS` valid steps).
* **Pairing-shuffle null**: ``V`` permuted against ``K`` within each trajectory
  (the same values, the pairing destroyed; each trajectory keeps its own mean
  ``K`` and ``V``). The observed statistic is compared with its permutation
  distribution: one-sided ``p = (1 + #{null ≤ observed}) / (1 + B)`` (small
  values are "flatter"; the observed pairing counts as one permutation) and the
  effect size ``(observed − null mean) / null sd``. Pooled ``Var(K) + Var(V)`` and
  pooled mean ``H`` are unchanged by the shuffle, so the global CV and pooled ``R``
  are monotone in pooled ``Var(H)`` and get the same p-value.
* **Scale null**: ``h → c·h`` adds ``2 ln c`` to every ``K`` and ``H`` and nothing
  else; the CV of ``H`` moves with ``c`` while ``std(H)`` and ``R`` do not.
* **Token and position identity**: held-out fixed-effects ``R²`` of ``K`` on the
  produced token ``x_t``, the input token ``x_{t−1}`` that moved the state, and
  the step ``t``; and the conservation statistics on ``K`` with those effects
  removed (cross-fitted, see :func:`identity_controls`).
* **Curvature**: the mean turning angle between consecutive velocities
  (Hosseini & Fedorenko, NeurIPS 2023; the per-step formula is
  :func:`ppmech.mechanics.turning_angles`).

Confidence intervals reuse :func:`ppmech.statistics.trajectory_bootstrap`
(percentile, trajectories resampled with replacement). The monitor's
false-alarm control lives with the monitor
(:func:`ppmech.monitor.scoring.conformal_threshold`,
:func:`ppmech.statistics.binomial_interval`).

**Adding a null model** is one module in this package and its test: a class with
the :class:`~ppmech.nulls.base.NullModel` attributes (``name``, ``alters``,
``order``, ``columns``, ``claims``) and ``compute(steps, *, n_boot, seed, n_perm)``,
decorated with :func:`~ppmech.nulls.base.register`. :func:`registry` imports every
module here, so ``ppmech verify`` (its ledger rows and per-run table),
``ppmech analyze`` and the report pick it up without further edits.

Modules: :mod:`.base` (valid pairs, flatness statistics, the protocol and the
registry), :mod:`.compensation`, :mod:`.pairing`, :mod:`.scale`, :mod:`.identity`
(null models), :mod:`.regression` (cross-fitted fixed effects), :mod:`.curvature`
(turning angles of hidden states; not a null of the steps).
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pandas as pd

from ppmech.nulls.base import (
    MIN_STEPS,
    STATISTIC_NAMES,
    TIE_RTOL,
    ClaimSpec,
    Column,
    NullModel,
    NullResult,
    NullTest,
    compensation_ratio,
    kv_parts,
    padded_pairs,
    per_trajectory_ratios,
    register,
    registered,
    split_by_trajectory,
    valid_pairs,
)
from ppmech.nulls.base import null_test as _null_test  # noqa: F401  (tests compare against it)
from ppmech.nulls.compensation import compensation, corr_kv
from ppmech.nulls.curvature import curvature, trajectory_curvatures
from ppmech.nulls.identity import FACTORS, IdentityControls, identity_controls, identity_frame
from ppmech.nulls.pairing import pairing_shuffle, permute_within_rows, test_estimates
from ppmech.nulls.regression import (
    _lookup,  # noqa: F401  (tests use it)
    cross_fitted_prediction,
    fixed_effects_fit,
    r_squared,
    trajectory_folds,
)
from ppmech.nulls.scale import (
    PAPER_CV_THRESHOLD,
    SCALES,
    UNIT_RANGE,
    scale_controls,
    scale_table,
    threshold_scale,
)
from ppmech.statistics import Estimate


def registry() -> list[NullModel]:
    """Every null model of this package, in ``order``: each module is imported once, so that
    its :func:`~ppmech.nulls.base.register` runs."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return sorted(registered().values(), key=lambda m: (m.order, m.name))


def run_nulls(
    steps: pd.DataFrame, n_boot: int = 1000, seed: int = 0, n_perm: int = 1000
) -> tuple[dict[str, Estimate], dict[str, pd.DataFrame]]:
    """Every registered null model on one run's steps: estimates (``null_*``) and tables."""
    estimates: dict[str, Estimate] = {}
    tables: dict[str, pd.DataFrame] = {}
    for model in registry():
        result = model.compute(steps, n_boot=n_boot, seed=seed, n_perm=n_perm)
        estimates.update(result.estimates)
        tables.update(result.tables)
    return estimates, tables


def conservation_summary(steps: pd.DataFrame, n_perm: int = 200, seed: int = 0) -> dict[str, float | None]:
    """Point estimates of the conservation controls for a run's ``summary.json`` (no bootstrap).

    ``R`` and its pairing-shuffle band (2.5–97.5%), the shuffle-null global CV of ``H``,
    ``corr(K, V)``, the unit-free ``1 − R`` and ``CV / null CV``, and ``c_min``: the paper's
    13% holds for every ``h → c·h`` with ``c > c_min``. ``None`` where undefined (e.g. fewer
    trajectories than a permutation test needs).
    """
    import math

    from ppmech.errors import PPMechError

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    parts = kv_parts(steps)
    vp = valid_pairs(parts)
    pooled = np.concatenate(vp) if vp else np.empty((0, 2))
    r = compensation_ratio(pooled)
    out: dict[str, float | None] = {
        "R": clean(r),
        "one_minus_R": clean(1.0 - r),
        "corr_KV": clean(corr_kv(pooled)),
        "c_min": clean(threshold_scale(pooled)) if len(pooled) else None,
        "shuffle_null_R_low": None,
        "shuffle_null_R_high": None,
        "shuffle_null_cv": None,
        "cv_ratio": None,
        "n_perm": n_perm,
    }
    try:
        tests = pairing_shuffle(parts, n_perm, seed, chunk=10)
    except PPMechError:  # too few trajectories for a permutation test: the point values stand
        return out
    cv = tests["global_cv"]
    out.update(
        shuffle_null_R_low=clean(tests["R"].null_low),
        shuffle_null_R_high=clean(tests["R"].null_high),
        shuffle_null_cv=clean(cv.null_mean),
        cv_ratio=clean(cv.observed / cv.null_mean) if cv.null_mean else None,
    )
    return out


def columns() -> list[Column]:
    """The per-run null-model table's columns, registry order."""
    return [c for m in registry() for c in m.columns]


__all__ = [
    "FACTORS",
    "MIN_STEPS",
    "PAPER_CV_THRESHOLD",
    "SCALES",
    "STATISTIC_NAMES",
    "TIE_RTOL",
    "UNIT_RANGE",
    "ClaimSpec",
    "Column",
    "IdentityControls",
    "NullModel",
    "NullResult",
    "NullTest",
    "columns",
    "compensation",
    "compensation_ratio",
    "conservation_summary",
    "corr_kv",
    "cross_fitted_prediction",
    "curvature",
    "fixed_effects_fit",
    "identity_controls",
    "identity_frame",
    "kv_parts",
    "padded_pairs",
    "pairing_shuffle",
    "per_trajectory_ratios",
    "permute_within_rows",
    "r_squared",
    "register",
    "registry",
    "run_nulls",
    "scale_controls",
    "scale_table",
    "split_by_trajectory",
    "test_estimates",
    "threshold_scale",
    "trajectory_curvatures",
    "trajectory_folds",
    "valid_pairs",
]
