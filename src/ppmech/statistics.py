"""The paper's energy statistics, in float64 (Tables 1, 2 and 4).

Inputs are per-step arrays with a trajectory label. Only *valid* steps enter:
those where ``H_t`` is finite. That excludes step 0 (no velocity, H undefined)
and zero-velocity steps (``K = -inf``), which are counted and reported as
``n_zero_velocity`` rather than silently turned into NaN.

Definitions (``H`` pooled over valid steps; ``H_i`` the valid steps of
trajectory ``i``; ``std`` has ddof 0):

* ``global_cv = std(H) / mean(H)``
* ``mean_trajectory_cv = mean_i [ std(H_i) / mean(H_i) ]`` (trajectories with >= 2 valid steps)
* ``trajectory_mean_cv = std_i(mean(H_i)) / mean_i(mean(H_i))``
* ``mean_energy = mean(H)``, ``mean_K``, ``mean_V`` over the same steps, ``kv_ratio = mean_K / mean_V``
* ``ΔH_t = H_{t+1} - H_t`` for consecutive valid steps within a trajectory;
  ``mean_dH = mean(ΔH)``, ``mean_abs_dH = mean(|ΔH|)``, ``drift = ΣΔH / Σ|ΔH|``
* 95% CIs for ``global_cv`` and ``mean_energy``: percentile bootstrap over
  trajectories (resampled with replacement), ``n_boot`` replicates, seeded.

Every percentile CI in ppmech is taken by :func:`percentile_ci` (with its
minimum-replicates rule, :func:`min_replicates`) from replicates drawn by
:func:`resample_trajectories`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ppmech.errors import PPMechError
from ppmech.provenance import json_safe

F64 = NDArray[np.float64]

FORMULAS: dict[str, str] = {
    "global_cv": "std(H) / mean(H) over all valid steps pooled (ddof 0)",
    "mean_trajectory_cv": "mean over trajectories of std(H_i) / mean(H_i)",
    "trajectory_mean_cv": "std over trajectories of mean(H_i), divided by their mean",
    "mean_energy": "mean(H) over all valid steps",
    "mean_K": "mean(K) over the same steps",
    "mean_V": "mean(V) over the same steps",
    "kv_ratio": "mean_K / mean_V",
    "mean_dH": "mean of ΔH_t = H_{t+1} - H_t within trajectories",
    "mean_abs_dH": "mean of |ΔH_t|",
    "drift": "ΣΔH_t / Σ|ΔH_t|",
}


def cv(values: ArrayLike) -> float:
    """Coefficient of variation ``std / mean`` (ddof 0) in float64.

    Raises:
        ValueError: empty input, non-finite values, or a zero mean.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cv of an empty array")
    if not np.all(np.isfinite(x)):
        raise ValueError("cv of non-finite values")
    mean = float(x.mean())
    if mean == 0.0:
        raise ValueError("cv undefined: mean is zero")
    return float(x.std() / mean)


# --------------------------------------------------------------------------- estimates with a CI

