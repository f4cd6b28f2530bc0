"""The compensation ratio ``R = Var(H) / (Var(K) + Var(V))``, ``Cov(K, V)`` and ``corr(K, V)``.

``R < 1`` exactly when ``K`` and ``V`` covary negatively (they compensate); it
does not change when ``h`` is rescaled. ``1 − R`` is the share of ``Var(K) + Var(V)``
that the pairing of ``K`` with ``V`` removes from ``Var(H)``: a unit-free measure
of compensation (``h → c·h`` adds a constant to ``K``, which changes no variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ppmech.nulls.base import (
    ClaimSpec,
    Column,
    NullResult,
    compensation_ratio,
    kv_parts,
    mean_of_parts,
    per_trajectory_ratios,
    register,
    valid_pairs,
)
from ppmech.statistics import Estimate, trajectory_bootstrap


def compensation(parts: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """The compensation ratio with trajectory-bootstrap CIs.

    Args:
        parts: per trajectory ``[n_i, 2]`` (``K``, ``V``); non-finite rows are skipped.

    Returns:
        ``pooled`` (``R`` over all valid steps), ``per_trajectory`` (mean of ``R_i``),
        ``cov_KV`` (pooled covariance of ``K`` and ``V``, nats²).
    """
    vp = valid_pairs(parts)
    per = [np.array([r]) for r in per_trajectory_ratios(parts) if math.isfinite(r)]

    def cov(a: np.ndarray) -> float:
        return float(np.mean((a[:, 0] - a[:, 0].mean()) * (a[:, 1] - a[:, 1].mean()))) if len(a) else math.nan

    return {
        "pooled": trajectory_bootstrap(
            vp, compensation_ratio, n_boot, seed, "Var(H)/(Var(K)+Var(V)) pooled", "the compensation ratio"
        ),
        "per_trajectory": trajectory_bootstrap(
            per, mean_of_parts, n_boot, seed, "mean over trajectories of R_i", "the per-trajectory ratio"
        ),
        "cov_KV": trajectory_bootstrap(vp, cov, n_boot, seed, "Cov(K, V) pooled (nats²)", "Cov(K, V)"),
    }


def corr_kv(kv: np.ndarray) -> float:
    """Pearson ``corr(K, V)`` over the rows of ``[n, 2]`` (K, V); NaN when either is constant."""
    a = np.asarray(kv, dtype=np.float64).reshape(-1, 2)
    if a.shape[0] < 2:
        return float("nan")
    sk, sv = float(a[:, 0].std()), float(a[:, 1].std())
    if sk == 0 or sv == 0:
        return float("nan")
    return float(np.mean((a[:, 0] - a[:, 0].mean()) * (a[:, 1] - a[:, 1].mean())) / (sk * sv))


def one_minus(est: Estimate, note: str) -> Estimate:
    """``1 − x`` of an estimate, its CI flipped (percentile CIs commute with monotone maps)."""
    return Estimate(1.0 - est.value, 1.0 - est.high, 1.0 - est.low, est.n, note)


@register
class Compensation:
    """``R``, ``Cov(K, V)``, ``corr(K, V)`` and the unit-free ``1 − R`` of one run."""

    name = "compensation"
    alters = "nothing: the recorded pairing of K and V, summarised by R = Var(H)/(Var(K)+Var(V))"
    order = 10
    columns = (
        Column("R", "null_R"),
        Column("1 − R", "null_one_minus_R"),
        Column("corr(K,V)", "null_corr_KV"),
        Column("mean R_i", "null_R_per_trajectory"),
    )
    claims = (
        ClaimSpec(
            "N-compensate-{tag}",
            "beyond the paper: compensation",
            "K and V compensate: R = Var(H)/(Var(K)+Var(V)) < 1, pooled ({weights}; scale-free)",
            "implied by 'conservation'",
            "{model}/{weights}/null_R",
            "below",
            1.0,
        ),
    )

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        parts = kv_parts(steps)
        comp = compensation(parts, n_boot, seed)
        corr = trajectory_bootstrap(
            valid_pairs(parts), corr_kv, n_boot, seed, "corr(K, V) pooled", "corr(K, V)"
        )
        return NullResult(
            {
                "null_R": comp["pooled"],
                "null_R_per_trajectory": comp["per_trajectory"],
                "null_cov_KV": comp["cov_KV"],
                "null_corr_KV": corr,
                "null_one_minus_R": one_minus(
                    comp["pooled"], "1 − R: share of Var(K)+Var(V) the pairing removes"
                ),
            }
        )
