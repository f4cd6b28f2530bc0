"""Detection metrics over per-text scores (pure): higher scores should mean "shifted".

Normal texts are the negatives, shifted ones the positives. Used by the monitor
benchmark (:mod:`ppmech.monitor.benchmark`) and by the report's ROC figure.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray


def auroc(normal: ArrayLike, shifted: ArrayLike) -> float:
    """Area under the ROC curve: ``P(shifted > normal) + ½ P(shifted == normal)``.

    NaN scores are dropped. Returns NaN if either side is empty.
    """
    a = np.asarray(normal, dtype=np.float64)
    b = np.asarray(shifted, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return float("nan")
    greater = (b[:, None] > a[None, :]).sum()
    equal = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * equal) / (len(a) * len(b)))


def roc_curve(normal: ArrayLike, shifted: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The empirical ROC curve of "shifted scores higher": ``(fpr, tpr)``, each ``[k]``.

    The curve runs from (0, 0) to (1, 1).

    One point per distinct score, thresholds from high to low (a text counts as flagged when its
    score is at or above the threshold). Tied scores move both rates at once, so the curve's
    trapezoid area equals :func:`auroc` (ties ½). NaN scores are dropped; either side empty gives
    two empty arrays.
    """
    a = np.asarray(normal, dtype=np.float64)
    b = np.asarray(shifted, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return np.zeros(0), np.zeros(0)
    thresholds = np.unique(np.concatenate([a, b]))[::-1]
    fpr = np.searchsorted(np.sort(-a), -thresholds, side="right") / len(a)
    tpr = np.searchsorted(np.sort(-b), -thresholds, side="right") / len(b)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def tpr_at_fpr(normal: ArrayLike, shifted: ArrayLike, fpr: float = 0.05) -> float:
    """Fraction of shifted scores above the threshold that at most ``fpr`` of normal scores exceed.

    The threshold is the ``(m+1)``-th largest normal score with ``m = floor(fpr * N)``;
    a shifted text counts only if it scores strictly above it (conservative under ties).
    """
    a = np.sort(np.asarray(normal, dtype=np.float64)[~np.isnan(np.asarray(normal, dtype=np.float64))])[::-1]
    b = np.asarray(shifted, dtype=np.float64)
    b = b[~np.isnan(b)]
    if not len(a) or not len(b):
        return float("nan")
    m = math.floor(fpr * len(a) + 1e-9)
    threshold = a[min(m, len(a) - 1)]
    return float(np.mean(b > threshold))
