"""The scale null: ``h → c·h`` adds ``2 ln c`` to every ``K`` and ``H`` and nothing else.

The CV of ``H`` moves with ``c`` while ``std(H)`` and ``R`` do not, so a CV
threshold is a statement about the units of ``h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ppmech.errors import PPMechError
from ppmech.nulls.base import (
    ClaimSpec,
    Column,
    NullResult,
    flatness,
    kv_parts,
    padded_pairs,
    register,
    valid_pairs,
)
from ppmech.statistics import Estimate, trajectory_bootstrap

SCALES: tuple[float, ...] = (0.5, 1.0, 2.0, 10.0)
"""The rescalings ``h → c·h`` of the scale null."""

PAPER_CV_THRESHOLD = 0.13
"""The paper's conservation criterion (§D.3.2 key finding 1): global CV of the energy below 13%."""

UNIT_RANGE: tuple[float, float] = (0.5, 2.0)
"""The range of ``c`` over which a CV claim must hold to survive the scale control (a factor of 2
either way: the units of ``h`` are a choice, e.g. a norm's gain, and the paper fixes none)."""


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
        stats = flatness(ks[None], np.where(mask, v, 0.0)[None], mask)
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


def threshold_scale(kv: np.ndarray, threshold: float = PAPER_CV_THRESHOLD) -> float:
    """The smallest ``c`` with global CV of ``H`` below ``threshold`` under ``h → c·h``.

    ``CV(c) = std(H) / (mean(H) + 2 ln c)`` falls as ``c`` grows (while the mean is
    positive), so the threshold holds for every ``c > exp((std/threshold − mean)/2)``.
    """
    h = kv[:, 0] + kv[:, 1]
    if h.size == 0:
        return float("nan")
    return float(math.exp((float(h.std()) / threshold - float(h.mean())) / 2.0))


@register
class Scale:
    """The scale null: CV of ``H`` at each ``c``, the largest, ``std(H)``, and the range of ``c``
    over which the paper's 13% holds (``c > c_min``)."""

    name = "scale"
    alters = "rescales h by c (K and H shift by 2 ln c; V, std(H) and R do not change)"
    order = 30
    columns = (
        Column("std H", "null_scale_std_H", False),
        *(Column(f"CV c={c:g}", f"null_scale_cv_c{c:g}", False) for c in SCALES),
        Column("13% holds for c >", "null_scale_c_min"),
    )
    claims = (
        ClaimSpec(
            "N-scale-{tag}",
            "beyond the paper: scale null",
            "Conservation (global CV < 13%) survives expressing h in other units, h → c·h for every "
            "c in {{0.5, 1, 2, 10}} (largest CV) ({weights})",
            "CV < 13%",
            "{model}/{weights}/null_scale_max_cv",
            "below",
            PAPER_CV_THRESHOLD,
        ),
    )

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        parts = kv_parts(steps)
        out = {f"null_scale_{k}": v for k, v in scale_controls(parts, SCALES, n_boot, seed).items()}
        out["null_scale_c_min"] = trajectory_bootstrap(
            valid_pairs(parts),
            threshold_scale,
            n_boot,
            seed,
            f"smallest c with global CV < {PAPER_CV_THRESHOLD:g} under h → c·h",
            "the scale null",
        )
        return NullResult(out, {"scale": scale_table(parts)})
