"""Curvature (Hosseini & Fedorenko, NeurIPS 2023): the mean turning angle between consecutive
velocities of recorded hidden states. Pure math; the per-step formula is
:func:`ppmech.mechanics.turning_angles`.
"""

from __future__ import annotations

import math

import numpy as np

from ppmech.mechanics import turning_angles
from ppmech.nulls.base import F64, mean_of_parts
from ppmech.statistics import Estimate, trajectory_bootstrap


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
            parts,
            mean_of_parts,
            n_boot,
            seed,
            "mean angle between consecutive velocities (°)",
            "the curvature",
        )
    }
