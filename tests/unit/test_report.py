"""The report's pure parts: per-step and per-trajectory numbers, input detection, the page, the axes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppmech.errors import PPMechError
from ppmech.report import figures as F
from ppmech.report.figures.nulls import controls_rows
from ppmech.report.html import table_block
from ppmech.report.sources import detect, load_sources
from ppmech.runs import Run
from ppmech.statistics import energy_statistics


def _steps(k: list[list[float]], v: list[list[float]]) -> pd.DataFrame:
    rows = []
    for traj, (ks, vs) in enumerate(zip(k, v, strict=True)):
        for step, (kk, vv) in enumerate(zip(ks, vs, strict=True)):
            rows.append(
                {"trajectory": traj, "step": step, "token": f"t{step}", "K": kk, "V": vv, "H": kk + vv}
            )
    return pd.DataFrame(rows)


NAN = math.nan
K = [[NAN, 1.0, 2.0, 3.0], [NAN, 2.0, -math.inf, 4.0], [NAN, 0.5, 0.5, 0.5]]
V = [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 3.0, 5.0]]


def test_step_quantiles_by_hand() -> None:
    q = F.step_quantiles(_steps(K, V), "H")
    # Step 0 has no H; step 2 has H = 3 and 1 (the zero-velocity step is left out).
    assert q["step"].tolist() == [1, 2, 3]
    assert q.loc[q["step"] == 1, "median"].item() == 2.0  # H = 2, 4, 1.5
    assert q.loc[q["step"] == 2, "n"].item() == 2
    assert q.loc[q["step"] == 2, "median"].item() == 3.25  # H = 3, 3.5
    assert q.loc[q["step"] == 3, "q25"].item() == pytest.approx(np.quantile([4.0, 6.0, 5.5], 0.25))
    v = F.step_quantiles(_steps(K, V), "V")
    assert v["step"].tolist() == [0, 1, 2, 3] and v.loc[0, "median"] == 1.0


def test_per_trajectory_agrees_with_the_statistics() -> None:
    steps = _steps(K, V)
    per = F.per_trajectory(steps)
    stats = energy_statistics(steps["trajectory"], steps["K"], steps["V"], n_boot=0)
    assert per["n_valid"].tolist() == [3, 2, 3]
    assert per["mean_H"].tolist() == pytest.approx([3.0, 5.0, 10.5 / 3])
    assert per["cv_H"].mean() == pytest.approx(stats.mean_trajectory_cv, rel=1e-12)
    means = per["mean_H"].to_numpy()
    assert means.std() / means.mean() == pytest.approx(stats.trajectory_mean_cv, rel=1e-12)


def test_constant_h_levels_are_round_and_inside_the_data() -> None:
    h = np.linspace(6.3, 9.7, 500)
    levels = F.constant_h_levels(h)
    lo, hi = np.quantile(h, [0.05, 0.95])
    assert all(lo <= x <= hi for x in levels) and len(levels) >= 3
    assert all(abs(x * 2 - round(x * 2)) < 1e-9 for x in levels)  # multiples of 0.5


def test_detect_tells_the_kinds_apart(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"scores": [], "delays": [], "sizes": {}}))
    assert detect(bench) == "monitor-benchmark"
    steer = tmp_path / "steer"
    steer.mkdir()
    (steer / "summary.json").write_text(json.dumps({"kind": "steer"}))
    assert detect(steer) == "steer"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "study.json").write_text("{}")
    assert detect(sweep) == "sweep"
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(PPMechError, match="not a report input"):
        detect(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(PPMechError, match="not valid JSON"):
        detect(broken)
    with pytest.raises(PPMechError, match="no complete run"):
        load_sources([sweep])
    with pytest.raises(PPMechError, match="no inputs"):
        load_sources([])


def test_table_cells_are_escaped_and_named() -> None:
    html = table_block([{"claim": "<b>x</b> & y", "value": 0.123456, "n": 3}], "t")
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in html
    assert '<td class="num" data-col="value">0.123</td>' in html
    assert '<td class="num" data-col="n">3</td>' in html


def test_a_single_point_gets_an_axis_around_it() -> None:
    # Plotly's own range for one point at 0.11 is -0.5..1; ours keeps the point in the middle, close.
    lo, hi = F.padded_range([0.11])
    assert lo < 0.11 < hi and hi - lo < 0.05 and (0.11 - lo) == pytest.approx(hi - 0.11)
    lo, hi = F.padded_range([1.0, None, 3.0, math.nan])  # missing values ignored, 15% margin
    assert (lo, hi) == pytest.approx((0.7, 3.3))
    assert F.padded_range([None, math.nan]) is None
    lo, hi = F.padded_range([1e6], log=True)  # log axes take log10 ranges
    assert lo < 6 < hi


def test_monitor_roc_draws_one_curve_per_detector_and_set() -> None:
    data = {
        "model": {"spec": "toy"},
        "text_scores": {
            "H": {"normal": [1, 2, 3], "shuffled": [2, 4], "wiki-es": [0, None, 1]},
            "NLL": {"normal": [0, 1, None], "shuffled": [5, 6], "wiki-es": [1, 1, 1]},
        },
    }
    fig = F.monitor_roc(data)
    curves = [t for t in fig.data if t.name in ("H", "NLL")]
    assert len(curves) == 4  # 2 detectors x 2 shifted sets; "normal" is the negatives, not a panel
    assert [a.text for a in fig.layout.annotations][:2] == ["shuffled", "wiki-es"]
    for curve in curves:
        assert curve.x[0] == 0 and curve.y[0] == 0 and curve.x[-1] == 1 and curve.y[-1] == 1
    h_shuffled = next(t for t in curves if t.name == "H" and t.xaxis == "x")
    np.testing.assert_allclose(h_shuffled.x, [0, 0, 1 / 3, 2 / 3, 1])  # by hand: normal 1,2,3; shifted 2,4
    assert "AUROC 0.75" in h_shuffled.hovertemplate
    assert sum(t.showlegend is not False for t in curves) == 2  # one legend entry per detector
    with pytest.raises(PPMechError, match="no per-text scores"):
        F.monitor_roc({"scores": []})


def _synthetic_run(k: np.ndarray, v: np.ndarray) -> Run:
    """A run whose steps are the given ``[N, T]`` K and V (step 0 has no K, as recorded)."""
    n, t = k.shape
    rows = [
        {
            "trajectory": i,
            "step": s,
            "token": "x",
            "token_id": (7 * i + 3 * s) % 11,
            "K": np.nan if s == 0 else k[i, s],
            "V": v[i, s],
        }
        for i in range(n)
        for s in range(t)
    ]
    steps = pd.DataFrame(rows)
    steps["H"] = steps["K"] + steps["V"]
    return Run(Path("."), {"statistics": {}}, pd.DataFrame(), steps)


def test_kv_parts_splits_by_trajectory_in_step_order() -> None:
    parts = F.kv_parts(_steps(K, V).sample(frac=1.0, random_state=0))  # shuffled rows
    assert len(parts) == 3 and all(p.shape == (4, 2) for p in parts)
    np.testing.assert_array_equal(parts[2][:, 1], [0.0, 1.0, 3.0, 5.0])
    assert math.isnan(parts[0][0, 0]) and parts[1][2, 0] == -math.inf


def test_null_models_separate_compensating_from_independent_k_and_v() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 1.0, (20, 30))
    compensating = _synthetic_run(7.0 - v + rng.normal(0, 0.1, v.shape), v)  # K = −V + noise: R ≪ 1
    independent = _synthetic_run(rng.normal(7.0, 1.0, v.shape), v)  # R ≈ 1
    fig = F.null_models({"comp": compensating, "indep": independent}, n_perm=50)
    observed = {t.name: t.x[0] for t in fig.data if t.name in ("comp", "indep") and t.xaxis == "x"}
    band = [t for t in fig.data if t.name == "shuffle null (95% band)" and t.xaxis == "x"]
    assert observed["comp"] < 0.05 and abs(observed["indep"] - 1.0) < 0.2
    low = band[0].x[0] - band[0].error_x.arrayminus[0]
    assert observed["comp"] < low  # flatter than its own null: left of the band
    # The middle panel: the observed CV of H against the shuffle-null CV, which is larger when K and V
    # compensate and about the same when they do not.
    cv_obs = {t.name: t.x[0] for t in fig.data if t.name in ("comp", "indep") and t.xaxis == "x2"}
    cv_null = [t.x[0] for t in fig.data if t.name == "shuffle null (95% band)" and t.xaxis == "x2"]
    assert cv_obs["comp"] < 0.2 * cv_null[0] and cv_obs["indep"] == pytest.approx(cv_null[1], rel=0.1)
    # The scale panel: CV falls as c grows (mean H rises by 2 ln c), the same K, V otherwise.
    cv = next(t for t in fig.data if t.name == "indep" and t.xaxis == "x3")
    assert list(cv.x) == list(F.REPORT_SCALES) and np.all(np.diff(cv.y) < 0)
    assert "13%" in F.caption_of(fig)


def test_controls_table_prints_the_shuffle_null_cv_and_corr_kv_beside_r() -> None:
    from ppmech import nulls

    rng = np.random.default_rng(1)
    v = rng.normal(3.0, 1.0, (12, 25))
    run = _synthetic_run(7.0 - v + rng.normal(0, 0.1, v.shape), v)
    estimates, source = F.null_estimates(run, n_perm=50, n_boot=20)
    assert source.startswith("steps.parquet (50 permutations, 20 bootstrap")
    kv = np.concatenate([p[1:] for p in F.kv_parts(run.steps)])  # step 0 has no K
    corr = estimates["null_corr_KV"]["value"]
    assert corr == pytest.approx(np.corrcoef(kv[:, 0], kv[:, 1])[0, 1], rel=1e-12) and corr < -0.9
    h = kv.sum(axis=1)
    c = F.controls(estimates, float(h.std() / h.mean()))
    assert c is not None and c["cv"] < c["cv_null_low"] and c["R"] < c["R_null_low"]
    (row,) = controls_rows({"comp": (estimates, source)})
    # One column per registered null-model column, in registry order: a new null model shows up here.
    assert list(row) == ["run", *(col.header for col in nulls.columns()), "from"]
    null_cv = estimates["null_shuffle_null_cv"]
    assert row["null CV"] == f"{null_cv['value']:.3f} [{null_cv['low']:.3f}, {null_cv['high']:.3f}]"
    assert row["corr(K,V)"].startswith(f"{corr:.3f} [") and row["p"] == estimates["null_shuffle_p"]["value"]
    # A run that stores its estimates in summary.json is read, not recomputed.
    run.summary["nulls"] = {k: {**e, "value": 0.5} for k, e in estimates.items()}
    stored, where = F.null_estimates(run)
    assert where == "summary.json" and stored["null_R"]["value"] == 0.5


# --------------------------------------------------------------------------- readers validate their inputs


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


BENCH = {
    "scores": [{"method": "H", "set": "shuffled", "auroc": 0.7, "tpr_at_5fpr": 0.2}],
    "delays": [],
    "sizes": {},
}


def _report_error(paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``ppmech report`` on ``paths``: exit 2, one line on stderr, no HTML written; the line."""
    from ppmech.cli import main

    out = tmp_path / "out" / "report.html"
    assert main(["report", *map(str, paths), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**BENCH, "scores": "oops"}, "field scores is 'oops', expected a list"),
        ({**BENCH, "scores": [1, 2]}, "field scores[0] is 1, expected an object"),
        (
            {**BENCH, "scores": [{"method": "H", "set": "x", "auroc": "high"}]},
            "field scores[0].auroc is 'high'",
        ),
        (
            {**BENCH, "scores": [{"method": "H", "auroc": 0.5, "tpr_at_5fpr": 0.1}]},
            "field scores[0].set is missing",
        ),
        ({**BENCH, "sizes": [3]}, "field sizes is a list, expected an object"),
        ({**BENCH, "text_scores": {"H": {"normal": [1, "x"]}}}, "field text_scores.H.normal[1] is 'x'"),
    ],
)
def test_a_malformed_benchmark_json_is_one_line_naming_the_file_and_field(
    data: dict[str, object], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _write_json(tmp_path / "bench.json", data)
    line = _report_error([bench], tmp_path, capsys)
    assert f"{bench}: {field}" in line and "ppmech monitor benchmark --json" in line, line


def test_a_claims_json_whose_claims_are_integers_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verify = tmp_path / "verify"
    verify.mkdir()
    claims = _write_json(verify / "claims.json", {"claims": [1, 2], "verdicts": {}, "meta": {"models": []}})
    line = _report_error([verify], tmp_path, capsys)
    assert f"{claims}: field claims[0] is 1, expected an object" in line and "ppmech verify" in line
    _write_json(claims, {"claims": [], "verdicts": {"supported": "3"}})
    assert "field verdicts.supported is '3', expected a whole number" in _report_error(
        [verify], tmp_path, capsys
    )


def test_an_empty_or_headless_items_csv_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = tmp_path / "eval"
    ev.mkdir()
    _write_json(ev / "summary.json", {"kind": "steering-evaluation"})
    items = ev / "items.csv"
    items.write_text("")
    assert f"{items} is empty" in _report_error([ev], tmp_path, capsys)
    items.write_text("natural_score,steered_score\n")
    assert f"{items} holds no prompt" in _report_error([ev], tmp_path, capsys)
    items.write_text("prompt,score\nx,3\n")
    assert f"{items}: column natural_score is missing" in _report_error([ev], tmp_path, capsys)
    items.write_text("natural_score,steered_score\n3,4\n5,lots\n")
    assert f"{items}: column steered_score, row 2, is 'lots', not a number" in _report_error(
        [ev], tmp_path, capsys
    )


def test_malformed_steer_and_monitor_score_inputs_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steer = tmp_path / "steer"
    steer.mkdir()
    _write_json(steer / "summary.json", {"kind": "steer", "comparison": "none"})
    assert f"{steer / 'summary.json'}: field comparison is 'none'" in _report_error([steer], tmp_path, capsys)
    _write_json(steer / "summary.json", {"kind": "steer"})
    pd.DataFrame({"trace": ["natural"], "step": [0], "H": [1.0]}).to_parquet(steer / "steps.parquet")
    assert "steps.parquet: column token is missing" in _report_error([steer], tmp_path, capsys)
    scores = tmp_path / "scores.jsonl"
    good = {"source": "a", "tokens": [{"index": 0, "z_H": 0.1, "cusum": 0.0}]}
    bad = {"source": "b", "tokens": [{"index": 0, "z_H": "high", "cusum": 0.0}]}
    scores.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    assert f"{scores}:2: field tokens[0].z_H is 'high', expected a number or null" in _report_error(
        [scores], tmp_path, capsys
    )


def test_well_formed_inputs_pass_their_schemas(tmp_path: Path) -> None:
    from ppmech.report.sources import load_source

    bench = _write_json(tmp_path / "bench.json", {**BENCH, "text_scores": None, "model": {"spec": "toy"}})
    assert load_source(bench).kind == "monitor-benchmark"
    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps({"tokens": [{"z_H": None, "cusum": 0.0, "token": None}], "alarm_at": None}))
    assert load_source(scores).kind == "monitor-score"


