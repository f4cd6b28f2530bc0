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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ppmech.errors import PPMechError
from ppmech.mechanics import turning_angles
from ppmech.statistics import Estimate, require_trajectories, trajectory_bootstrap

F64 = NDArray[np.float64]

MIN_STEPS = 3
"""A per-trajectory variance ratio needs at least this many valid steps."""

SCALES: tuple[float, ...] = (0.5, 1.0, 2.0, 10.0)
"""The rescalings ``h → c·h`` of the scale null."""

#: Relative tolerance under which a permuted statistic counts as equal to the observed one
#: (summation order differs between permutations; equal values must count as "as extreme").
TIE_RTOL = 1e-10


# --------------------------------------------------------------------------- inputs


def valid_pairs(parts: Sequence[np.ndarray]) -> list[F64]:
    """Per trajectory, the ``[n_i, 2]`` rows of (``K``, ``V``) where both are finite.

    Args:
        parts: per trajectory ``[n_i, 2]`` arrays of (``K``, ``V``) in step order
            (e.g. :func:`ppmech.claims.analyses.split_by_trajectory` of ``["K", "V"]``).
    """
    out = []
    for p in parts:
        a = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        out.append(a[np.isfinite(a).all(axis=1)])
    return out


def _mean(a: np.ndarray) -> float:
    """Mean of one-value-per-trajectory parts (already finite by construction)."""
    return float(np.mean(a)) if np.size(a) else float("nan")


# --------------------------------------------------------------------------- compensation ratio


def compensation_ratio(kv: np.ndarray) -> float:
    """``Var(K + V) / (Var(K) + Var(V))`` over the rows of ``[n, 2]`` (K, V), ddof 0.

    NaN with fewer than 2 rows or when ``K`` and ``V`` are both constant.
    """
    a = np.asarray(kv, dtype=np.float64).reshape(-1, 2)
    if a.shape[0] < 2:
        return float("nan")
    den = float(a[:, 0].var() + a[:, 1].var())
    return float((a[:, 0] + a[:, 1]).var() / den) if den > 0 else float("nan")


def per_trajectory_ratios(parts: Sequence[np.ndarray]) -> F64:
    """``R_i`` of every trajectory with at least :data:`MIN_STEPS` valid steps (others NaN)."""
    return np.array(
        [compensation_ratio(p) if len(p) >= MIN_STEPS else float("nan") for p in valid_pairs(parts)],
        dtype=np.float64,
    )


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
            per, _mean, n_boot, seed, "mean over trajectories of R_i", "the per-trajectory ratio"
        ),
        "cov_KV": trajectory_bootstrap(vp, cov, n_boot, seed, "Cov(K, V) pooled (nats²)", "Cov(K, V)"),
    }


# --------------------------------------------------------------------------- pairing-shuffle null


@dataclass(frozen=True)
class NullTest:
    """An observed statistic against its permutation distribution.

    Attributes:
        statistic: what was compared, in words.
        observed: the statistic on the recorded pairing.
        null_mean, null_sd: mean and standard deviation (ddof 1) of the permuted statistics.
        null_low, null_high: their 2.5% and 97.5% quantiles.
        p_value: one-sided ``(1 + #{null ≤ observed}) / (1 + B)`` (small = flatter than chance).
        effect_size: ``(observed − null_mean) / null_sd`` (negative = flatter; NaN if sd is 0).
        n_permutations: ``B``.
        n_trajectories: trajectories that entered.
        seed: the permutation seed.
    """

    statistic: str
    observed: float
    null_mean: float
    null_sd: float
    null_low: float
    null_high: float
    p_value: float
    effect_size: float
    n_permutations: int
    n_trajectories: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }

    def p_estimate(self) -> Estimate:
        """The p-value as an :class:`Estimate` without a CI (its error is Monte Carlo only)."""
        return Estimate(self.p_value, n=self.n_trajectories, note=f"permutation p of {self.statistic}")


