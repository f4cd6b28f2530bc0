"""Token and position identity: how much of ``K`` the produced token, the input token and
the step explain (held out), and conservation with those effects removed from ``K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ppmech.nulls.base import (
    F64,
    MIN_STEPS,
    ClaimSpec,
    Column,
    NullResult,
    NullTest,
    compensation_ratio,
    mean_of_parts,
    register,
)
from ppmech.nulls.pairing import pairing_shuffle, test_estimates
from ppmech.nulls.regression import cross_fitted_prediction, r_squared, trajectory_folds
from ppmech.statistics import Estimate, require_trajectories, trajectory_bootstrap

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
            per_cv, mean_of_parts, n_boot, seed, "mean over trajectories of CV(H'_i)", "CV(H')"
        ),
    }
    return IdentityControls(
        r2=r2,
        residual=residual,
        residual_null=pairing_shuffle(res_parts, n_perm, seed),
        n_steps=int(k.size),
    )


@register
class Identity:
    """The token/position control (:func:`identity_controls`) as ledger measurements."""

    name = "identity"
    alters = "removes produced-token, input-token and position effects from K (cross-fitted)"
    order = 40
    columns = (
        Column("R² token", "null_r2_token"),
        Column("R² input token", "null_r2_input_token"),
        Column("R² step", "null_r2_position"),
        Column("R² token+step", "null_r2_token+position"),
        Column("R² all three", "null_r2_all"),
        Column("R'", "null_resid_R"),
        Column("p'", "null_resid_shuffle_p", False),
    )
    claims = (
        ClaimSpec(
            "N-tokpos-{tag}",
            "beyond the paper: token/position control",
            "K and V still compensate once produced-token, input-token and position effects are "
            "removed from K (cross-fitted): R' < 1 ({weights})",
            "—",
            "{model}/{weights}/null_resid_R",
            "below",
            1.0,
        ),
        ClaimSpec(
            "N-tokpos-shuffle-{tag}",
            "beyond the paper: token/position control",
            "… and H' = K_resid + V + mean K is flatter than its unpaired null (p on R') ({weights})",
            "—",
            "{model}/{weights}/null_resid_shuffle_p",
            "p_below",
            0.05,
        ),
        ClaimSpec(
            "N-token-r2-{tag}",
            "beyond the paper: token/position control",
            "The critique: the produced token's identity explains most of K's variance "
            "(held-out R² > 0.5) ({weights})",
            "public critique",
            "{model}/{weights}/null_r2_token",
            "above",
            0.5,
        ),
        ClaimSpec(
            "N-input-r2-{tag}",
            "beyond the paper: token/position control",
            "The input token x_(t−1), whose position moves h_(t−1) to h_t, explains most of K's "
            "variance (held-out R² > 0.5) ({weights})",
            "public critique",
            "{model}/{weights}/null_r2_input_token",
            "above",
            0.5,
        ),
        ClaimSpec(
            "N-position-r2-{tag}",
            "beyond the paper: token/position control",
            "Position explains most of K's variance (held-out R² > 0.5) ({weights})",
            "public critique",
            "{model}/{weights}/null_r2_position",
            "above",
            0.5,
        ),
    )

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        ident = identity_controls(identity_frame(steps), n_boot, n_perm, seed)
        out = {f"null_r2_{k}": v for k, v in ident.r2.items()}
        out.update({f"null_resid_{k}": v for k, v in ident.residual.items()})
        out.update(test_estimates("null_resid_shuffle", ident.residual_null))
        return NullResult(out)
