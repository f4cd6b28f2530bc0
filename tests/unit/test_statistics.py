"""Statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ppmech.errors import PPMechError
from ppmech.statistics import (
    binomial_interval,
    cv,
    energy_statistics,
    min_replicates,
    percentile_ci,
    rate_estimate,
    resample_trajectories,
    statistics_from_steps,
    trajectory_bootstrap,
)


def _steps(h_by_traj: list[list[float]], v: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays with step 0 undefined and H_t given (K = H - V)."""
    traj, k, vv = [], [], []
    for i, hs in enumerate(h_by_traj):
        traj += [i] * (len(hs) + 1)
        k += [np.nan] + [h - v for h in hs]
        vv += [v] * (len(hs) + 1)
    return np.array(traj), np.array(k), np.array(vv)


def test_cv_by_hand() -> None:
    assert cv([2.0, 4.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        cv([])
    with pytest.raises(ValueError):
        cv([1.0, np.inf])


def test_constant_energy_has_zero_cv_and_no_drift() -> None:
    stats = energy_statistics(*_steps([[5.0, 5.0, 5.0], [5.0, 5.0]]), n_boot=50)
    assert stats.global_cv == 0.0
    assert stats.mean_trajectory_cv == 0.0
    assert stats.trajectory_mean_cv == 0.0
    assert stats.mean_abs_dH == 0.0
    assert stats.mean_energy == 5.0
    assert stats.global_cv_ci is not None and stats.global_cv_ci.high == 0.0


def test_all_statistics_by_hand() -> None:
    # trajectory 0: H = 1, 3 ; trajectory 1: H = 2, 2, 5 ; V = 1 everywhere
    stats = energy_statistics(*_steps([[1.0, 3.0], [2.0, 2.0, 5.0]]), n_boot=0)
    pooled = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    assert stats.global_cv == pytest.approx(pooled.std() / pooled.mean())
    cv0 = np.std([1.0, 3.0]) / 2.0
    cv1 = np.std([2.0, 2.0, 5.0]) / 3.0
    assert stats.mean_trajectory_cv == pytest.approx((cv0 + cv1) / 2)
    means = np.array([2.0, 3.0])
    assert stats.trajectory_mean_cv == pytest.approx(means.std() / means.mean())
    assert stats.mean_energy == pytest.approx(2.6)
    assert stats.mean_V == 1.0
    assert stats.mean_K == pytest.approx(1.6)
    assert stats.kv_ratio == pytest.approx(1.6)
    # ΔH: +2 ; 0, +3
    assert stats.mean_dH == pytest.approx(5 / 3)
    assert stats.mean_abs_dH == pytest.approx(5 / 3)
    assert stats.drift == pytest.approx(1.0)
    assert stats.n_valid == 5 and stats.n_steps == 7 and stats.n_trajectories == 2
    assert stats.global_cv_ci is None  # n_boot = 0


def test_zero_velocity_counted_and_excluded() -> None:
    traj = np.array([0, 0, 0, 0])
    k = np.array([np.nan, 2.0, -np.inf, 4.0])
    v = np.array([1.0, 1.0, 1.0, 1.0])
    stats = energy_statistics(traj, k, v, n_boot=0)
    assert stats.n_zero_velocity == 1
    assert stats.n_valid == 2
    assert stats.mean_energy == 4.0
    # ΔH only across consecutive valid steps: steps 1 and 3 are not consecutive.
    assert math.isnan(stats.mean_dH)
    assert all(
        value is None or math.isfinite(value)
        for value in stats.to_dict().values()
        if isinstance(value, float)
    )


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    hs = [list(7 + rng.normal(0, 0.5, 20)) for _ in range(30)]
    a = energy_statistics(*_steps(hs), n_boot=500, seed=3)
    b = energy_statistics(*_steps(hs), n_boot=500, seed=3)
    assert a.global_cv_ci == b.global_cv_ci
    assert a.global_cv_ci is not None and a.mean_energy_ci is not None
    assert a.global_cv_ci.low < a.global_cv < a.global_cv_ci.high
    assert a.mean_energy_ci.low < a.mean_energy < a.mean_energy_ci.high


def test_one_resampler_behind_both_bootstraps() -> None:
    # energy_statistics' vectorised moments and the general trajectory_bootstrap draw the same
    # replicates from one seed, so the pooled CV and mean H get the same CI either way.
    rng = np.random.default_rng(4)
    hs = [list(7 + rng.normal(0, 0.3 + 0.05 * i, 5 + i % 7)) for i in range(25)]
    fast = energy_statistics(*_steps(hs), n_boot=300, seed=11)
    parts = [np.asarray(h) for h in hs]
    slow_cv = trajectory_bootstrap(parts, cv, n_boot=300, seed=11)
    slow_mean = trajectory_bootstrap(parts, lambda a: float(a.mean()), n_boot=300, seed=11)
    assert fast.global_cv_ci is not None and fast.mean_energy_ci is not None
    assert fast.global_cv_ci.low == pytest.approx(slow_cv.low, rel=1e-9)
    assert fast.global_cv_ci.high == pytest.approx(slow_cv.high, rel=1e-9)
    assert fast.mean_energy_ci.low == pytest.approx(slow_mean.low, rel=1e-9)
    assert fast.mean_energy_ci.high == pytest.approx(slow_mean.high, rel=1e-9)
    picks = resample_trajectories(25, 300, 11)
    assert picks.shape == (300, 25) and picks.min() >= 0 and picks.max() <= 24
    assert np.array_equal(picks, resample_trajectories(25, 300, 11))


def test_no_valid_steps_is_an_error() -> None:
    with pytest.raises(ValueError, match="no valid steps"):
        energy_statistics(np.array([0]), np.array([np.nan]), np.array([1.0]))


def test_from_steps_frame_sorts_and_reads_nulls() -> None:
    frame = pd.DataFrame(
        {
            "trajectory": [1, 0, 0, 1],
            "step": [1, 1, 0, 0],
            "K": [2.0, 4.0, None, None],
            "V": [1.0, 1.0, 1.0, 1.0],
        }
    )
    stats = statistics_from_steps(frame, n_boot=0)
    assert stats.n_valid == 2
    assert stats.mean_energy == pytest.approx(4.0)


# ----------------------------------------------------------------------------- rates


def test_binomial_interval_by_hand() -> None:
    lo, hi = binomial_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = binomial_interval(10, 10)
    assert lo == pytest.approx(0.025 ** (1 / 10)) and hi == 1.0
    lo, hi = binomial_interval(5, 10)
    assert lo == pytest.approx(0.18709, abs=1e-5) and hi == pytest.approx(0.81291, abs=1e-5)
    est = rate_estimate(10, 200)
    assert est.value == 0.05 and est.low < 0.05 < est.high and est.n == 200
    with pytest.raises(PPMechError, match="trials"):
        binomial_interval(3, 2)


def test_binomial_interval_covers_at_least_its_level() -> None:
    rng = np.random.default_rng(0)
    p, n = 0.05, 100
    hits = rng.binomial(n, p, size=2000)
    covered = [lo <= p <= hi for lo, hi in (binomial_interval(int(k), n) for k in hits)]
    assert np.mean(covered) >= 0.94


def test_percentile_ci_by_hand() -> None:
    reps = np.arange(101, dtype=np.float64)  # 0, 1, ..., 100: linear percentiles are exact
    assert percentile_ci(reps, n_boot=101) == (2.5, 97.5)
    # Non-finite replicates are dropped, the rule counts against the replicates drawn.
    with_nan = np.concatenate([reps, np.full(49, np.nan), [np.inf]])
    assert percentile_ci(with_nan, n_boot=150) == (2.5, 97.5)


def test_percentile_ci_needs_its_minimum_of_replicates() -> None:
    assert min_replicates(5) == 10 and min_replicates(1000) == 500
    low, high = percentile_ci(np.arange(9.0), n_boot=9)  # fewer than 10: no CI
    assert math.isnan(low) and math.isnan(high)
    half = np.concatenate([np.arange(99.0), np.full(101, np.nan)])  # 99 of 200 finite
    assert all(math.isnan(x) for x in percentile_ci(half, n_boot=200))
    assert all(math.isfinite(x) for x in percentile_ci(np.arange(100.0), n_boot=200))


def test_energy_statistics_use_the_one_ci_rule() -> None:
    hs = [[1.0 + 0.1 * i + 0.01 * j for j in range(4)] for i in range(6)]
    few = energy_statistics(*_steps(hs), n_boot=5, seed=0)  # 5 replicates: below the minimum
    assert few.global_cv_ci is not None and not few.global_cv_ci.has_ci
    assert few.mean_energy_ci is not None and not few.mean_energy_ci.has_ci
    enough = energy_statistics(*_steps(hs), n_boot=50, seed=0)
    assert enough.mean_energy_ci is not None and enough.mean_energy_ci.has_ci
