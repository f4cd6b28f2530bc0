"""`ppmech.claims.verify`'s model-facing parts on the real SmolLM2, at a tiny size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ppmech import nulls as N
from ppmech.claims.verify import (
    QUICK,
    VerifyConfig,
    check_model,
    hidden_analyses,
    layer_analysis,
    plan_runs,
    steps_analyses,
)
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig, measure
from ppmech.models.identity import LoadedModel
from ppmech.runs import Run, load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("verify-int") / "run"
    config = MeasureConfig(model="smollm2-135m", prompts=5, new_tokens=10, save_hidden=True, n_boot=50)
    measure(config, out, progress=False)
    return load_run(out)


def test_plan_covers_the_protocol_and_open_questions() -> None:
    plans = plan_runs(VerifyConfig(models=("smollm2-135m", "gemma3-270m")))
    names = {p.name for p in plans}
    for model in ("smollm2-135m", "gemma3-270m"):
        for cond in ("pretrained", "random", "pretrained-wiki-es", "pretrained-wiki-fr", "pretrained-long"):
            assert f"{model}-{cond}" in names
    assert {
        "smollm2-135m-pretrained-ctx25",
        "smollm2-135m-pretrained-ctx100",
        "smollm2-135m-pretrained-bf16",
    } <= names
    core = [p for p in plans if p.condition in ("pretrained", "random")]
    assert all(p.config.prompts == 100 and p.config.new_tokens == 100 and p.config.save_hidden for p in core)
    assert all(p.config.new_tokens >= 500 for p in plans if p.condition == "pretrained-long")
    # Curvature on natural text: both weights teacher-forced on the same articles, states saved.
    teacher = [p for p in plans if p.condition.endswith("-teacher")]
    assert {p.config.weights for p in teacher} == {"pretrained", "random"} and len(teacher) == 4
    assert all(p.config.decoding == "teacher" and p.config.save_hidden for p in teacher)
    assert {p.config.prompts for p in teacher} == {20}
    # Model by model, so a partial ledger is possible early.
    models = [p.model for p in plans]
    assert models == sorted(models, key=["smollm2-135m", "gemma3-270m"].index)


@pytest.mark.slow
def test_steps_analyses_agree_with_the_run_statistics(run: Run) -> None:
    est = steps_analyses(run, 50, 0)
    stats = run.summary["statistics"]
    assert est["global_cv"].value == pytest.approx(stats["global_cv"])
    assert est["mean_trajectory_cv"].value == pytest.approx(stats["mean_trajectory_cv"])
    assert est["kv_ratio_of_means"].value == pytest.approx(stats["kv_ratio"])
    assert est["dH_abs"].value == pytest.approx(stats["mean_abs_dH"])
    assert est["global_cv"].low <= est["global_cv"].value <= est["global_cv"].high


@pytest.mark.slow
def test_hidden_analyses_on_the_real_model(run: Run, smollm2: LoadedModel) -> None:
    est = hidden_analyses(run, smollm2, QUICK, 50, 0)
    assert 1.0 <= est["interp_unique"].value <= 11.0
    assert 0.0 <= est["interp_within"].value <= 1.0
    assert -1.0 <= est["el_cos"].value <= 1.0
    assert est["el_rel_residual"].value > 0 and est["el_force_over_lhs"].value > 0


@pytest.mark.slow
def test_hidden_analyses_refuse_another_model(run: Run, smollm2_random: LoadedModel) -> None:
    with pytest.raises(PPMechError, match="was recorded with"):
        check_model(run, smollm2_random)
    with pytest.raises(PPMechError, match="was recorded with"):
        hidden_analyses(run, smollm2_random, QUICK, 20, 0)


@pytest.mark.slow
def test_layer_table_reproduces_the_recorded_states(run: Run, smollm2: LoadedModel) -> None:
    table = layer_analysis(run, smollm2, 2)
    assert table["layer"].tolist() == list(range(smollm2.identity.num_layers))
    assert np.isfinite(table["global_cv"]).all()
    assert table.attrs["last_layer_max_abs_diff"] < 1e-3
    # The last layer through the lens gives the run's own H on those trajectories.
    steps = run.steps[run.steps["trajectory"] < 2]
    h = steps["H"].astype("float64").to_numpy(na_value=np.nan)
    assert table["mean_H"].iloc[-1] == pytest.approx(h[np.isfinite(h)].mean(), rel=1e-4)
    # Each layer's controls: R and the smallest c with CV < 13% (2 trajectories: too few for the
    # shuffle band, which stays NaN).
    kv = steps[["K", "V"]].astype("float64").to_numpy(na_value=np.nan)
    kv = kv[np.isfinite(kv).all(1)]
    assert table["R"].iloc[-1] == pytest.approx(N.compensation_ratio(kv), rel=1e-3)
    assert table["13% holds for c >"].iloc[-1] == pytest.approx(N.threshold_scale(kv), rel=1e-3)
    assert table["null CV"].isna().all()


def test_verify_rejects_non_embedded_models(tmp_path: Path) -> None:
    with pytest.raises(PPMechError, match="embedded models only"):
        VerifyConfig(out=str(tmp_path), models=("my/model",))


def test_reuse_is_keyed_on_protocol_settings_only() -> None:
    from ppmech.claims.verify.store import protocol_differences

    planned = MeasureConfig(model="smollm2-135m", prompts=5, new_tokens=10)
    stored = planned.to_dict()
    assert protocol_differences(stored, planned) == []
    # Execution and analysis settings never block reuse.
    assert protocol_differences(stored | {"device": "cuda", "batch_size": 1, "n_boot": 7}, planned) == []
    # A protocol setting does.
    assert protocol_differences(stored | {"top_k": 3}, planned) == ["top_k"]
    # A setting added after the run was recorded compares as its default.
    older = {k: v for k, v in stored.items() if k != "text_field"}
    assert protocol_differences(older, planned) == []
