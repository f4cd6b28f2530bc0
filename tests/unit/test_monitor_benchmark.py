"""Benchmark metrics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppmech.monitor.benchmark import auroc, delay_stats, tpr_at_fpr


def test_auroc_by_hand() -> None:
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    # pairs (shifted, normal): 2>1, 2=2, 2<3 ; 3>1, 3>2, 3=3 -> (1 + .5 + 0 + 1 + 1 + .5) / 6
    assert auroc([1, 2, 3], [2, 3]) == pytest.approx(4 / 6)
    assert auroc([1, np.nan, 2], [3]) == 1.0
    assert math.isnan(auroc([], [1]))


def test_tpr_at_fpr_by_hand() -> None:
    normal = list(range(100))  # 0..99; 5% of 100 = 5 may exceed: threshold is 94
    assert tpr_at_fpr(normal, [94, 95, 96, 200], 0.05) == pytest.approx(3 / 4)
    assert tpr_at_fpr(normal, [10, 20], 0.05) == 0.0
    # 10 normals: floor(0.5) = 0 may exceed, threshold = the maximum
    assert tpr_at_fpr(list(range(10)), [9, 9.5], 0.05) == 0.5


def test_delay_stats_by_hand() -> None:
    paths = [
        np.array([0, 0, 0, 5, 6]),
        np.array([5, 0, 0, 0, 0]),
        np.array([0, 0, 0, 0, 0]),
        np.array([0, 0, 1, 1, 9]),
    ]
    det, false, med, mean = delay_stats(paths, threshold=2.0, splice=[2, 2, 2, 2])
    assert det == 0.5  # paths 0 (delay 1) and 3 (delay 2)
    assert false == 0.25  # path 1 alarms before the splice
    assert med == pytest.approx(1.5)
    assert mean == pytest.approx(1.5)
    det, false, med, _ = delay_stats([np.zeros(3)], 1.0, [1])
    assert det == 0.0 and false == 0.0 and math.isnan(med)
