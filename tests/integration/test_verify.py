"""`ppmech.verify` end to end on the real SmolLM2, at a tiny size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ppmech.errors import PPMechError
from ppmech.models import LoadedModel
from ppmech.runs import load_run
from ppmech.verify import Sizes, VerifyConfig, check_model, hidden_analyses, layer_analysis, plan_runs, verify

TINY = Sizes(
    core_prompts=5,
    core_tokens=10,
    extra_prompts={"smollm2-135m": 5, "gemma3-270m": 5},
    long_prompts={"smollm2-135m": 5, "gemma3-270m": 5},
    long_tokens=12,
    interp_trajectories=5,
    interp_pairs=3,
    el_trajectories=5,
    layer_trajectories={"smollm2-135m": 2, "gemma3-270m": 2},
    precision_prompts=5,
    window=6,
)


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory) -> tuple[VerifyConfig, float]:
    out = tmp_path_factory.mktemp("verify")
    config = VerifyConfig(out=str(out), models=("smollm2-135m",), extras=True, n_boot=50, custom_sizes=TINY)
    t0 = time.perf_counter()
    verify(config, progress=False)
    return config, time.perf_counter() - t0


def test_plan_covers_the_protocol_and_open_questions() -> None:
    config = VerifyConfig(models=("smollm2-135m", "gemma3-270m"))
    names = {p.name for p in plan_runs(config)}
    for model in ("smollm2-135m", "gemma3-270m"):
        for cond in ("pretrained", "random", "pretrained-wiki-es", "pretrained-wiki-fr", "pretrained-long"):
            assert f"{model}-{cond}" in names
    assert {
        "smollm2-135m-pretrained-ctx25",
        "smollm2-135m-pretrained-ctx100",
        "smollm2-135m-pretrained-bf16",
    } <= names
    core = [p for p in plan_runs(config) if p.condition in ("pretrained", "random")]
    assert all(p.config.prompts == 100 and p.config.new_tokens == 100 and p.config.save_hidden for p in core)
    long = [p for p in plan_runs(config) if p.condition == "pretrained-long"]
    assert all(p.config.new_tokens >= 500 for p in long)


@pytest.mark.slow
def test_verify_writes_a_ledger_and_reuses_runs(verified: tuple[VerifyConfig, float]) -> None:
    config, first = verified
    out = Path(config.out)
    data = json.loads((out / "claims.json").read_text())
    m = data["measurements"]
    for key in (
        "smollm2-135m/pretrained/global_cv",
        "smollm2-135m/random/global_cv",
        "smollm2-135m/pretrained/interp_unique",
        "smollm2-135m/pretrained/el_cos",
        "smollm2-135m/pretrained/el_shuffled_cos",
        "smollm2-135m/pretrained/cv_classical",
        "smollm2-135m/pretrained-layers/final_cv",
    ):
        assert m[key]["value"] is not None, key
    # The ledger's global CV is the run's own statistic (same definition, same steps).
    run = load_run(out / "runs" / "smollm2-135m-pretrained")
    assert m["smollm2-135m/pretrained/global_cv"]["value"] == pytest.approx(
        run.summary["statistics"]["global_cv"]
    )
    # Every open question was run and tested.
    ids = {c["id"] for c in data["claims"]}
    assert {"OQ-es", "OQ-fr", "OQ-long", "OQ-long-window", "OQ-sample", "OQ-ctx25", "OQ-bf16"} <= ids
    assert "CV of H by position" in (out / "claims.md").read_text()
    # The logit lens at the last layer reproduces the recorded h_t.
    assert m["smollm2-135m/pretrained-layers/last_layer_max_abs_diff"]["value"] < 1e-3
    # Second run: every run directory and analysis is reused, so it is much faster and identical.
    t0 = time.perf_counter()
    verify(config, progress=False)
    second = time.perf_counter() - t0
    assert second < first / 2
    again = json.loads((out / "claims.json").read_text())
    assert again["claims"] == data["claims"]


@pytest.mark.slow
def test_hidden_analyses_refuse_another_model(
    verified: tuple[VerifyConfig, float], smollm2_random: LoadedModel
) -> None:
    config, _ = verified
    run = load_run(Path(config.out) / "runs" / "smollm2-135m-pretrained")
    with pytest.raises(PPMechError, match="was recorded with"):
        check_model(run, smollm2_random)
    with pytest.raises(PPMechError, match="was recorded with"):
        hidden_analyses(run, smollm2_random, TINY, 20, 0)


@pytest.mark.slow
def test_layer_table_has_one_row_per_layer(
    verified: tuple[VerifyConfig, float], smollm2: LoadedModel
) -> None:
    config, _ = verified
    run = load_run(Path(config.out) / "runs" / "smollm2-135m-pretrained")
    table = layer_analysis(run, smollm2, 2)
    assert table["layer"].tolist() == list(range(smollm2.identity.num_layers))
    assert np.isfinite(table["global_cv"]).all()
    # Final layer through the lens equals the run's own statistics on those trajectories.
    steps = run.steps[run.steps["trajectory"] < 2]
    h = steps["H"].astype("float64").to_numpy(na_value=np.nan)
    h = h[np.isfinite(h)]
    assert table["mean_H"].iloc[-1] == pytest.approx(h.mean(), rel=1e-4)


def test_verify_rejects_non_embedded_models() -> None:
    with pytest.raises(PPMechError, match="embedded models only"):
        VerifyConfig(models=("my/model",))