def padded_pairs(parts: Sequence[np.ndarray]) -> tuple[F64, F64, NDArray[np.bool_]]:
    """Valid (``K``, ``V``) steps packed to the left of ``[N, T]`` arrays (NaN after).

    Returns:
        ``K``, ``V`` and ``mask`` (True on valid steps), each ``[N, T]`` with ``T``
        the most valid steps of any trajectory.
    """
    vp = valid_pairs(parts)
    width = max((len(p) for p in vp), default=0)
    k = np.full((len(vp), width), np.nan)
    v = np.full((len(vp), width), np.nan)
    for i, p in enumerate(vp):
        k[i, : len(p)] = p[:, 0]
        v[i, : len(p)] = p[:, 1]
    return k, v, np.isfinite(k)


def _flatness(k: F64, v: F64, mask: NDArray[np.bool_]) -> dict[str, F64]:
    """Pooled and per-trajectory flatness statistics of ``H = K + V`` for ``[B, N, T]`` pairings.

    Every pairing ``b`` must hold the same values per trajectory (``v[b]`` a
    within-row permutation of ``v[0]``); ``k``/``v`` hold zeros where ``mask`` is
    False. Returns ``[B]`` arrays:
    ``global_cv``, ``R``, ``mean_trajectory_cv``, ``mean_trajectory_R``.
    """
    m = mask.astype(np.float64)
    n_i = m.sum(-1)  # [N]
    n = n_i.sum()
    # Centre by the pooled means (unchanged by any within-trajectory permutation) so that
    # the variances below do not cancel large squares. Pooled means and variances of K
    # and V are the same for every pairing: read them off the first.
    mk = float((k[0] * m).sum() / n)
    mv = float((v[0] * m).sum() / n)
    kc, vc = (k - mk) * m, (v - mv) * m
    hc = kc + vc
    var_h = (hc * hc).sum((-1, -2)) / n - (hc.sum((-1, -2)) / n) ** 2
    var_k = float((kc[0] * kc[0]).sum() / n - (kc[0].sum() / n) ** 2)
    var_v = float((vc[0] * vc[0]).sum() / n - (vc[0].sum() / n) ** 2)
    mean_h = mk + mv
    den = var_k + var_v
    # Per trajectory (identical for every pairing: sums of K and V per row are fixed).
    ok = n_i >= MIN_STEPS
    safe = np.where(n_i > 0, n_i, 1.0)
    row_h = hc.sum(-1) / safe  # [B, N] centred means
    row_var_h = (hc * hc).sum(-1) / safe - row_h**2
    row_mean_h = row_h + mean_h
    row_kc = kc.sum(-1) / safe
    row_vc = vc.sum(-1) / safe
    row_var_k = (kc * kc).sum(-1) / safe - row_kc**2
    row_var_v = (vc * vc).sum(-1) / safe - row_vc**2
    row_den = row_var_k + row_var_v
    cv_ok = ok & (row_mean_h != 0)
    r_ok = ok & (row_den > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_cv = np.sqrt(np.maximum(row_var_h, 0.0)) / row_mean_h
        row_r = np.maximum(row_var_h, 0.0) / row_den
    nan = np.full(var_h.shape, np.nan)

    def mean_over(ok_b: NDArray[np.bool_], values: F64) -> F64:
        count = ok_b.sum(-1)  # [B]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.where(ok_b, values, 0.0).sum(-1) / np.maximum(count, 1), np.nan)

    return {
        "global_cv": np.sqrt(np.maximum(var_h, 0.0)) / mean_h if mean_h != 0 else nan,
        "R": np.maximum(var_h, 0.0) / den if den > 0 else nan,
        "mean_trajectory_cv": mean_over(np.broadcast_to(cv_ok, row_cv.shape), row_cv),
        "mean_trajectory_R": mean_over(np.broadcast_to(r_ok, row_r.shape), row_r),
    }


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


STATISTIC_NAMES = {
    "global_cv": "global CV of H (pooled)",
    "R": "pooled compensation ratio R",
    "mean_trajectory_cv": "mean over trajectories of CV(H_i)",
    "mean_trajectory_R": "mean over trajectories of R_i",
}


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
    observed = _flatness(k0[None], v0[None], mask)
    rng = np.random.default_rng(seed)
    null: dict[str, list[F64]] = {name: [] for name in STATISTIC_NAMES}
    for start in range(0, n_perm, chunk):
        idx = permute_within_rows(mask, min(chunk, n_perm - start), rng)
        vp = np.take_along_axis(np.broadcast_to(v0, idx.shape), idx, axis=-1)
        stats = _flatness(np.broadcast_to(k0, idx.shape), vp, mask)
        for name in STATISTIC_NAMES:
            null[name].append(stats[name])
    out = {}
    for name, what in STATISTIC_NAMES.items():
        obs = float(observed[name][0])
        dist = np.concatenate(null[name])
        out[name] = _null_test(what, obs, dist, used, seed)
    return out


def _null_test(what: str, observed: float, dist: F64, n_traj: int, seed: int) -> NullTest:
    if not math.isfinite(observed):
        nan = float("nan")
        return NullTest(what, nan, nan, nan, nan, nan, nan, nan, len(dist), n_traj, seed)
    d = dist[np.isfinite(dist)]
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    mean = float(d.mean()) if d.size else float("nan")
    tol = TIE_RTOL * max(abs(observed), 1e-300)
    p = (1 + int(np.sum(d <= observed + tol))) / (1 + d.size)
    effect = (observed - mean) / sd if sd > 0 else float("nan")
    lo, hi = (float(q) for q in np.percentile(d, [2.5, 97.5])) if d.size else (math.nan, math.nan)
    return NullTest(what, observed, mean, sd, lo, hi, float(p), effect, len(dist), n_traj, seed)


# --------------------------------------------------------------------------- scale null


def scale_table(parts: Sequence[np.ndarray], scales: Sequence[float] = SCALES) -> pd.DataFrame:
    """The headline statistics with ``h`` rescaled by each ``c`` (``K → K + 2 ln c``).

    Args:
        parts: per trajectory ``[n_i, 2]`` (``K``, ``V``); non-finite rows are skipped.

    Returns:
        One row per ``c``: ``c``, ``shift`` (``2 ln c``), ``mean_H``, ``std_H``,
        ``global_cv``, ``mean_trajectory_cv``, ``R`` (the last two per
        :func:`pairing_shuffle`'s definitions). ``std_H`` and ``R`` are the same on
        every row; the CV is not. The attribute ``attrs["c_zero_mean"]`` is the
        ``c`` at which mean ``H`` is 0 and the CV is unbounded, ``exp(−mean H / 2)``.
    """
    k, v, mask = padded_pairs(parts)
    rows = []
    mean_h = float("nan")
    for c in scales:
        if not c > 0:
            raise PPMechError(f"a scale must be positive (got {c})", "use e.g. 0.5, 1, 2, 10")
        shift = 2.0 * math.log(c)
        ks = np.where(mask, k + shift, 0.0)
        stats = _flatness(ks[None], np.where(mask, v, 0.0)[None], mask)
        h = (k + shift + v)[mask]
        if c == 1.0:
            mean_h = float(h.mean())
        rows.append(
            {
                "c": float(c),
                "shift": shift,
                "mean_H": float(h.mean()),
                "std_H": float(h.std()),
                "global_cv": float(stats["global_cv"][0]),
                "mean_trajectory_cv": float(stats["mean_trajectory_cv"][0]),
                "R": float(stats["R"][0]),
            }
        )
    frame = pd.DataFrame(rows)
    if not math.isfinite(mean_h):
        h = (k + v)[mask]
        mean_h = float(h.mean()) if h.size else float("nan")
    frame.attrs["c_zero_mean"] = math.exp(-mean_h / 2) if math.isfinite(mean_h) else float("nan")
    return frame


def scale_controls(
    parts: Sequence[np.ndarray], scales: Sequence[float] = SCALES, n_boot: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Bootstrap CIs for the scale null.

    Returns:
        ``cv_c{c:g}`` (global CV of ``H`` with ``h → c·h``) for each ``c``,
        ``max_cv`` (the largest of them: the CV a unit choice within ``scales`` can
        reach) and ``std_H`` (scale-free, nats).
    """
    vp = valid_pairs(parts)

    def cv_at(shift: float) -> Any:
        def f(a: np.ndarray) -> float:
            h = a[:, 0] + a[:, 1] + shift
            m = h.mean() if h.size else 0.0
            return float(h.std() / m) if m != 0 else float("nan")

        return f

    def max_cv(a: np.ndarray) -> float:
        vals = [cv_at(2 * math.log(c))(a) for c in scales]
        return float(max(vals)) if all(math.isfinite(x) for x in vals) else float("nan")

    out = {
        f"cv_c{c:g}": trajectory_bootstrap(
            vp,
            cv_at(2 * math.log(c)),
            n_boot,
            seed,
            f"global CV of H with h scaled by {c:g}",
            "the scale null",
        )
        for c in scales
    }
    out["max_cv"] = trajectory_bootstrap(
        vp, max_cv, n_boot, seed, f"largest global CV over c in {list(scales)}", "the scale null"
    )
    out["std_H"] = trajectory_bootstrap(
        vp, lambda a: float((a[:, 0] + a[:, 1]).std()), n_boot, seed, "std(H) pooled (nats)", "std(H)"
    )
    return out


# --------------------------------------------------------------------------- token and position identity


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


FACTORS = {
    "token": "produced token x_t",
    "input_token": "input token x_{t−1} (the token that moved h_{t−1} to h_t)",
    "position": "step t",
    "token+position": "produced token and step t, additive",
    "all": "produced token, input token and step t, additive",
}
"""Factors whose held-out ``R²`` of ``K`` is measured; ``K`` is residualised on ``all``."""

FACTOR_COLUMNS = {
    "token+position": ["token", "position"],
    "all": ["token", "input_token", "position"],
}


def identity_frame(steps: pd.DataFrame) -> pd.DataFrame:
    """Valid steps of a ``steps.parquet`` frame with the factors of :data:`FACTORS`.

    Returns:
        Columns ``trajectory``, ``step``, ``token``, ``input_token`` (``-1`` where
        the previous step is not recorded), ``position``, ``K``, ``V``; only
        steps with finite ``K`` and ``V``, ordered by trajectory and step.
    """
    s = steps.sort_values(["trajectory", "step"], kind="stable").reset_index(drop=True)
    prev = s.groupby("trajectory")["token_id"].shift(1)
    contiguous = s.groupby("trajectory")["step"].diff() == 1
    frame = pd.DataFrame(
        {
            "trajectory": s["trajectory"].to_numpy(),
            "step": s["step"].to_numpy(),
            "token": s["token_id"].to_numpy(np.int64),
            "input_token": np.where(contiguous, prev.fillna(-1), -1).astype(np.int64),
            "position": s["step"].to_numpy(np.int64),
            "K": s["K"].astype("float64").to_numpy(na_value=np.nan),
            "V": s["V"].astype("float64").to_numpy(na_value=np.nan),
        }
    )
    ok = np.isfinite(frame["K"].to_numpy()) & np.isfinite(frame["V"].to_numpy())
    return frame[ok].reset_index(drop=True)


@dataclass
class IdentityControls:
    """What :func:`identity_controls` measured.

    Attributes:
        r2: held-out ``R²`` of ``K`` per factor of :data:`FACTORS` (trajectory-bootstrap CI
            with the fits held fixed).
        residual: conservation statistics on ``H' = K_resid + V + mean K`` with
            ``K_resid`` the residual of the ``all`` fit (produced token, input token, step):
            ``R``, ``global_cv``
            and ``mean_trajectory_cv``, as :class:`Estimate`.
        residual_null: :func:`pairing_shuffle` on ``(K_resid + mean K, V)``.
        n_steps: valid steps used.
    """

    r2: dict[str, Estimate]
    residual: dict[str, Estimate]
    residual_null: dict[str, NullTest]
    n_steps: int


def identity_controls(
    frame: pd.DataFrame,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    iterations: int = 20,
) -> IdentityControls:
    """How much of ``K`` token and position identity explain, and conservation without them.

    ``K`` is residualised on all three factors at once (produced token, input token,
    step): the velocity ``h_t − h_{t−1}`` is made at the position of the input token
    ``x_{t−1}``, so "which token" can mean either, and the control removes both.

    Every prediction is *cross-fitted*: whole trajectories are split into two
    halves (seeded), the fixed effects are fitted on one half and predict the
    other, and vice versa. In-sample group means would explain every token seen
    once perfectly and flatten ``K`` by construction.

    The residualised energy is ``H' = (K − K̂) + V + mean(K)``: removing the
    token/position part of ``K`` and adding its mean back keeps mean ``H'`` equal
    to mean ``H``, so the CV of ``H'`` is comparable with the CV of ``H`` (the CV
    depends on the mean; see the scale null). ``R`` and the shuffle test do not
    depend on that choice.

    Args:
        frame: :func:`identity_frame` output.
    """
    traj = frame["trajectory"].to_numpy()
    n_traj = int(np.unique(traj).size)
    require_trajectories(n_traj, "the token/position control")
    folds = trajectory_folds(traj, 2, seed)
    k = frame["K"].to_numpy(np.float64)
    v = frame["V"].to_numpy(np.float64)
    cuts = np.flatnonzero(np.diff(traj)) + 1

    def factors(name: str) -> list[NDArray[np.int64]]:
        cols = FACTOR_COLUMNS.get(name, [name])
        return [frame[c].to_numpy(np.int64) for c in cols]

    r2: dict[str, Estimate] = {}
    preds: dict[str, F64] = {}
    for name, what in FACTORS.items():
        pred = cross_fitted_prediction(k, factors(name), folds, iterations)
        preds[name] = pred
        parts = np.split(np.column_stack([k, pred]), cuts)
        r2[name] = trajectory_bootstrap(
            parts, lambda a: r_squared(a[:, 0], a[:, 1]), n_boot, seed, f"held-out R² of K on {what}", "R²"
        )
    k_res = k - preds["all"] + k.mean()
    res_parts = np.split(np.column_stack([k_res, v]), cuts)
    h_parts = [p[:, 0] + p[:, 1] for p in res_parts]

    def pooled(a: np.ndarray) -> float:
        return float(a.std() / a.mean()) if a.size and a.mean() != 0 else float("nan")

    per_cv = [np.array([pooled(h)]) for h in h_parts if h.size >= MIN_STEPS]
    residual = {
        "R": trajectory_bootstrap(
            res_parts,
            compensation_ratio,
            n_boot,
            seed,
            "R with K residualised on token, input token, step",
            "R'",
        ),
        "global_cv": trajectory_bootstrap(
            h_parts, pooled, n_boot, seed, "global CV of H' = K_resid + V + mean K", "CV(H')"
        ),
        "mean_trajectory_cv": trajectory_bootstrap(
            per_cv, _mean, n_boot, seed, "mean over trajectories of CV(H'_i)", "CV(H')"
        ),
    }
    return IdentityControls(
        r2=r2,
        residual=residual,
        residual_null=pairing_shuffle(res_parts, n_perm, seed),
        n_steps=int(k.size),
    )


# --------------------------------------------------------------------------- curvature


def trajectory_curvatures(hidden: np.ndarray) -> F64:
    """Mean turning angle (degrees) of each trajectory of ``[N, T, d]`` states.

    Rows of NaN (past a trajectory's end) are dropped before the angles are taken,
    so a padded trajectory is measured on its recorded states only. A trajectory
    with no defined angle gives NaN.
    """
    out = np.full(len(hidden), np.nan)
    for i in range(len(hidden)):
        h = np.asarray(hidden[i], dtype=np.float64)
        h = h[np.isfinite(h).all(-1)]
        a = turning_angles(h)
        a = a[np.isfinite(a)]
        if a.size:
            out[i] = float(np.degrees(a).mean())
    return out


def curvature(hidden: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Hosseini & Fedorenko's curvature of recorded trajectories, with a bootstrap CI.

    Args:
        hidden: ``[N, T, d]`` states ``h_t`` (e.g. ``Run.hidden()``).

    Returns:
        ``mean_deg``: mean over trajectories of the per-trajectory mean angle
        between consecutive velocities, in degrees (90° is what independent random
        directions in high dimension give; 0° a straight line).
    """
    per = trajectory_curvatures(hidden)
    parts = [np.array([c]) for c in per if math.isfinite(c)]
    return {
        "mean_deg": trajectory_bootstrap(
            parts, _mean, n_boot, seed, "mean angle between consecutive velocities (°)", "the curvature"
        )
    }
