"""Regression utilities of the token/position control: cross-fitted additive fixed effects.

Pure math (float64); used by :mod:`ppmech.nulls.identity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ppmech.errors import PPMechError

F64 = NDArray[np.float64]


def trajectory_folds(trajectory: np.ndarray, n_folds: int = 2, seed: int = 0) -> NDArray[np.int64]:
    """A fold per step: whole trajectories assigned to ``n_folds`` balanced folds at random (seeded)."""
    traj = np.asarray(trajectory)
    labels = np.unique(traj)
    if labels.size < n_folds:
        raise PPMechError(
            f"a held-out split needs at least {n_folds} trajectories (got {labels.size})",
            "record more prompts",
        )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(labels.size, dtype=np.int64)
    fold_of[rng.permutation(labels.size)] = np.arange(labels.size) % n_folds
    return fold_of[np.searchsorted(labels, traj)]


def _group_effects(y: F64, groups: NDArray[np.int64]) -> tuple[NDArray[np.int64], F64]:
    """Group labels and their mean of ``y`` (``y`` already centred)."""
    labels, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=y, minlength=labels.size)
    counts = np.bincount(inverse, minlength=labels.size)
    return labels, sums / counts


def _lookup(labels: NDArray[np.int64], effects: F64, groups: NDArray[np.int64]) -> F64:
    """Effect of each group in ``groups``; 0 (the grand mean) for groups unseen in the fit."""
    if labels.size == 0:
        return np.zeros(len(groups))
    pos = np.clip(np.searchsorted(labels, groups), 0, labels.size - 1)
    return np.where(labels[pos] == groups, effects[pos], 0.0)


def fixed_effects_fit(
    y: F64, factors: Sequence[NDArray[np.int64]], iterations: int = 20
) -> tuple[float, list[tuple[NDArray[np.int64], F64]]]:
    """Additive fixed effects ``y ≈ μ + Σ_f α_f[group_f]`` by backfitting.

    One factor is plain group means; several are fitted by cycling through the
    factors, each on the residual of the others, ``iterations`` times.

    Returns:
        ``μ`` and, per factor, (group labels, effects).
    """
    yy = np.asarray(y, dtype=np.float64)
    mu = float(yy.mean())
    resid = yy - mu
    effects: list[tuple[NDArray[np.int64], F64]] = [
        (np.unique(f), np.zeros(np.unique(f).size)) for f in factors
    ]
    contrib = [np.zeros_like(yy) for _ in factors]
    for _ in range(iterations if len(factors) > 1 else 1):
        for j, f in enumerate(factors):
            partial = resid + contrib[j]
            labels, eff = _group_effects(partial, np.asarray(f))
            effects[j] = (labels, eff)
            contrib[j] = _lookup(labels, eff, np.asarray(f))
            resid = partial - contrib[j]
    return mu, effects


def cross_fitted_prediction(
    y: F64, factors: Sequence[NDArray[np.int64]], folds: NDArray[np.int64], iterations: int = 20
) -> F64:
    """Held-out fixed-effects prediction of every ``y``: fitted on the other folds only.

    A group unseen in the training folds contributes nothing (the prediction falls
    back to the training mean), so a token seen once cannot explain itself.
    """
    yy = np.asarray(y, dtype=np.float64)
    pred = np.full_like(yy, np.nan)
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        mu, effects = fixed_effects_fit(yy[train], [np.asarray(g)[train] for g in factors], iterations)
        p = np.full(int(test.sum()), mu)
        for (labels, eff), g in zip(effects, factors, strict=True):
            p += _lookup(labels, eff, np.asarray(g)[test])
        pred[test] = p
    return pred


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` over rows ``[n, 2]`` of (``y``, ``ŷ``) or two arrays.

    Held-out, so it can be negative (worse than the mean). NaN for constant ``y``.
    """
    yy = np.asarray(y, dtype=np.float64)
    pp = np.asarray(pred, dtype=np.float64)
    ss_tot = float(np.sum((yy - yy.mean()) ** 2)) if yy.size else 0.0
    return 1.0 - float(np.sum((yy - pp) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
