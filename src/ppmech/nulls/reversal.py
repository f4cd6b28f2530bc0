"""The time-reversal null: ``V`` reversed in time within each trajectory.

Unlike the pairing shuffle, reversal keeps ``V``'s own step-to-step structure (its
autocorrelation, slow drifts within a trajectory) and each trajectory's mean; only
the alignment of ``V_t`` with ``K_t`` is broken (except at the middle step). If ``K``
and ``V`` compensate step by step, ``R`` on the recorded pairing lies below ``R``
with ``V`` reversed; if the low ``R`` came from shared slow trends, reversal (which
turns a shared trend into an opposite one) can lower ``R`` too, and the claim fails.
Deterministic: no permutations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ppmech.nulls.base import (
    ClaimSpec,
    Column,
    NullResult,
    compensation_ratio,
    kv_parts,
    register,
    valid_pairs,
)
from ppmech.statistics import trajectory_bootstrap


def reverse_v(kv: np.ndarray) -> np.ndarray:
    """``[n, 2]`` (K, V) with V reversed in time (K untouched)."""
    a = np.asarray(kv, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([a[:, 0], a[::-1, 1]])


@register
class Reversal:
    """Pooled ``R`` with ``V`` reversed within each trajectory, and the ledger row against it."""

    name = "reversal"
    alters = "reverses V in time within each trajectory (V's own dynamics and means kept)"
    order = 50
    columns = (Column("R, V reversed", "null_reversal_R"),)
    claims = (
        ClaimSpec(
            "N-reversal-{tag}",
            "beyond the paper: time-reversal null",
            "K and V compensate step by step: R on the recorded pairing is below R with V reversed "
            "in time within trajectories ({weights})",
            "implied by 'conservation'",
            "{model}/{weights}/null_R",
            "less_than",
            other="{model}/{weights}/null_reversal_R",
        ),
    )

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        reversed_parts = [reverse_v(p) for p in valid_pairs(kv_parts(steps))]
        return NullResult(
            {
                "null_reversal_R": trajectory_bootstrap(
                    reversed_parts,
                    compensation_ratio,
                    n_boot,
                    seed,
                    "pooled R with V reversed in time within trajectories",
                    "the time-reversal null",
                )
            }
        )