# --------------------------------------------------------------------------- Table 5


def _sized_run(family: str, params: int, weights: str, drift: float, abs_dh: float, **config: object) -> Run:
    summary = {
        "statistics": {"drift": drift, "mean_abs_dH": abs_dh},
        "config": {"model": f"{family}-{params}", "weights": weights, "top_k": None, **config},
        "model": {"model_type": family, "num_parameters": params, "spec": f"{family}-{params}"},
    }
    return Run(Path(f"{family}-{params}-{weights}"), summary, pd.DataFrame(), pd.DataFrame())


def test_table5_figure_plots_drift_and_abs_dh_per_group_with_r_p_and_one_note() -> None:
    from scipy import stats as scipy_stats

    from ppmech.report.figures.sweep import scaling_rows

    drift = {1: 0.05, 2: 0.02, 4: -0.01}
    runs = {
        f"llama-{n}-pre": _sized_run("llama", n * 1000, "pretrained", d, 0.5 + n) for n, d in drift.items()
    }
    runs |= {
        f"llama-{n}-rand": _sized_run("llama", n * 1000, "random", d / 2, 1.0 * n) for n, d in drift.items()
    }
    runs |= {f"gemma-{n}": _sized_run("gemma3_text", n * 5000, "pretrained", 0.1 * n, 2.0) for n in (1, 2)}
    runs["llama-8-topk"] = _sized_run("llama", 8000, "pretrained", 0.3, 9.0, top_k=5)  # another protocol
    groups = F.scaling_groups(runs)
    by_label = {g.label: g for g in groups}
    pre = by_label["llama (pretrained, top_k=None)"]
    assert pre.runs == ["llama-1-pre", "llama-2-pre", "llama-4-pre"]  # the top_k=5 run is not in it
    assert by_label["llama (pretrained, top_k=5)"].runs == ["llama-8-topk"]
    expected = scipy_stats.pearsonr([1000, 2000, 4000], list(drift.values()))
    assert pre.correlations["drift"].r == pytest.approx(expected.statistic)  # type: ignore[union-attr]
    assert pre.correlations["drift"].p == pytest.approx(expected.pvalue)  # type: ignore[union-attr]
    fig = F.scaling(runs, groups)
    drawn = [t for t in fig.data if t.legendgroup == pre.label]
    assert [list(t.y) for t in drawn] == [list(drift.values()), [1.5, 2.5, 4.5]]  # drift, then <|dH|>
    assert f"r = {expected.statistic:.3f}" in drawn[0].name
    assert [a.text for a in fig.layout.annotations] == [title for _, _, title in F.SCALED]
    assert "[nats]" in F.SCALED[1][2] and fig.layout.xaxis.type == "log"
    caption = F.caption_of(fig)
    # One note for every group short of sizes, not one per statistic.
    assert caption.count("needs at least 3") == 1
    assert "gemma3_text (pretrained) (2)" in caption and "llama (pretrained, top_k=5) (1)" in caption
    rows = {r["group"]: r for r in scaling_rows(groups)}
    assert (
        rows[pre.label]["runs"] == "llama-1-pre, llama-2-pre, llama-4-pre" and rows[pre.label]["sizes"] == 3
    )
    assert rows["gemma3_text (pretrained)"]["drift r"] is None


