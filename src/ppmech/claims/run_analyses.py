"""Per-run analyses of the claims ledger that read the stored steps (and hidden states) only.

:func:`steps_analyses` is everything the paper's claims need from ``steps.parquet``;
:func:`null_analyses` runs every null model of :func:`ppmech.nulls.registry`;
:func:`curvature_analysis` reads the saved hidden states. No model is loaded here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ppmech import nulls as N
from ppmech.claims import analyses as A
from ppmech.runs import Run
from ppmech.statistics import Estimate, require_trajectories, trajectory_bootstrap


def steps_analyses(run: Run, n_boot: int, seed: int) -> dict[str, Estimate]:
    """Everything that needs only ``steps.parquet``."""
    steps = run.steps
    n = steps["trajectory"].nunique()
    require_trajectories(n, f"run {run.path}")
    out: dict[str, Estimate] = {}
    h_parts = [p[:, 0] for p in A.split_by_trajectory(steps, ["H"])]
    cvs = A.trajectory_cvs(h_parts, n_boot, seed)
    out["global_cv"] = cvs["global"]
    out["mean_trajectory_cv"] = cvs["mean_trajectory"]
    out["trajectory_mean_cv"] = cvs["trajectory_mean"]
    out["mean_H"] = cvs["mean_H"]
    kv_parts = A.split_by_trajectory(steps, ["K", "V"])
    kv_valid = [p[np.isfinite(p).all(1)] for p in kv_parts]
    out["mean_K"] = trajectory_bootstrap(
        kv_valid, lambda a: float(a[:, 0].mean()), n_boot, seed, "mean K over valid steps"
    )
    out["mean_V"] = trajectory_bootstrap(
        kv_valid, lambda a: float(a[:, 1].mean()), n_boot, seed, "mean V over valid steps"
    )
    for k, v in A.kv_ratios(kv_parts, n_boot, seed).items():
        out[f"kv_{k}"] = v
    forms = A.energy_form_cvs(A.split_by_trajectory(steps, ["speed_sq", "logp"]), n_boot, seed)
    out["cv_product"] = forms["product"]
    out["cv_classical"] = forms["classical"]
    names = {"mean_d": "mean", "mean_abs_d": "abs", "drift": "drift"}
    for k, v in A.local_conservation(h_parts, n_boot, seed, "H").items():
        out[f"dH_{names[k]}"] = v
    e_parts = [np.exp(p) for p in h_parts]
    for k, v in A.local_conservation(e_parts, n_boot, seed, "E").items():
        out[f"dE_{names[k]}"] = v
    ent = A.entropy_landscape([p[:, 0] for p in A.split_by_trajectory(steps, ["entropy"])], n_boot, seed)
    out["entropy_mean"] = ent["mean"]
    out["entropy_var"] = ent["var"]
    return out


def null_analyses(
    run: Run, n_boot: int, seed: int, n_perm: int = 1000
) -> tuple[dict[str, Estimate], pd.DataFrame]:
    """Every registered null model (:func:`ppmech.nulls.registry`) on one run's steps.

    Returns:
        Estimates keyed ``null_*`` and the scale table (:func:`ppmech.nulls.scale_table`).
    """
    est, tables = N.run_nulls(run.steps, n_boot, seed, n_perm)
    return est, tables.get("scale", pd.DataFrame())


def curvature_analysis(run: Run, n_boot: int, seed: int) -> dict[str, Estimate]:
    """Mean angle between consecutive velocities (degrees) on a run's saved hidden states."""
    return {"curvature_deg": N.curvature(np.asarray(run.hidden()), n_boot, seed)["mean_deg"]}


def last_window(
    h_parts: list[np.ndarray], window: int, n_boot: int, seed: int
) -> tuple[pd.DataFrame, Estimate | None]:
    """The CV-by-position table of a long run and the global CV of H in its last window."""
    windows = A.cv_by_position(h_parts, window, n_boot, seed)
    if not len(windows):
        return windows, None
    last = windows.iloc[-1]
    return windows, Estimate(
        float(last["cv"]),
        float(last["cv_low"]),
        float(last["cv_high"]),
        len(h_parts),
        f"global CV of H at steps {last['start']}–{last['stop'] - 1}",
    )


def same_prompts_cv(steps: pd.DataFrame, n: int, n_boot: int, seed: int) -> Estimate:
    """Global CV of H on the first ``n`` trajectories (the float32 side of the precision question)."""
    same = steps[steps["trajectory"] < n]
    h = [p[:, 0] for p in A.split_by_trajectory(same, ["H"])]
    return trajectory_bootstrap(h, A.pooled_cv, n_boot, seed, "float32 core run, same prompts")
