"""Null models and confounder controls against hand-computed cases and synthetic series with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ppmech import mechanics as M
from ppmech import nulls as N
from ppmech.errors import PPMechError


def _series(
    rng: np.random.Generator, n_traj: int, steps: int, coupling: float, noise: float
) -> list[np.ndarray]:
    """Per trajectory (K, V): V ~ gamma-ish surprisal, K = 7 + coupling·(V − mean V) + noise."""
    parts = []
    for _ in range(n_traj):
        v = rng.gamma(2.0, 1.0, size=steps)
        k = 7.0 + coupling * (v - 2.0) + noise * rng.normal(size=steps)
        parts.append(np.column_stack([k, v]))
    return parts


# ----------------------------------------------------------------------------- compensation ratio


def test_compensation_ratio_by_hand() -> None:
    # H constant: perfect compensation.
    assert N.compensation_ratio(np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])) == 0.0
    # Uncorrelated: Var K = Var V = 1/4, H = 0, 1, 1, 2 has variance 1/2.
    assert N.compensation_ratio(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])) == pytest.approx(
        1.0
    )
    # Positively coupled: Var K = Var V = 1.25; H = 2, 5, 5, 8 has variance 4.5.
    kv = np.array([[1.0, 1.0], [2.0, 3.0], [3.0, 2.0], [4.0, 4.0]])
    assert N.compensation_ratio(kv) == pytest.approx(4.5 / 2.5)
    assert math.isnan(N.compensation_ratio(np.array([[1.0, 2.0]])))
    assert math.isnan(N.compensation_ratio(np.array([[1.0, 2.0], [1.0, 2.0]])))


def test_per_trajectory_ratios_skip_short_and_non_finite_steps() -> None:
    parts = [
        np.array([[np.nan, 1.0], [1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]),  # R = 0 on its valid steps
        np.array([[1.0, 1.0], [-np.inf, 2.0], [2.0, 3.0]]),  # 2 valid steps < MIN_STEPS
    ]
    r = N.per_trajectory_ratios(parts)
    assert r[0] == 0.0 and math.isnan(r[1])


def test_compensating_series_has_r_far_below_one() -> None:
    parts = _series(np.random.default_rng(0), 20, 50, coupling=-1.0, noise=0.1)
    est = N.compensation(parts, n_boot=200)
    assert est["pooled"].high < 0.05
    assert est["per_trajectory"].high < 0.05
    assert est["cov_KV"].high < 0


def test_independent_series_has_r_near_one() -> None:
    parts = _series(np.random.default_rng(1), 20, 50, coupling=0.0, noise=1.0)
    est = N.compensation(parts, n_boot=200)
    assert est["pooled"].low < 1.0 < est["pooled"].high
    assert abs(est["pooled"].value - 1) < 0.1


# ----------------------------------------------------------------------------- pairing shuffle


def test_permutations_are_permutations_of_the_valid_entries() -> None:
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    idx = N.permute_within_rows(mask, 500, np.random.default_rng(0))
    assert idx.shape == (500, 2, 4)
    assert all(sorted(p) == [0, 1, 2] for p in idx[:, 0, :3].tolist())
    assert (idx[:, 0, 3] == 3).all() and (idx[:, 1, 2:] == [2, 3]).all()
    # Uniform over the 6 orders of row 0 (each ~1/6 of 500).
    counts = pd.Series([tuple(p) for p in idx[:, 0, :3].tolist()]).value_counts()
    assert len(counts) == 6 and counts.min() > 50


def test_shuffle_p_value_matches_exact_enumeration() -> None:
    # 5 trajectories of 3 steps: the exact permutation distribution has 6^5 pairings.
    rng = np.random.default_rng(4)
    parts = [np.column_stack([rng.normal(size=3), rng.normal(size=3) - 0.8 * np.arange(3)]) for _ in range(5)]
    obs = N.compensation_ratio(np.concatenate(parts))
    perms = list(itertools.permutations(range(3)))
    exact = []
    for choice in itertools.product(perms, repeat=5):
        a = np.concatenate(
            [np.column_stack([p[:, 0], p[list(c), 1]]) for p, c in zip(parts, choice, strict=True)]
        )
        exact.append(N.compensation_ratio(a))
    p_exact = float(np.mean(np.asarray(exact) <= obs + 1e-12))
    test = N.pairing_shuffle(parts, n_perm=4000, seed=0)["R"]
    assert test.observed == pytest.approx(obs)
    assert test.null_mean == pytest.approx(np.mean(exact), abs=0.03)
    assert test.p_value == pytest.approx(p_exact, abs=0.025)  # Monte Carlo error of 4000 draws


def test_shuffle_p_value_uses_the_plus_one_correction() -> None:
    # K = −V exactly: H is constant, R = 0, no permutation (V varies) reaches it.
    rng = np.random.default_rng(2)
    parts = []
    for _ in range(6):
        v = rng.gamma(2.0, size=10)
        parts.append(np.column_stack([5 - v, v]))
    test = N.pairing_shuffle(parts, n_perm=99, seed=0)["R"]
    assert test.observed == pytest.approx(0.0, abs=1e-12)
    assert test.p_value == pytest.approx(1 / 100)
    assert test.effect_size < -3
    # V constant within each trajectory: every pairing is the same one, p = 1.
    flat = [np.column_stack([rng.normal(size=8), np.full(8, float(i))]) for i in range(6)]
    same = N.pairing_shuffle(flat, n_perm=50, seed=0)["R"]
    assert same.p_value == 1.0


def test_compensating_series_is_significant_and_independent_ones_are_not() -> None:
    comp = N.pairing_shuffle(_series(np.random.default_rng(0), 20, 50, -1.0, 0.3), n_perm=500, seed=1)
    for name in N.STATISTIC_NAMES:
        assert comp[name].p_value < 0.01, name
        assert comp[name].observed < comp[name].null_low
    # Independent K and V: the p-value is uniform, so about 5% of data sets fall below 0.05.
    rng = np.random.default_rng(5)
    ps = [
        N.pairing_shuffle(_series(rng, 10, 30, 0.0, 1.0), n_perm=200, seed=i)["R"].p_value for i in range(60)
    ]
    assert np.mean(np.asarray(ps) < 0.05) <= 0.15
    assert 0.35 < np.mean(ps) < 0.65


def test_pooled_cv_and_r_share_a_p_value_and_match_direct_formulas() -> None:
    parts = _series(np.random.default_rng(3), 8, 20, -0.5, 0.5)
    tests = N.pairing_shuffle(parts, n_perm=300, seed=0)
    assert tests["global_cv"].p_value == tests["R"].p_value
    pooled = np.concatenate(parts)
    h = pooled.sum(1)
    assert tests["global_cv"].observed == pytest.approx(h.std() / h.mean())
    assert tests["mean_trajectory_cv"].observed == pytest.approx(
        np.mean([(p.sum(1)).std() / p.sum(1).mean() for p in parts])
    )
    assert tests["mean_trajectory_R"].observed == pytest.approx(np.mean(N.per_trajectory_ratios(parts)))


def test_shuffle_is_seeded_and_refuses_bad_input() -> None:
    parts = _series(np.random.default_rng(3), 6, 10, 0.0, 1.0)
    a = N.pairing_shuffle(parts, n_perm=100, seed=7)["R"]
    b = N.pairing_shuffle(parts, n_perm=100, seed=7)["R"]
    assert a == b
    with pytest.raises(PPMechError, match="n_perm"):
        N.pairing_shuffle(parts, n_perm=0)
    with pytest.raises(PPMechError, match="at least 5 trajectories"):
        N.pairing_shuffle(parts[:4], n_perm=10)


# ----------------------------------------------------------------------------- scale null


def test_scaling_h_shifts_k_by_two_ln_c_and_leaves_r_and_std_alone() -> None:
    rng = np.random.default_rng(0)
    hidden = torch.tensor(rng.normal(size=(6, 12, 16)))
    v = rng.gamma(2.0, size=(6, 12))
    rows = {}
    for c in (0.5, 2.0, 10.0):
        k1 = M.log_kinetic(M.speed_squared(hidden).numpy())
        kc = M.log_kinetic(M.speed_squared(c * hidden).numpy())
        np.testing.assert_allclose(kc[:, 1:] - k1[:, 1:], 2 * math.log(c), atol=1e-12)
        rows[c] = [np.column_stack([kc[i], v[i]]) for i in range(6)]
    base = [np.column_stack([M.log_kinetic(M.speed_squared(hidden).numpy())[i], v[i]]) for i in range(6)]
    table = N.scale_table(base)
    assert list(table["c"]) == [0.5, 1.0, 2.0, 10.0]
    assert np.ptp(table["std_H"]) < 1e-12 and np.ptp(table["R"]) < 1e-12
    for c in (0.5, 2.0, 10.0):
        direct = N.scale_table(rows[c], scales=[1.0]).iloc[0]
        row = table[table["c"] == c].iloc[0]
        assert row["global_cv"] == pytest.approx(direct["global_cv"])
        assert row["mean_H"] == pytest.approx(direct["mean_H"])


def test_scale_table_by_hand() -> None:
    # Two values of H per trajectory: 7 and 9 (mean 8, std 1); CV = 1 / (8 + 2 ln c).
    parts = [np.array([[4.0, 3.0], [5.0, 4.0]])] * 5
    table = N.scale_table(parts)
    for _, row in table.iterrows():
        assert row["global_cv"] == pytest.approx(1 / (8 + 2 * math.log(row["c"])))
        assert row["std_H"] == pytest.approx(1.0)
    assert table.attrs["c_zero_mean"] == pytest.approx(math.exp(-4))
    est = N.scale_controls(parts, n_boot=50)
    assert est["max_cv"].value == pytest.approx(1 / (8 + 2 * math.log(0.5)))
    assert est["cv_c10"].value == pytest.approx(1 / (8 + 2 * math.log(10)))
    with pytest.raises(PPMechError, match="positive"):
        N.scale_table(parts, scales=[0.0])


# ----------------------------------------------------------------------------- token and position identity


def test_cross_fitted_prediction_by_hand() -> None:
    y = np.array([1.0, 3.0, 5.0, 7.0])
    groups = np.array([0, 0, 1, 2])
    folds = np.array([0, 1, 0, 1])
    # Fold 0 (rows 0, 2) from rows 1, 3: group 0 → 3, group 1 unseen → mean 5.
    # Fold 1 (rows 1, 3) from rows 0, 2: group 0 → 1, group 2 unseen → mean 3.
    np.testing.assert_allclose(N.cross_fitted_prediction(y, [groups], folds), [3.0, 1.0, 5.0, 3.0])
    assert N.r_squared(y, np.array([3.0, 1.0, 5.0, 3.0])) == pytest.approx(1 - (4 + 4 + 0 + 16) / 20)


def test_backfitting_recovers_additive_effects() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 400), rng.integers(0, 7, 400)
    ea, eb = rng.normal(size=5), rng.normal(size=7)
    mu, effects = N.fixed_effects_fit(3.0 + ea[a] + eb[b], [a, b], iterations=50)
    fitted = mu + N._lookup(*effects[0], a) + N._lookup(*effects[1], b)
    np.testing.assert_allclose(fitted, 3.0 + ea[a] + eb[b], atol=1e-6)


def test_trajectory_folds_keep_trajectories_whole() -> None:
    traj = np.repeat(np.arange(10), 3)
    folds = N.trajectory_folds(traj, 2, seed=0)
    assert all(len(set(folds[traj == t])) == 1 for t in range(10))
    assert sorted(np.bincount(folds)) == [15, 15]
    with pytest.raises(PPMechError, match="at least 2 trajectories"):
        N.trajectory_folds(np.zeros(5), 2)


def _steps(k: np.ndarray, v: np.ndarray, tokens: np.ndarray) -> pd.DataFrame:
    n, t = k.shape
    return pd.DataFrame(
        {
            "trajectory": np.repeat(np.arange(n), t),
            "step": np.tile(np.arange(t), n),
            "token_id": tokens.ravel(),
            "K": k.ravel(),
            "V": v.ravel(),
        }
    )


def test_identity_frame_builds_the_factors() -> None:
    k = np.array([[np.nan, 1.0, 2.0], [np.nan, 3.0, -np.inf]])
    steps = _steps(k, np.ones((2, 3)), np.array([[10, 11, 12], [20, 21, 22]]))
    frame = N.identity_frame(steps.sample(frac=1.0, random_state=0))
    assert frame["token"].tolist() == [11, 12, 21]
    assert frame["input_token"].tolist() == [10, 11, 20]
    assert frame["position"].tolist() == [1, 2, 1]


def test_token_driven_k_is_explained_and_random_k_is_not() -> None:
    rng = np.random.default_rng(0)
    n, t = 40, 50
    tokens = rng.integers(0, 30, size=(n, t))
    effect = rng.normal(0, 2, size=30)
    v = rng.gamma(2.0, size=(n, t))
    driven = N.identity_controls(
        N.identity_frame(_steps(7 + effect[tokens] + 0.05 * rng.normal(size=(n, t)), v, tokens)),
        n_boot=100,
        n_perm=100,
    )
    assert driven.r2["token"].value > 0.99 and driven.r2["token"].low > 0.98
    # An irrelevant factor scores near 0, slightly below: 50 step means from ~20 values each are noise.
    assert abs(driven.r2["position"].value) < 0.1
    noise = N.identity_controls(
        N.identity_frame(_steps(7 + rng.normal(size=(n, t)), v, tokens)), n_boot=100, n_perm=100
    )
    for name in N.FACTORS:
        # Nothing explained: held-out R² at or below 0 (the cost of ~80 fitted means on 1000 steps).
        assert -0.2 < noise.r2[name].value < 0.02, name
    position = N.identity_controls(
        N.identity_frame(
            _steps(7 + np.sin(np.arange(t))[None, :] + 0.05 * rng.normal(size=(n, t)), v, tokens)
        ),
        n_boot=100,
        n_perm=100,
    )
    assert position.r2["position"].value > 0.98
    assert position.r2["token+position"].value > 0.9


def test_token_control_removes_compensation_that_token_identity_explains() -> None:
    rng = np.random.default_rng(1)
    n, t = 40, 50
    tokens = rng.integers(0, 20, size=(n, t))
    effect = rng.normal(0, 2, size=20)
    noise_k, noise_v = rng.normal(size=(n, t)), rng.gamma(2.0, size=(n, t))
    # Confounded: K and V both follow the token, in opposite directions; otherwise unrelated.
    conf = N.identity_controls(
        N.identity_frame(_steps(7 + effect[tokens] + noise_k, 3 - effect[tokens] + noise_v, tokens)),
        n_boot=100,
        n_perm=200,
    )
    raw_parts = [
        np.column_stack(x)
        for x in zip(7 + effect[tokens] + noise_k, 3 - effect[tokens] + noise_v, strict=True)
    ]
    # The raw pairing looks compensating, and beats its shuffle (the shuffle keeps tokens apart)...
    assert N.compensation(raw_parts, n_boot=50)["pooled"].high < 0.6
    assert N.pairing_shuffle(raw_parts, n_perm=200)["R"].p_value < 0.01
    # ...but not once token identity is removed from K.
    assert conf.residual["R"].low > 0.8
    assert conf.residual_null["R"].p_value > 0.01
    # Genuine: K = −V + token effect; removing the token effect reveals the compensation.
    real = N.identity_controls(
        N.identity_frame(_steps(10 - noise_v + effect[tokens] + 0.1 * noise_k, noise_v, tokens)),
        n_boot=100,
        n_perm=200,
    )
    assert real.residual["R"].high < 0.2
    # The same confounding through the *input* token x_{t−1} is removed as well.
    prev = np.concatenate([np.zeros((n, 1), dtype=np.int64), tokens[:, :-1]], axis=1)
    via_input = N.identity_controls(
        N.identity_frame(_steps(7 + effect[prev] + noise_k, 3 - effect[prev] + noise_v, tokens)),
        n_boot=100,
        n_perm=200,
    )
    assert via_input.r2["input_token"].value > 0.5 and via_input.r2["token"].value < 0.1
    assert via_input.residual["R"].low > 0.8
    assert real.residual_null["R"].p_value < 0.01


# ----------------------------------------------------------------------------- curvature


def test_turning_angles_by_hand() -> None:
    line = np.outer(np.arange(6.0), [1.0, 2.0, -1.0]) + 3.0
    angles = M.turning_angles(line)
    assert np.isnan(angles[0]) and np.isnan(angles[-1])
    np.testing.assert_allclose(angles[1:-1], 0.0, atol=1e-7)
    # Zig-zag (t, (−1)^t): velocities (1, ±2), cos = (1 − 4)/5 = −0.6 at every turn.
    zig = np.array([[t, (-1.0) ** t] for t in range(7)])
    np.testing.assert_allclose(M.turning_angles(zig)[1:-1], math.acos(-0.6))
    # Staircase: (1, 0) then (0, 1): right angles.
    stair = np.array([[0, 0], [1, 0], [1, 1], [2, 1], [2, 2]], dtype=float)
    np.testing.assert_allclose(M.turning_angles(stair)[1:-1], math.pi / 2)
    # A repeated state: the angles next to the zero velocity are undefined, not 0.
    rep = np.array([[0, 0], [1, 0], [1, 0], [2, 1], [3, 1]], dtype=float)
    a = M.turning_angles(rep)
    assert np.isnan(a[1]) and np.isnan(a[2]) and a[3] == pytest.approx(math.pi / 4)
    assert np.isnan(M.turning_angles(np.zeros((2, 3)))).all()


def test_curvature_of_lines_zigzags_and_padded_trajectories() -> None:
    t = np.arange(8.0)
    lines = np.stack([np.outer(t, np.random.default_rng(i).normal(size=5)) for i in range(6)])
    est = N.curvature(lines, n_boot=50)["mean_deg"]
    assert est.value == pytest.approx(0.0, abs=1e-4) and est.high == pytest.approx(0.0, abs=1e-4)
    zig = np.array([[s, (-1.0) ** s] for s in range(8)])
    zigs = np.stack([zig] * 6)
    zigs[2, 5:] = np.nan  # a shorter trajectory: measured on its recorded states only
    per = N.trajectory_curvatures(zigs)
    np.testing.assert_allclose(per, math.degrees(math.acos(-0.6)))
    # Independent random steps in high dimension: close to 90°.
    walk = np.cumsum(np.random.default_rng(0).normal(size=(6, 30, 2000)), axis=1)
    assert N.curvature(walk, n_boot=50)["mean_deg"].value == pytest.approx(90.0, abs=2.0)


# ----------------------------------------------------------------------------- summary.json controls


def test_conservation_summary_matches_the_full_null_models() -> None:
    parts = _series(np.random.default_rng(3), 12, 40, coupling=-0.5, noise=0.5)
    steps = pd.DataFrame(
        [
            {"trajectory": i, "step": t, "K": k, "V": v}
            for i, p in enumerate(parts)
            for t, (k, v) in enumerate(p)
        ]
    )
    s = N.conservation_summary(steps, n_perm=200, seed=0)
    tests = N.pairing_shuffle(parts, 200, 0)
    pooled = np.concatenate(parts)
    assert s["R"] == pytest.approx(N.compensation_ratio(pooled))
    assert s["one_minus_R"] == pytest.approx(1 - s["R"])
    assert s["corr_KV"] == pytest.approx(np.corrcoef(pooled[:, 0], pooled[:, 1])[0, 1])
    assert s["shuffle_null_R_low"] == pytest.approx(tests["R"].null_low)
    assert s["shuffle_null_cv"] == pytest.approx(tests["global_cv"].null_mean)
    h = pooled.sum(1)
    assert s["cv_ratio"] == pytest.approx(h.std() / h.mean() / tests["global_cv"].null_mean)
    # At c = c_min the CV of H is exactly 13%.
    c = s["c_min"]
    assert h.std() / (h.mean() + 2 * math.log(c)) == pytest.approx(N.PAPER_CV_THRESHOLD)
    # Compensating K and V: R below its shuffle band, observed CV below the null CV.
    assert s["R"] < s["shuffle_null_R_low"] and s["cv_ratio"] < 1
    # Too few trajectories for the permutation test: point values only, no traceback.
    few = N.conservation_summary(steps[steps["trajectory"] < 3])
    assert few["R"] is not None and few["shuffle_null_cv"] is None
