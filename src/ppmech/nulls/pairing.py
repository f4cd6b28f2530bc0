"""The pairing-shuffle null: ``V`` permuted against ``K`` within each trajectory.

The same values, the pairing destroyed; each trajectory keeps its own mean ``K``
and ``V``. Pooled ``Var(K) + Var(V)`` and pooled mean ``H`` are unchanged by the
shuffle, so the global CV and pooled ``R`` share a p-value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ppmech.errors import PPMechError
from ppmech.nulls.base import (
    F64,
    STATISTIC_NAMES,
    ClaimSpec,
    Column,
    NullResult,
    NullTest,
    flatness,
    kv_parts,
    null_test,
    padded_pairs,
    register,
    valid_pairs,
)
from ppmech.statistics import Estimate, require_trajectories, trajectory_bootstrap


def permute_within_rows(mask: NDArray[np.bool_], n: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """``n`` random permutations of each row's left-packed valid entries, vectorised.

    Args:
        mask: ``[N, T]`` valid entries, packed to the left of each row.

    Returns:
        ``[n, N, T]`` indices into the last axis: each row's first ``n_i`` indices
        are a uniform random permutation of ``0 … n_i − 1``; the rest point at the
        padding, in order.
    """
    keys = rng.random((n, *mask.shape))
    keys[:, ~mask] = 2.0  # padding sorts after every valid entry (keys are in [0, 1))
    return np.argsort(keys, axis=-1, kind="stable")


def pairing_shuffle(
    parts: Sequence[np.ndarray], n_perm: int = 1000, seed: int = 0, chunk: int = 50
) -> dict[str, NullTest]:
    """Observed flatness of ``H`` against ``V`` permuted within each trajectory.

    Args:
        parts: per trajectory ``[n_i, 2]`` (``K``, ``V``); non-finite rows are skipped.
        n_perm: permutations ``B``.
        seed: seeds the :class:`numpy.random.Generator`.
        chunk: permutations evaluated per vectorised batch (bounds memory at
            ``chunk × N × T`` floats).

    Returns:
        A :class:`NullTest` per statistic in :data:`STATISTIC_NAMES`.

    Raises:
        PPMechError: fewer than :data:`~ppmech.statistics.MIN_TRAJECTORIES_FOR_CI`
            trajectories with valid steps, or ``n_perm < 1``.
    """
    if n_perm < 1:
        raise PPMechError(f"n_perm must be at least 1 (got {n_perm})", "use e.g. 1000 permutations")
    k, v, mask = padded_pairs(parts)
    used = int((mask.sum(-1) > 0).sum())
    require_trajectories(used, "the pairing-shuffle null")
    k0, v0 = np.where(mask, k, 0.0), np.where(mask, v, 0.0)
    observed = flatness(k0[None], v0[None], mask)
    rng = np.random.default_rng(seed)
    null: dict[str, list[F64]] = {name: [] for name in STATISTIC_NAMES}
    for start in range(0, n_perm, chunk):
        idx = permute_within_rows(mask, min(chunk, n_perm - start), rng)
        vp = np.take_along_axis(np.broadcast_to(v0, idx.shape), idx, axis=-1)
        stats = flatness(np.broadcast_to(k0, idx.shape), vp, mask)
        for name in STATISTIC_NAMES:
            null[name].append(stats[name])
    out = {}
    for name, what in STATISTIC_NAMES.items():
        obs = float(observed[name][0])
        dist = np.concatenate(null[name])
        out[name] = null_test(what, obs, dist, used, seed)
    return out


def test_estimates(prefix: str, tests: dict[str, NullTest]) -> dict[str, Estimate]:
    """``{prefix}_p`` (on pooled R; the global CV has the same p), the effect sizes and null means."""
    r = tests["R"]
    out = {
        f"{prefix}_p": r.p_estimate(),
        f"{prefix}_null_R": Estimate(
            r.null_mean, r.null_low, r.null_high, r.n_trajectories, "pooled R, V shuffled (2.5–97.5%)"
        ),
        f"{prefix}_effect": Estimate(r.effect_size, n=r.n_trajectories, note="(R − null mean) / null sd"),
    }
    traj = tests["mean_trajectory_cv"]
    out[f"{prefix}_p_trajectory_cv"] = traj.p_estimate()
    out[f"{prefix}_effect_trajectory_cv"] = Estimate(
        traj.effect_size, n=traj.n_trajectories, note="(mean CV(H_i) − null mean) / null sd"
    )
    return out


def pooled_cv_of_h(kv: np.ndarray) -> float:
    """Global CV of ``H = K + V`` over the rows of ``[n, 2]`` (K, V), ddof 0."""
    h = kv[:, 0] + kv[:, 1]
    m = h.mean() if h.size else 0.0
    return float(h.std() / m) if m != 0 else float("nan")


@register
class Pairing:
    """The pairing-shuffle null, its CV of ``H``, and the unit-free ratio of observed to null CV.

    ``cv_ratio = CV(H) / mean null CV(H)``: the shuffle keeps pooled mean ``H``, so the
    ratio equals ``std(H) / std_null(H)``, which ``h → c·h`` (a constant added to ``K``)
    leaves unchanged. Below 1: the pairing makes ``H`` flatter than the same ``K`` and
    ``V`` unpaired. Its CI is the bootstrap CI of the observed CV over the null mean (the
    null mean's own error is Monte Carlo, ``null sd / √B``).
    """

    name = "pairing"
    alters = "permutes V against K within each trajectory (the pairing destroyed, values and means kept)"
    order = 20
    columns = (
        Column("null R", "null_shuffle_null_R"),
        Column("p", "null_shuffle_p", False),
        Column("effect (sd)", "null_shuffle_effect", False),
        Column("null CV", "null_shuffle_null_cv"),
        Column("CV / null CV", "null_cv_ratio"),
    )
    claims = (
        ClaimSpec(
            "N-shuffle-{tag}",
            "beyond the paper: pairing null",
            "H is flatter than the same K and V unpaired: V permuted within trajectories, one-sided "
            "p on pooled R (= p on the global CV) ({weights})",
            "implied by 'conservation'",
            "{model}/{weights}/null_shuffle_p",
            "p_below",
            0.05,
        ),
    )

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        parts = kv_parts(steps)
        tests = pairing_shuffle(parts, n_perm, seed)
        out = test_estimates("null_shuffle", tests)
        cv = tests["global_cv"]
        out["null_shuffle_null_cv"] = Estimate(
            cv.null_mean,
            cv.null_low,
            cv.null_high,
            cv.n_trajectories,
            "global CV of H, V shuffled (2.5–97.5%)",
        )
        observed = trajectory_bootstrap(valid_pairs(parts), pooled_cv_of_h, n_boot, seed, "global CV of H")
        m = cv.null_mean
        out["null_cv_ratio"] = Estimate(
            observed.value / m,
            observed.low / m,
            observed.high / m,
            observed.n,
            "CV(H) / mean CV(H) with V shuffled (= std H / null std H; unit-free)",
        )
        return NullResult(out)
