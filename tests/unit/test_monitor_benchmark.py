"""Benchmark metrics by hand; the combined alarm's rate; the benchmark config shares its fields."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tests.unit.test_monitor import IDENTITY  # the one toy identity of the monitor tests

from ppmech.errors import PPMechError
from ppmech.monitor.baselines import Baselines, shrunk_covariance
from ppmech.monitor.benchmark import BenchmarkConfig
from ppmech.monitor.calibration import MonitorConfig, MonitorSettings, cusum_max, fit_calibration
from ppmech.monitor.detection import auroc, roc_curve, tpr_at_fpr
from ppmech.monitor.evaluation import ALARMS, delay_stats, false_alarm_table
from ppmech.monitor.results import score_trace
from ppmech.monitor.scoring import TokenTrace
from ppmech.settings import ModelSpec, Role, keys, role_of


def _traces(seed: int, n: int, length: int = 16) -> list[TokenTrace]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.gamma(2.0, size=length)
        k = rng.normal(7.0, 1.0, size=length)
        k[0] = np.nan
        out.append(
            TokenTrace(
                token_ids=np.arange(length, dtype=np.int64),
                V=v,
                K=k,
                H=k + v,
                entropy=rng.gamma(2.0, size=length),
                msp=rng.uniform(size=length),
                neg_lse=rng.normal(-20, 1, size=length),
            )
        )
    return out


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


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequences": 5},
        {"tokens": 8},
        {"splice_at": 62},
        {"splice_at": 2},
        {"calibration_sequences": 3},
        {"false_alarm_sequences": -1},
    ],
)
def test_benchmark_config_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(PPMechError):
        BenchmarkConfig(**kwargs)  # type: ignore[arg-type]


def test_shrunk_covariance_matches_the_ledoit_wolf_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)) @ np.diag([1.0, 2.0, 0.5, 1.0, 3.0])
    cov, lam = shrunk_covariance(x)
    # Reference: the 2004 formulas term by term.
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = np.linalg.norm(s - mu * np.eye(p), "fro") ** 2 / p
    b2 = sum(np.linalg.norm(np.outer(r, r) - s, "fro") ** 2 for r in xc) / n**2 / p
    ref_lam = min(b2, d2) / d2
    assert lam == pytest.approx(ref_lam)
    np.testing.assert_allclose(cov, ref_lam * mu * np.eye(p) + (1 - ref_lam) * s)
    # More dimensions than samples: still invertible.
    wide, lam_wide = shrunk_covariance(rng.normal(size=(10, 40)))
    assert 0 < lam_wide <= 1 and np.linalg.eigvalsh(wide).min() > 0


def test_baselines_by_hand() -> None:
    states = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    base = Baselines.fit([100.0, 110.0, 90.0, 100.0], states)
    assert base.length_score(100.0) == 0.0
    assert base.length_score(100.0 + 2 * np.std([100.0, 110.0, 90.0, 100.0], ddof=1)) == pytest.approx(2.0)
    assert base.state_score(np.array([1.0, 1.0])) == 0.0  # the mean
    far, near = base.state_score(np.array([9.0, 9.0])), base.state_score(np.array([2.0, 1.0]))
    assert far > near > 0


def test_false_alarm_table_counts_alarms_per_kind_with_intervals() -> None:
    cal = fit_calibration(_traces(0, 60), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20))
    kinds = {"a": _traces(1, 200), "b": _traces(2, 50, length=40)}
    table = false_alarm_table(cal, kinds)
    assert list(table["normal text"].unique()) == ["a", "b"] and len(table) == 2 * len(ALARMS)
    row = table[(table["normal text"] == "a") & (table["alarm"] == "anomaly flag")].iloc[0]
    expected = sum(cal.anomaly(t.H) > cal.anomaly_threshold for t in kinds["a"])
    assert row["alarms"] == expected and row["texts"] == 200
    assert row["CI low"] <= row["rate"] <= row["CI high"]
    by = table.set_index(["normal text", "alarm"])["alarms"]
    for kind in kinds:
        # Either alarm at its own threshold fires at least as often as each; the combined
        # alarm is one of "anomaly or CUSUM" at higher thresholds, so never more than "either".
        assert by[(kind, "either, separate thresholds")] >= max(
            by[(kind, "anomaly flag")], by[(kind, "CUSUM on z_H")]
        )
        assert by[(kind, "combined alarm")] <= by[(kind, "either, separate thresholds")]


def test_combined_alarm_is_anomaly_or_cusum_at_its_own_thresholds() -> None:
    cal = fit_calibration(_traces(0, 400), IDENTITY, MonitorConfig(model="toy", sequences=400, tokens=20))
    assert cal.combined_anomaly_threshold >= cal.anomaly_threshold
    assert cal.combined_cusum_threshold >= cal.signals["H"].cusum_threshold
    fresh = _traces(3, 2000)
    hits = 0
    for t in fresh:
        seq = score_trace(t, cal).sequence
        by_anomaly = cal.anomaly(t.H) > cal.combined_anomaly_threshold
        by_cusum = cusum_max(cal, t) > cal.combined_cusum_threshold
        assert seq.alarm == (by_anomaly or by_cusum)
        assert seq.alarm_by == {(True, True): "both", (True, False): "anomaly", (False, True): "cusum"}.get(
            (by_anomaly, by_cusum)
        )
        hits += seq.alarm
    # Split conformal on 200 held-out texts: rate <= alpha in expectation over calibrations; one
    # calibration's rate on 2000 fresh texts stays within a few binomial standard errors of it.
    assert hits / len(fresh) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
    # Either separate alarm fires on more normal texts than the combined one.
    either = sum(
        cal.anomaly(t.H) > cal.anomaly_threshold or cusum_max(cal, t) > cal.signals["H"].cusum_threshold
        for t in fresh
    )
    assert either > hits


def test_benchmark_config_shares_the_model_and_monitor_fields() -> None:
    shared = keys(ModelSpec) + keys(MonitorSettings)
    bench = BenchmarkConfig(
        model="gemma3-270m", dtype="bfloat16", device="cpu", seed=7, tokens=32, splice_at=16, alpha=0.1,
        holdout_fraction=0.4, cusum_k=0.7, z_clip=4.0, batch_size=3, positions="openings",
        calibration_sequences=50,
    )  # fmt: skip
    mcfg = bench.monitor_config()
    assert isinstance(mcfg, MonitorConfig) and mcfg.sequences == 50
    for name in shared:
        assert getattr(mcfg, name) == getattr(bench, name), name
    assert role_of(BenchmarkConfig, "batch_size") is Role.EXECUTION
    assert role_of(MonitorConfig, "positions") is Role.PROTOCOL
    # The library default equals measure's: auto with out-of-memory back-off.
    assert MonitorConfig().batch_size == BenchmarkConfig().batch_size == "auto"
    with pytest.raises(PPMechError, match="batch_size"):
        MonitorConfig(batch_size=0)


def test_roc_curve_by_hand() -> None:
    # normal 1, 2, 3; shifted 2, 4. Thresholds 4, 3, 2, 1 (flag when score >= threshold):
    # >= 4: fpr 0, tpr 1/2; >= 3: 1/3, 1/2; >= 2: 2/3, 1; >= 1: 1, 1.
    fpr, tpr = roc_curve([1, 2, 3], [2, 4])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    # Its trapezoid area, 1/6 + 1/4 + 1/3, is the AUROC with ties counted one half:
    # shifted 2 beats 1, ties 2, loses to 3 (1.5 of 3); shifted 4 beats all three: 4.5 / 6.
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert auroc([1, 2, 3], [2, 4]) == pytest.approx(0.75)
    # NaN dropped; an empty side gives no curve.
    assert len(roc_curve([np.nan], [1.0])[0]) == 0
    f2, t2 = roc_curve([1, 2, 3, np.nan], [2, 4])
    np.testing.assert_allclose(f2, fpr)
    np.testing.assert_allclose(t2, tpr)


def test_roc_area_equals_auroc_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float)
        b = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float) + rng.integers(0, 3)
        fpr, tpr = roc_curve(a, b)
        assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(a, b))


def test_monitor_commands_take_the_shared_flags_and_a_config_file(tmp_path: Path) -> None:
    from ppmech.cli import build_parser
    from ppmech.cli.config import config_from_args

    toml = tmp_path / "monitor.toml"
    toml.write_text('positions = "openings"\nsequences = 40\nbatch_size = 8\n')
    parser = build_parser()
    args = parser.parse_args(
        [
            "monitor",
            "calibrate",
            "--config",
            str(toml),
            "--sequences",
            "30",
            "--revision",
            "main",
            "--out",
            "c",
        ]
    )
    # The file's values, overridden by the flags given; the rest are the dataclass's defaults.
    assert config_from_args(MonitorConfig, args) == MonitorConfig(
        positions="openings", sequences=30, batch_size=8, revision="main"
    )
    args = parser.parse_args(["monitor", "benchmark", "--batch-size", "auto", "--positions", "later"])
    assert config_from_args(BenchmarkConfig, args) == BenchmarkConfig(positions="later")
    args = parser.parse_args(["monitor", "score", "--calibration", "c.json", "--dtype", "bfloat16", "-"])
    assert args.dtype == "bfloat16" and "model" not in vars(args)  # omitted: the calibration's