MIN_TRAJECTORIES_FOR_CI = 5
"""Fewer independent trajectories than this give no meaningful bootstrap CI."""


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its 95% bootstrap CI.

    Attributes:
        value: the point estimate on all data.
        low, high: percentile bootstrap CI (``NaN`` when not computed).
        n: number of independent units (trajectories) behind it.
        note: how it was computed, in words.
    """

    value: float
    low: float = float("nan")
    high: float = float("nan")
    n: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(json_safe(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        def f(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            value=f(d.get("value")),
            low=f(d.get("low")),
            high=f(d.get("high")),
            n=int(d.get("n", 0)),
            note=str(d.get("note", "")),
        )

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def require_trajectories(n: int, what: str) -> None:
    """Refuse a CI over fewer than :data:`MIN_TRAJECTORIES_FOR_CI` trajectories."""
    if n < MIN_TRAJECTORIES_FOR_CI:
        raise PPMechError(
            f"{what} needs at least {MIN_TRAJECTORIES_FOR_CI} trajectories for a confidence "
            f"interval (got {n})",
            f"record at least {MIN_TRAJECTORIES_FOR_CI} prompts (e.g. `ppmech measure --prompts 100`)",
        )


def resample_trajectories(n: int, n_boot: int, seed: int) -> NDArray[np.int64]:
    """The one bootstrap resampler of ppmech: trajectory indices drawn with replacement.

    Every CI over trajectories in ppmech (:func:`trajectory_bootstrap`, and the
    vectorised moments in :func:`energy_statistics`) resamples through this, so
    one seed gives the same replicates everywhere.

    Returns:
        ``[n_boot, n]`` indices into ``range(n)``; row ``b`` is replicate ``b``.
    """
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


#: The percentiles of a 95% percentile-bootstrap CI.
CI_PERCENTILES = (2.5, 97.5)


def min_replicates(n_boot: int) -> int:
    """Fewest finite replicates a percentile CI needs: ``max(10, n_boot // 2)``.

    Fewer than 10 cannot place a 2.5% tail; and when more than half the drawn
    replicates are undefined (a resample with no valid step, a zero mean), the
    finite ones are no longer a sample of the statistic's distribution.
    """
    return max(10, n_boot // 2)


def percentile_ci(replicates: ArrayLike, n_boot: int) -> tuple[float, float]:
    """The 95% percentile CI of bootstrap ``replicates``: the one CI rule of ppmech.

    Non-finite replicates are dropped; with fewer than :func:`min_replicates` left the
    CI is ``(nan, nan)`` (not computed), never a CI from a handful of values.

    Args:
        replicates: ``[n]`` the statistic on each bootstrap replicate (any order).
        n_boot: replicates drawn (the share that must be finite is counted against it).

    Returns:
        ``(low, high)`` as floats, in the statistic's units.
    """
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    reps = reps[np.isfinite(reps)]
    if reps.size < min_replicates(n_boot):
        return math.nan, math.nan
    low, high = np.percentile(reps, CI_PERCENTILES)
    return float(low), float(high)


def trajectory_bootstrap(
    parts: Sequence[np.ndarray],
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
    note: str = "",
    what: str = "this statistic",
) -> Estimate:
    """Point estimate and percentile 95% CI of ``statistic`` over concatenated parts.

    Args:
        parts: one array per trajectory (rows are steps; any trailing shape).
        statistic: maps the concatenation of (resampled) parts to a float.
        n_boot: bootstrap replicates; trajectories are resampled with replacement.
        seed: RNG seed.

    Raises:
        PPMechError: fewer than :data:`MIN_TRAJECTORIES_FOR_CI` parts.
    """
    require_trajectories(len(parts), what)
    value = float(statistic(np.concatenate(list(parts), axis=0)))
    reps = np.empty(n_boot, dtype=np.float64)
    for b, pick in enumerate(resample_trajectories(len(parts), n_boot, seed)):
        reps[b] = statistic(np.concatenate([parts[i] for i in pick], axis=0))
    low, high = percentile_ci(reps, n_boot)
    return Estimate(value, low, high, len(parts), note)


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) interval for a binomial proportion ``successes / trials``.

    Raises:
        PPMechError: ``trials < 1`` or ``successes`` outside ``[0, trials]``.
    """
    from scipy import stats

    if trials < 1 or not 0 <= successes <= trials:
        raise PPMechError(
            f"a rate needs 0 <= successes <= trials and trials >= 1 (got {successes}/{trials})",
            "count the alarms on at least one text",
        )
    a = (1 - level) / 2
    low = 0.0 if successes == 0 else float(stats.beta.ppf(a, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - a, successes + 1, trials - successes))
    return low, high


def rate_estimate(successes: int, trials: int, level: float = 0.95, note: str = "") -> Estimate:
    """A measured rate with its Clopper–Pearson interval (not a bootstrap), as an :class:`Estimate`."""
    low, high = binomial_interval(successes, trials, level)
    return Estimate(successes / trials, low, high, trials, note or "Clopper–Pearson interval")


@dataclass(frozen=True)
class EnergyStatistics:
    """Headline statistics of one run. See the module docstring for formulas."""

    n_trajectories: int
    n_steps: int
    n_valid: int
    n_zero_velocity: int
    global_cv: float
    mean_trajectory_cv: float
    trajectory_mean_cv: float
    mean_energy: float
    mean_K: float
    mean_V: float
    kv_ratio: float
    mean_dH: float
    mean_abs_dH: float
    drift: float
    global_cv_ci: Estimate | None
    mean_energy_ci: Estimate | None
    n_boot: int
    bootstrap_seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become ``None``."""
        return json_safe(asdict(self))


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def energy_statistics(
    trajectory: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
) -> EnergyStatistics:
    """Compute :class:`EnergyStatistics` from per-step arrays in step order.

    Args:
        trajectory: trajectory label of each step, shape ``[N]``; steps of one
            trajectory must be contiguous and in step order.
        k: ``K_t`` (NaN at step 0, ``-inf`` at zero velocity), ``[N]``.
        v: ``V_t``, ``[N]``.
        n_boot: bootstrap replicates (0 disables the CIs; fewer than
            :func:`min_replicates` finite ones leave them NaN).
        seed: bootstrap seed.

    Raises:
        ValueError: no valid steps at all.
    """
    traj = np.asarray(trajectory)
    kk = np.asarray(k, dtype=np.float64)
    vv = np.asarray(v, dtype=np.float64)
    h = kk + vv
    valid = np.isfinite(h)
    n_zero = int(np.sum(np.isneginf(kk) & np.isfinite(vv)))
    if not valid.any():
        raise ValueError("no valid steps: every step is step 0 or has zero velocity")

    labels, first = np.unique(traj, return_index=True)
    order = labels[np.argsort(first)]
    per_mean, per_cv, counts, sums, sumsq = [], [], [], [], []
    dh_parts = []
    for label in order:
        sel = traj == label
        hv = h[sel]
        ok = np.isfinite(hv)
        hi = hv[ok]
        counts.append(hi.size)
        sums.append(hi.sum())
        sumsq.append(np.square(hi).sum())
        if hi.size >= 1:
            per_mean.append(hi.mean())
        if hi.size >= 2 and hi.mean() != 0:
            per_cv.append(hi.std() / hi.mean())
        both = ok[:-1] & ok[1:]
        dh_parts.append((hv[1:] - hv[:-1])[both])
    dh = np.concatenate(dh_parts) if dh_parts else np.zeros(0)
    hv_all = h[valid]
    means = np.asarray(per_mean)

    global_cv = _ratio(float(hv_all.std()), float(hv_all.mean()))
    mean_energy = float(hv_all.mean())
    ci_cv: Estimate | None = None
    ci_mean: Estimate | None = None
    if n_boot > 0 and len(order) >= 2:
        # The trajectory bootstrap of pooled mean and CV (the same replicates as
        # trajectory_bootstrap), vectorised through per-trajectory sufficient statistics
        # (count, sum, sum of squares) weighted by how often each trajectory was drawn.
        n = len(order)
        picks = resample_trajectories(n, n_boot, seed)
        weights = np.zeros((n_boot, n), dtype=np.float64)
        np.add.at(weights, (np.arange(n_boot)[:, None], picks), 1.0)
        c = weights @ np.asarray(counts, dtype=np.float64)
        s = weights @ np.asarray(sums)
        ss = weights @ np.asarray(sumsq)
        ok = c > 0
        m = s[ok] / c[ok]
        var = np.maximum(ss[ok] / c[ok] - m * m, 0.0)
        boot_cv = np.sqrt(var) / m
        note = f"percentile bootstrap over trajectories, {n_boot} replicates"
        ci_cv = Estimate(global_cv, *percentile_ci(boot_cv, n_boot), n, note)
        ci_mean = Estimate(mean_energy, *percentile_ci(m, n_boot), n, note)

    mean_k = float(kk[valid].mean())
    mean_v = float(vv[valid].mean())
    abs_sum = float(np.abs(dh).sum())
    return EnergyStatistics(
        n_trajectories=len(order),
        n_steps=int(h.size),
        n_valid=int(valid.sum()),
        n_zero_velocity=n_zero,
        global_cv=global_cv,
        mean_trajectory_cv=float(np.mean(per_cv)) if per_cv else float("nan"),
        trajectory_mean_cv=_ratio(float(means.std()), float(means.mean())),
        mean_energy=mean_energy,
        mean_K=mean_k,
        mean_V=mean_v,
        kv_ratio=_ratio(mean_k, mean_v),
        mean_dH=float(dh.mean()) if dh.size else float("nan"),
        mean_abs_dH=float(np.abs(dh).mean()) if dh.size else float("nan"),
        drift=_ratio(float(dh.sum()), abs_sum) if dh.size else float("nan"),
        global_cv_ci=ci_cv,
        mean_energy_ci=ci_mean,
        n_boot=n_boot,
        bootstrap_seed=seed,
    )


def statistics_from_steps(steps: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> EnergyStatistics:
    """:func:`energy_statistics` over a ``steps.parquet`` frame (null K/V read as NaN)."""
    ordered = steps.sort_values(["trajectory", "step"], kind="stable")
    return energy_statistics(
        ordered["trajectory"].to_numpy(),
        ordered["K"].astype("float64").to_numpy(na_value=np.nan),
        ordered["V"].astype("float64").to_numpy(na_value=np.nan),
        n_boot=n_boot,
        seed=seed,
    )
