"""Pure analyses against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ppmech.claims import analyses as A
from ppmech.claims import scaling as S
from ppmech.errors import PPMechError
from ppmech.models.architectures import Readout
from ppmech.statistics import trajectory_bootstrap


def _readout(weight: np.ndarray, softcap: float | None = None, scale: float = 1.0) -> Readout:
    return Readout(weight=torch.tensor(weight, dtype=torch.float32), bias=None, scale=scale, softcap=softcap)


# ----------------------------------------------------------------------------- bootstrap & CVs


def test_constant_h_has_cv_zero_with_a_zero_width_ci() -> None:
    parts = [np.full(10, 7.5) for _ in range(6)]
    cvs = A.trajectory_cvs(parts, n_boot=50)
    assert cvs["global"].value == 0.0
    assert cvs["global"].low == 0.0 and cvs["global"].high == 0.0
    assert cvs["mean_trajectory"].value == 0.0
    assert cvs["mean_H"].value == pytest.approx(7.5)


def test_trajectory_cvs_by_hand() -> None:
    # Each trajectory alternates m-1, m+1: per-trajectory CV = 1/m; means 2, 4, 6, 8, 10.
    parts = [np.array([m - 1.0, m + 1.0] * 3) for m in (2.0, 4.0, 6.0, 8.0, 10.0)]
    cvs = A.trajectory_cvs(parts, n_boot=100)
    assert cvs["mean_trajectory"].value == pytest.approx(np.mean([1 / m for m in (2, 4, 6, 8, 10)]))
    means = np.array([2.0, 4, 6, 8, 10])
    assert cvs["trajectory_mean"].value == pytest.approx(means.std() / means.mean())
    pooled = np.concatenate(parts)
    assert cvs["global"].value == pytest.approx(pooled.std() / pooled.mean())
    assert cvs["global"].low <= cvs["global"].value <= cvs["global"].high


def test_non_finite_steps_are_skipped() -> None:
    parts = [np.array([np.nan, 2.0, -np.inf, 2.0]) for _ in range(5)]
    assert A.trajectory_cvs(parts, n_boot=10)["global"].value == 0.0


def test_too_few_trajectories_for_a_ci_is_a_user_error() -> None:
    with pytest.raises(PPMechError, match="at least 5 trajectories"):
        trajectory_bootstrap([np.ones(3)] * 4, A.finite_mean)


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=20) + 5 for _ in range(10)]
    a = trajectory_bootstrap(parts, A.pooled_cv, n_boot=200, seed=3)
    b = trajectory_bootstrap(parts, A.pooled_cv, n_boot=200, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low < a.value < a.high


def test_split_by_trajectory_orders_steps() -> None:
    steps = pd.DataFrame({"trajectory": [1, 0, 1, 0], "step": [1, 1, 0, 0], "H": [4.0, 2.0, 3.0, 1.0]})
    parts = A.split_by_trajectory(steps, ["H"])
    assert [p[:, 0].tolist() for p in parts] == [[1.0, 2.0], [3.0, 4.0]]


# ----------------------------------------------------------------------------- energy forms


def test_energy_forms_by_hand() -> None:
    s = np.array([np.nan, 2.0, 8.0])
    lp = np.log(np.array([0.5, 0.5, 0.25]))
    f = A.energy_forms(s, lp)
    # ½‖v‖² = 1 and 4; PPL = 2 and 4.
    assert f["product"][1:] == pytest.approx([2.0, 16.0])
    assert f["log"][1:] == pytest.approx([math.log(2.0), math.log(16.0)])
    assert f["classical"][1:] == pytest.approx([1 + math.log(2), 4 + math.log(4)])
    assert np.isnan(f["log"][0])


def test_energy_form_cvs_constant_product_has_zero_cv() -> None:
    # ½‖v‖²·PPL = 10 at every step, though both factors vary.
    parts = []
    for _ in range(5):
        p = np.array([0.5, 0.25, 0.1, 0.5])
        s = 2 * 10 * p
        parts.append(np.column_stack([s, np.log(p)]))
    cvs = A.energy_form_cvs(parts, n_boot=20)
    assert cvs["product"].value == pytest.approx(0.0, abs=1e-12)
    assert cvs["log"].value == pytest.approx(0.0, abs=1e-12)
    assert cvs["classical"].value > 0.1


def test_local_conservation_by_hand() -> None:
    # H rises by 1 each step in every trajectory: mean Δ 1, |Δ| 1, drift 1.
    parts = [np.arange(5, dtype=float) + k for k in range(5)]
    lc = A.local_conservation(parts, n_boot=20)
    assert lc["mean_d"].value == pytest.approx(1.0)
    assert lc["mean_abs_d"].value == pytest.approx(1.0)
    assert lc["drift"].value == pytest.approx(1.0)
    # Alternating ±1: mean 0 (odd count aside), |Δ| 1, drift near 0.
    alt = [np.array([0.0, 1.0, 0.0, 1.0, 0.0]) for _ in range(5)]
    lc = A.local_conservation(alt, n_boot=20)
    assert lc["mean_d"].value == pytest.approx(0.0)
    assert lc["mean_abs_d"].value == pytest.approx(1.0)
    assert lc["drift"].value == pytest.approx(0.0)


def test_differences_skip_gaps() -> None:
    d = A.differences([np.array([1.0, np.nan, 3.0, 4.0])])
    assert d[0].tolist() == [1.0]


def test_entropy_landscape_by_hand() -> None:
    parts = [np.array([1.0, 3.0]) for _ in range(5)]
    ent = A.entropy_landscape(parts, n_boot=20)
    assert ent["mean"].value == pytest.approx(2.0)
    assert ent["var"].value == pytest.approx(1.0)


def test_kv_ratio_readings_by_hand() -> None:
    # K = 6 always; V = 1 and 3: ratio of means 6/2 = 3; per-step ratios 6 and 2 -> mean 4, median 4.
    parts = [np.array([[np.nan, 1.0], [6.0, 1.0], [6.0, 3.0]]) for _ in range(5)]
    kv = A.kv_ratios(parts, n_boot=20)
    assert kv["ratio_of_means"].value == pytest.approx(3.0)
    assert kv["mean_of_ratios"].value == pytest.approx(4.0)
    assert kv["median_of_ratios"].value == pytest.approx(4.0)


def test_cv_by_position_windows() -> None:
    # First window constant (CV 0), second alternates 9/11 (CV 0.1).
    parts = [np.concatenate([np.full(4, 5.0), np.array([9.0, 11.0, 9.0, 11.0])]) for _ in range(5)]
    table = A.cv_by_position(parts, window=4, n_boot=20)
    assert table["start"].tolist() == [0, 4]
    assert table["cv"].tolist() == pytest.approx([0.0, 0.1])
    assert table["mean_H"].tolist() == pytest.approx([5.0, 10.0])
    with pytest.raises(PPMechError):
        A.cv_by_position(parts, window=1)


# ----------------------------------------------------------------------------- §C.5


def test_interpolation_between_two_token_regions() -> None:
    # 2-d states, 3 tokens along the axes: W = e1, e2, -e1.
    read = _readout(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    h_a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    h_b = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    toks = A.interpolation_argmax(read, h_a, h_b)
    assert toks.shape == (2, 11)
    # Path 1 switches from token 0 to 1 past α = 0.5; path 2 goes 0 -> 2 through the origin.
    assert toks[0].tolist() == [0] * 5 + [0] + [1] * 5 or toks[0].tolist() == [0] * 5 + [1] * 6
    assert set(toks[1].tolist()) <= {0, 1, 2} and toks[1, 0] == 0 and toks[1, -1] == 2


def test_attractor_summary_by_hand() -> None:
    tokens = np.array([[1, 1, 2], [1, 3, 2], [4, 4, 4], [5, 6, 7], [8, 8, 9], [1, 2, 2]])
    xs = np.array([1, 1, 4, 5, 8, 1])
    xe = np.array([2, 2, 4, 7, 9, 2])
    traj = np.arange(6)
    res = A.attractor_summary(tokens, xs, xe, traj, n_boot=50)
    unique = np.array([2, 3, 1, 3, 2, 2], dtype=float)
    assert res.unique_mean == pytest.approx(unique.mean())
    assert res.unique_se == pytest.approx(unique.std(ddof=1) / math.sqrt(6))
    # Paths 1 and 3 (0-based) leave {x_t, x_t+1}: 4 of 6 stay within.
    assert res.within_share.value == pytest.approx(4 / 6)
    assert res.n_paths == 6


def test_neighbouring_attractors_on_a_constructed_trajectory() -> None:
    read = _readout(np.eye(3))
    # Each trajectory hops token 0 -> 1 -> 2 along straight segments between basis vectors.
    hidden = np.tile(np.eye(3, dtype=np.float32)[None], (5, 1, 1))
    tokens = np.tile(np.arange(3)[None], (5, 1))
    res = A.neighbouring_attractors(read, hidden, tokens, n_boot=20)
    assert res.n_paths == 10
    assert res.unique_mean == pytest.approx(2.0)
    assert res.within_share.value == pytest.approx(1.0)


# ----------------------------------------------------------------------------- forces and E-L


def test_force_matches_the_affine_formula_and_autograd_with_softcap() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 4))
    h = rng.normal(size=(3, 4))
    x = np.array([0, 3, 6])
    read = _readout(w, scale=2.0)
    f = A.force(read, torch.tensor(h, dtype=torch.float32), torch.tensor(x))
    for i in range(3):
        logits = read.logits(torch.tensor(h[i], dtype=torch.float32)).double().numpy()
        expect = A.affine_force(w, logits, int(x[i]), scale=2.0)
        assert f[i].double().numpy() == pytest.approx(expect, rel=1e-4, abs=1e-5)
    # Soft-capped: compare with a finite difference of ln p_x.
    capped = _readout(w, softcap=1.5)
    g = A.force(capped, torch.tensor(h, dtype=torch.float64).float(), torch.tensor(x))[0].double().numpy()
    eps = 1e-3
    fd = []
    for j in range(4):
        d = np.zeros(4)
        d[j] = eps
        up = capped.log_probs(torch.tensor(h[0] + d, dtype=torch.float32))[0].item()
        dn = capped.log_probs(torch.tensor(h[0] - d, dtype=torch.float32))[0].item()
        fd.append((up - dn) / (2 * eps))
    assert g == pytest.approx(np.array(fd), abs=2e-3)


def _path_following(forces: np.ndarray, v1: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """States whose Δ(2v/‖v‖²) equals ``forces[t]`` at every t >= 1 (w = 2v/‖v‖², v = 2w/‖w‖²)."""
    hs = [h0, h0 + v1]
    w = 2 * v1 / (v1 @ v1)
    for t in range(1, forces.shape[0] - 1):
        w = w + forces[t]
        v = 2 * w / (w @ w)
        hs.append(hs[-1] + v)
    return np.array(hs)


def test_a_path_moving_along_the_force_has_cosine_one_and_zero_residual() -> None:
    rng = np.random.default_rng(2)
    forces = rng.normal(size=(12, 5))
    hidden = _path_following(forces, rng.normal(size=5), rng.normal(size=5))
    terms = A.euler_lagrange_terms(hidden, forces)
    assert terms["step"].tolist() == list(range(1, 11))
    assert terms["cos"] == pytest.approx(np.ones(10), abs=1e-9)
    assert terms["rel_residual"] == pytest.approx(np.zeros(10), abs=1e-9)
    assert terms["force_over_lhs"] == pytest.approx(np.ones(10), rel=1e-9)
    # Against the opposite force (Theorem D.1's sign) the cosine is -1.
    assert A.euler_lagrange_terms(hidden, -forces)["cos"] == pytest.approx(-np.ones(10), abs=1e-9)


def test_euler_lagrange_summary_and_shuffled_baseline() -> None:
    rng = np.random.default_rng(3)
    hs, fs = [], []
    for _ in range(6):
        f = rng.normal(size=(15, 8))
        hs.append(_path_following(f, rng.normal(size=8), rng.normal(size=8)))
        fs.append(f)
    res = A.euler_lagrange(hs, fs, n_boot=50)
    assert res["cos"].value == pytest.approx(1.0)
    assert res["rel_residual"].value == pytest.approx(0.0, abs=1e-9)
    # Independent random forces at other times are nearly orthogonal in 8-d.
    assert abs(res["shuffled_cos"].value) < 0.3
    assert res["shuffled_rel_residual"].value > 0.5


def test_zero_velocity_steps_are_dropped_from_the_residual() -> None:
    hidden = np.array([[0.0, 0], [1, 0], [1, 0], [2, 0], [3, 1]])
    terms = A.euler_lagrange_terms(hidden, np.ones((5, 2)))
    # v_2 = 0 makes t = 1 and t = 2 undefined; only t = 3 remains.
    assert terms["step"].tolist() == [3.0]


def test_shuffle_in_time_moves_every_row() -> None:
    f = np.arange(10, dtype=float)[:, None]
    s = A.shuffle_in_time(f, np.random.default_rng(0))
    assert sorted(s[:, 0].tolist()) == f[:, 0].tolist()
    assert not np.any(s[:, 0] == f[:, 0])


# ----------------------------------------------------------------------------- Table 5


def test_scaling_correlation_exact_line() -> None:
    c = S.scaling_correlation([1e8, 2e8, 3e8, 4e8], [1.0, 2.0, 3.0, 4.0])
    assert c.r == pytest.approx(1.0)
    assert c.n == 4
    c = S.scaling_correlation([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    assert c.r == pytest.approx(-0.5)
    assert c.p == pytest.approx(S.pearson_p(-0.5, 3))


def test_scaling_correlation_needs_three_sizes() -> None:
    with pytest.raises(PPMechError, match="at least 3 sizes"):
        S.scaling_correlation([1e8, 1e8, 2e8], [0.1, 0.2, 0.3])


def test_pearson_p_and_implied_sample_size() -> None:
    # With 1 degree of freedom, p = 1 - (2/π)·atan(t).
    r = 0.9996
    t = r / math.sqrt(1 - r * r)
    assert S.pearson_p(r, 3) == pytest.approx(1 - 2 / math.pi * math.atan(t))
    assert S.implied_sample_size(0.9996, 0.0181) == 3
    assert S.implied_sample_size(0.5, S.pearson_p(0.5, 20)) == 20


# ----------------------------------------------------------------------------- per layer


def test_layer_energy_table_by_hand() -> None:
    # 2 layers, 2 trajectories, 3 steps. Layer 0: ½‖v‖² = 1 (K = 0), V = 2 -> H = 2, CV 0.
    logp = np.full((2, 2, 3), -2.0)
    speed = np.full((2, 2, 3), 2.0)
    speed[:, :, 0] = np.nan
    logp[1] = np.log([[0.5, 0.5, 0.25], [0.5, 0.5, 0.25]])
    speed[1, :, 1:] = 2 * math.e  # K = 1
    table = A.layer_energy_table(logp, speed)
    assert table["layer"].tolist() == [0, 1]
    assert table.loc[0, "global_cv"] == pytest.approx(0.0)
    assert table.loc[0, "mean_H"] == pytest.approx(2.0)
    h1 = np.array([1 + math.log(2), 1 + math.log(4)])
    assert table.loc[1, "mean_H"] == pytest.approx(h1.mean())
    assert table.loc[1, "global_cv"] == pytest.approx(h1.std() / h1.mean())


def test_table5_groups_differ_in_no_protocol_setting() -> None:
    """Issue 19: runs that differ in any setting that changes what is measured never share a group."""
    from ppmech.measure import MeasureConfig

    base = MeasureConfig(model="smollm2-135m").to_dict()
    keys = S.comparison_keys()
    # The settings the old hand-written list left out are now part of the comparison.
    for k in ("top_k", "top_p", "seed", "stop_at_eos", "prompts", "corpus", "decoding", "dtype", "weights"):
        assert k in keys
    # The model's identity is what Table 5 varies; execution and analysis settings do not matter.
    for k in ("model", "revision", "device", "batch_size", "compile", "n_boot"):
        assert k not in keys
    other_model = base | {"model": "gemma3-270m", "device": "cpu", "batch_size": 3, "n_boot": 7}
    assert S.protocol_differences([base, other_model]) == []
    assert sorted(S.protocol_differences([base, base | {"top_k": 5}, base | {"seed": 1}])) == [
        "seed",
        "top_k",
    ]
