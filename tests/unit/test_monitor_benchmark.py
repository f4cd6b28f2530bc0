"""Benchmark metrics by hand, and the CLI taking its defaults from the config dataclasses."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from ppmech.cli import build_parser
from ppmech.cli.config import config_from_args
from ppmech.errors import PPMechError
from ppmech.monitor.benchmark import BenchmarkConfig, auroc, delay_stats, tpr_at_fpr
from ppmech.monitor.calibration import MonitorConfig


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


def test_cli_defaults_come_from_the_config_dataclasses() -> None:
    """Omitted flags of `monitor calibrate`/`benchmark` leave the defaults to the dataclasses."""
    parser = build_parser()
    args = parser.parse_args(["monitor", "calibrate", "--out", "cal.json"])
    config_fields = {f.name for f in fields(MonitorConfig)}
    assert not config_fields & set(vars(args))  # no default written in the CLI
    assert config_from_args(MonitorConfig, args) == MonitorConfig()
    args = parser.parse_args(["monitor", "calibrate", "--out", "c.json", "--z-clip", "3", "--model", "x"])
    assert config_from_args(MonitorConfig, args) == MonitorConfig(z_clip=3.0, model="x")
    args = parser.parse_args(["monitor", "benchmark"])
    assert not {f.name for f in fields(BenchmarkConfig)} & set(vars(args))
    assert config_from_args(BenchmarkConfig, args) == BenchmarkConfig()


@pytest.mark.parametrize("kwargs", [{"sequences": 5}, {"tokens": 8}, {"splice_at": 62}, {"splice_at": 2}])
def test_benchmark_config_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(PPMechError):
        BenchmarkConfig(**kwargs)  # type: ignore[arg-type]