# --------------------------------------------------------------------------- --config


def test_report_reads_a_config_file_and_flags_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ppmech.cli import main

    data = {**BENCH, "text_scores": {"H": {"normal": [1, 2, 3], "shuffled": [2, 4]}}}
    bench = _write_json(tmp_path / "bench.json", data)
    out = tmp_path / "from-file.html"
    config = tmp_path / "report.toml"
    config.write_text(f'paths = ["{bench}"]\nout = "{out}"\ntitle = "from the file"\n')
    assert main(["report", "--config", str(config), "--title", "from the flag"]) == 0
    page = out.read_text()
    assert "<title>from the flag</title>" in page and "ROC curves" in page
    # Paths on the command line replace the file's; an unknown key names the closest valid one.
    assert main(["report", str(bench), "--config", str(config), "--overwrite"]) == 0
    assert "<title>from the file</title>" in out.read_text()
    capsys.readouterr()
    config.write_text('titel = "typo"\n')
    assert main(["report", str(bench), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "titel" in err and "title" in err.replace("titel", "")


def test_png_without_chromium_or_kaleido_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from ppmech.cli import main
    from ppmech.report.export import CHROMIUM_ENV

    bench = _write_json(tmp_path / "bench.json", BENCH)
    out, png = tmp_path / "r.html", tmp_path / "png"
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "no-chromium"))
    assert main(["report", str(bench), "--out", str(out), "--png", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install chromium" in err and "no-chromium" in err
    monkeypatch.setitem(sys.modules, "kaleido", None)  # as if not installed: import raises ImportError
    assert main(["report", str(bench), "--out", str(out), "--png", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ppmech[png]'" in err
    assert not out.exists() and not png.exists()


def test_the_runs_table_prints_the_stored_shuffle_null_cv_and_corr_kv_beside_r() -> None:
    from ppmech import nulls
    from ppmech.report.build import table1_rows

    rng = np.random.default_rng(2)
    v = rng.normal(3.0, 1.0, (10, 20))
    run = _synthetic_run(7.0 - v + rng.normal(0, 0.3, v.shape), v)
    steps = run.steps
    run.summary["statistics"] = energy_statistics(
        steps["trajectory"], steps["K"], steps["V"], n_boot=0
    ).to_dict()
    run.summary["config"] = {"model": "toy", "weights": "pretrained", "decoding": "greedy"}
    (plain,) = table1_rows({"a": run})
    assert "shuffle-null CV" not in plain  # a run that stores no controls: no empty columns
    stored = nulls.conservation_summary(steps, n_perm=50)
    run.summary["conservation"] = stored
    (row,) = table1_rows({"a": run})
    assert row["R"] == stored["R"] and row["corr(K,V)"] == stored["corr_KV"] < -0.5
    assert row["shuffle-null CV"] == stored["shuffle_null_cv"] and row["CV / null CV"] == stored["cv_ratio"]
    assert (
        row["R shuffle band"] == f"[{stored['shuffle_null_R_low']:.3f}, {stored['shuffle_null_R_high']:.3f}]"
    )
