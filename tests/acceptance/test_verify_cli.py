"""`ppmech analyze` and `ppmech verify` as a user runs them, bad input included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import TINY_CONFIGS

from ppmech.cli import main
from ppmech.models.identity import LoadedModel


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _measure(model: str, out: Path, prompts: int = 5, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "measure",
        "--model",
        model,
        "--prompts",
        str(prompts),
        "--context-tokens",
        "16",
        "--new-tokens",
        "8",
        "--out",
        str(out),
        "--no-progress",
        "--n-boot",
        "20",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small runs of a tiny llama (one with hidden states) and one with too few trajectories."""
    tiny = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("verify-cli")
    made = {"hidden": root / "hidden", "plain": root / "plain", "few": root / "few"}
    assert main(_measure(tiny, made["hidden"], extra=("--save-hidden",))) == 0
    assert main(_measure(tiny, made["plain"], extra=("--weights", "random"))) == 0
    assert main(_measure(tiny, made["few"], prompts=3)) == 0
    return made


def test_analyze_prints_every_analysis_and_writes_json(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "a.json"
    code, out, err = _run(
        [
            "analyze",
            str(runs["hidden"]),
            "--hidden",
            "--layers",
            "2",
            "--window",
            "4",
            "--trajectories",
            "5",
            "--pairs",
            "3",
            "--n-boot",
            "50",
            "--json",
            str(out_json),
        ],
        capsys,
    )
    assert code == 0, err
    for needle in (
        "global_cv",
        "cv_classical",
        "kv_ratio_of_means",
        "interp_unique",
        "el_cos",
        "entropy_var",
        "null_R",
        "null_shuffle_p",
        "null_r2_token",
        "null_resid_R",
        "curvature_deg",
    ):
        assert needle in out
    assert "Per-layer mechanics" in out and "CV of H by position" in out and "Scale null" in out
    # Beside R: its shuffle band, the shuffle-null CV and corr(K, V) (issue 21), from the same estimates.
    line = next(x for x in out.splitlines() if x.startswith(f"{runs['hidden']}: R = "))
    assert "shuffle band [" in line and "shuffle-null CV" in line and "corr(K, V)" in line
    assert "1 − R" in line and "CV / null CV" in line
    data = json.loads(out_json.read_text())
    entry = data[str(runs["hidden"])]
    assert len(entry["layers"]) == 2  # the tiny llama has 2 decoder layers
    cos = entry["estimates"]["el_cos"]
    assert -1.0 <= cos["value"] <= 1.0 and cos["low"] <= cos["high"]
    # The scale null: std H and R do not move with c, the CV does.
    scale = pd.DataFrame(entry["scale"])
    assert np.ptp(scale["std_H"]) < 1e-9 and np.ptp(scale["R"]) < 1e-9 and np.ptp(scale["global_cv"]) > 0
    r = entry["estimates"]["null_R"]["value"]
    assert scale["R"].iloc[0] == pytest.approx(r)
    assert 0.0 <= entry["estimates"]["null_shuffle_p"]["value"] <= 1.0
    assert 0.0 <= entry["estimates"]["curvature_deg"]["value"] <= 180.0
    est = entry["estimates"]
    assert -1.0 <= est["null_corr_KV"]["value"] <= 1.0
    assert est["null_one_minus_R"]["value"] == pytest.approx(1.0 - r)
    assert est["null_shuffle_null_cv"]["low"] <= est["null_shuffle_null_cv"]["high"]
    # summary.json carries the same controls (point values) for every measured run.
    stored = json.loads((runs["hidden"] / "summary.json").read_text())["conservation"]
    assert stored["R"] == pytest.approx(r) and stored["corr_KV"] == pytest.approx(
        est["null_corr_KV"]["value"]
    )
    assert stored["shuffle_null_cv"] is not None and stored["cv_ratio"] is not None
    # CV / null CV = observed global CV of H over the null's mean CV.
    assert est["null_cv_ratio"]["value"] == pytest.approx(
        est["global_cv"]["value"] / est["null_shuffle_null_cv"]["value"], rel=1e-6
    )


def test_analyze_hidden_without_saved_states_is_a_one_line_error(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["analyze", str(runs["plain"]), "--hidden", "--n-boot", "20"], capsys)
    assert code == 2
    assert "no saved hidden states" in err and len(err.strip().splitlines()) == 1


def test_analyze_hidden_with_a_different_model_is_a_one_line_error(
    tiny_model_dir: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run is analysed with the model that recorded it; a replaced model directory is refused."""
    import shutil

    llama, qwen2 = tiny_model_dir("llama"), tiny_model_dir("qwen2")
    model = tmp_path / "model"
    shutil.copytree(llama, model)
    run = tmp_path / "run"
    assert main(_measure(str(model), run, extra=("--save-hidden",))) == 0
    shutil.rmtree(model)
    shutil.copytree(qwen2, model)
    capsys.readouterr()
    code, _, err = _run(["analyze", str(run), "--hidden", "--n-boot", "20"], capsys)
    assert code == 2
    assert "was recorded with" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_analyze_too_few_trajectories_for_a_ci(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["analyze", str(runs["few"])], capsys)
    assert code == 2
    assert "at least 5 trajectories" in err and len(err.strip().splitlines()) == 1


def test_analyze_old_schema_is_a_one_line_error(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["plain"], old)
    summary = json.loads((old / "summary.json").read_text())
    summary["schema_version"] = 0
    (old / "summary.json").write_text(json.dumps(summary))
    code, _, err = _run(["analyze", str(old)], capsys)
    assert code == 2
    assert "schema" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sizes(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Runs of three sizes (1, 2, 3 layers) of one tiny llama family, same protocol."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("sizes")
    made = []
    for layers in (1, 2, 3):
        cfg = dict(TINY_CONFIGS["llama"], num_hidden_layers=layers)
        model_type = cfg.pop("model_type")
        torch.manual_seed(layers)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
        model.save_pretrained(root / f"model-{layers}")
        smollm2.tokenizer.save_pretrained(root / f"model-{layers}")
        made.append(root / f"run-{layers}")
        assert main(_measure(str(root / f"model-{layers}"), made[-1])) == 0
    return made


def test_correlation_across_sizes_matches_scipy_on_the_summaries(
    sizes: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scipy import stats

    out_json = tmp_path / "r.json"
    code, out, err = _run(
        ["analyze", *map(str, sizes), "--correlate", "drift", "--json", str(out_json)], capsys
    )
    assert code == 0, err
    summaries = [json.loads((d / "summary.json").read_text()) for d in sizes]
    params = [s["model"]["num_parameters"] for s in summaries]
    assert len(set(params)) == 3
    expected = stats.pearsonr(params, [s["statistics"]["drift"] for s in summaries])
    saved = json.loads(out_json.read_text())
    assert saved["n"] == 3 and saved["metric"] == "drift"
    assert saved["r"] == pytest.approx(expected.statistic) and saved["p"] == pytest.approx(expected.pvalue)
    assert f"Pearson r = {expected.statistic:.4f}" in out


def test_correlation_needs_three_sizes(sizes: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["analyze", *map(str, sizes[:2]), "--correlate", "drift"], capsys)
    assert code == 2
    assert "at least 3 sizes" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["analyze", *map(str, sizes), "--correlate", "no_such_metric"], capsys)
    assert code == 2 and "unknown metric" in err


def test_correlation_refuses_mixed_families_and_protocols(
    sizes: list[Path],
    runs: dict[str, Path],
    tiny_model_dir: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(["analyze", *map(str, sizes[:2]), str(runs["plain"]), "--correlate", "drift"], capsys)
    assert code == 2
    assert "different protocols (weights)" in err and len(err.strip().splitlines()) == 1
    qwen = tmp_path / "qwen"
    assert main(_measure(tiny_model_dir("qwen2"), qwen)) == 0
    capsys.readouterr()
    code, _, err = _run(["analyze", *map(str, sizes[:2]), str(qwen), "--correlate", "drift"], capsys)
    assert code == 2
    assert "one model family (got llama, qwen2)" in err and len(err.strip().splitlines()) == 1


def test_verify_refuses_other_models(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(["verify", "--models", "gpt-5", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "embedded models only" in err and len(err.strip().splitlines()) == 1


def test_verify_refuses_a_repeated_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Issue 18: `--models smollm2-135m smollm2-135m` counted every claim twice (151 rows, doubled verdicts).
    code, _, err = _run(
        ["verify", "--models", "smollm2-135m", "smollm2-135m", "--out", str(tmp_path / "v")], capsys
    )
    assert code == 2
    assert "names smollm2-135m more than once" in err and "--models smollm2-135m" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-boot", "0"], "--n-boot must be at least 40 for the ledger"),
        (["--out", "FILE"], "is a file, not a directory"),
    ],
)
def test_verify_bad_settings_are_one_line_exit_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    argv = ["verify", "--quick", "--out", str(tmp_path / "v"), *extra]
    code, _, err = _run([str(blocker) if a == "FILE" else a for a in argv], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists() and blocker.read_text() == "kept"


@pytest.mark.parametrize("flag", ["--n-boot", "--trajectories", "--pairs", "--layers"])
def test_analyze_negative_sizes_are_one_line_exit_2(
    flag: str, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["analyze", str(runs["hidden"]), flag, "-1"], capsys)
    assert code == 2
    assert f"{flag} must be at least" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str]:
    """One `ppmech verify --quick` on SmolLM2 (all conditions, tiny sizes)."""
    out = tmp_path_factory.mktemp("verify-quick") / "v"
    args = [
        "verify",
        "--quick",
        "--models",
        "smollm2-135m",
        "--out",
        str(out),
        "--n-boot",
        "50",
        "--no-progress",
    ]
    code = main(args)
    assert code == 0
    return out, args, (out / "claims.json").read_text()


@pytest.mark.slow
def test_verify_quick_writes_the_ledger(quick: tuple[Path, list[str], str]) -> None:
    out, _, text = quick
    md = (out / "claims.md").read_text()
    assert "| T1-cv-pre | smollm2-135m |" in md
    for section in (
        "## Definitions used",
        "## Ambiguities and inconsistencies",
        "CV of H by position",
        "Per-layer",
    ):
        assert section in md
    data = json.loads(text)
    ids = {c["id"] for c in data["claims"]}
    assert {"T1-cv-pre", "T2-pre", "T4-jump-pre", "C5-pre", "C1-EL", "D1-classical", "F-power", "T5"} <= ids
    assert {
        "OQ-es",
        "OQ-fr",
        "OQ-long",
        "OQ-long-window",
        "OQ-sample",
        "OQ-ctx25",
        "OQ-bf16",
        "X-layers",
        "N-compensate-pre",
        "N-shuffle-pre",
        "N-scale-pre",
        "N-tokpos-pre",
        "N-tokpos-shuffle-pre",
        "N-token-r2-pre",
        "N-position-r2-pre",
        "N-shuffle-rand",
        "N-curvature-gen",
        "N-curvature-text",
    } <= ids
    assert "## Beyond the paper: null models and confounder controls" in md
    assert "Null models and confounder controls, per run" in md
    from ppmech.claims.rules import VERDICTS

    assert all(c["verdict"] in VERDICTS for c in data["claims"])
    # Every conserved-type row shows its controls, measured on its own run (OQ runs included).
    conserved = [c for c in data["claims"] if c["paper_verdict"] is not None]
    assert {"KF1-pre", "OQ-es", "OQ-long", "X-layers"} <= {c["id"] for c in conserved}
    for c in conserved:
        assert "vs shuffle band" in c["controls"] and "holds for c >" in c["controls"]
        if c["verdict"] == "supported":
            assert c["control_values"]["compensation"] == "pass" and c["control_values"]["scale"] == "pass"
    assert "| controls |" in md and "1 − R" in md and "CV / null CV" in md
    assert data["measurements"]["smollm2-135m/pretrained-wiki-es/null_shuffle_null_cv"]["value"] > 0
    m = data["measurements"]
    # The ledger's global CV is the run's own statistic (same definition, same steps).
    summary = json.loads((out / "runs" / "smollm2-135m-pretrained" / "summary.json").read_text())
    assert m["smollm2-135m/pretrained/global_cv"]["value"] == pytest.approx(
        summary["statistics"]["global_cv"]
    )
    # The logit lens at the last layer reproduces the recorded h_t.
    assert m["smollm2-135m/pretrained-layers/last_layer_max_abs_diff"]["value"] < 1e-3


@pytest.mark.slow
def test_second_verify_reuses_everything(
    quick: tuple[Path, list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, args, text = quick
    # Reuse means nothing is re-recorded or re-analysed: every run's files and every
    # cached analysis keep their bytes and modification times.
    kept = sorted(p for p in (out / "runs").rglob("*") if p.is_file()) + sorted(
        (out / "analyses").glob("*.json")
    )
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "Claims ledger" in stdout
    assert len(before) > 20
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == before
    assert json.loads((out / "claims.json").read_text())["claims"] == json.loads(text)["claims"]


@pytest.mark.slow
def test_another_n_boot_reuses_the_runs_and_recomputes_the_cis(
    quick: tuple[Path, list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """n_boot changes only CIs: the recorded runs are reused, the ledger's CIs are redone."""
    out, args, text = quick
    steps = out / "runs" / "smollm2-135m-pretrained" / "steps.parquet"
    before = (steps.stat().st_mtime_ns, steps.read_bytes())
    i = args.index("--n-boot")
    code, _, err = _run([*args[:i], "--n-boot", "60", *args[i + 2 :]], capsys)
    assert code == 0, err
    assert (steps.stat().st_mtime_ns, steps.read_bytes()) == before
    data = json.loads((out / "claims.json").read_text())
    assert data["meta"]["n_boot"] == 60
    old = json.loads(text)["measurements"]["smollm2-135m/pretrained/global_cv"]
    new = data["measurements"]["smollm2-135m/pretrained/global_cv"]
    assert new["value"] == old["value"] and (new["low"], new["high"]) != (old["low"], old["high"])
    # Put the fixture's ledger back for the tests that read it afterwards.
    assert _run(args, capsys)[0] == 0


@pytest.mark.slow
def test_open_question_runs_vary_one_thing_each(quick: tuple[Path, list[str], str]) -> None:
    """Each open-question run differs from the core run in the one setting it is about."""
    out, _, text = quick
    core = json.loads((out / "runs" / "smollm2-135m-pretrained" / "summary.json").read_text())["config"]
    varied = {
        "pretrained-wiki-es": {"corpus": "wiki-es"},
        "pretrained-wiki-fr": {"corpus": "wiki-fr"},
        "pretrained-long": {"new_tokens": 20, "batch_size": 10},
        "pretrained-sample": {"decoding": "sample"},
        "pretrained-ctx25": {"context_tokens": 25},
        "pretrained-ctx100": {"context_tokens": 100},
        "pretrained-bf16": {"dtype": "bfloat16"},
    }
    # Not about the condition: the open-question runs are smaller and keep no hidden states.
    incidental = {"prompts", "save_hidden"}
    for condition, expected in varied.items():
        run_dir = out / "runs" / f"smollm2-135m-{condition}"
        cfg = json.loads((run_dir / "summary.json").read_text())["config"]
        changed = {k for k in core if cfg.get(k) != core[k]} - incidental
        assert changed == set(expected), condition
        assert {k: cfg[k] for k in expected} == expected, condition
        trajectories = pd.read_parquet(run_dir / "trajectories.parquet")
        assert len(trajectories) == cfg["prompts"]
        assert all(len(p) == cfg["context_tokens"] for p in trajectories["prompt_ids"])
        steps = pd.read_parquet(run_dir / "steps.parquet")
        assert steps.groupby("trajectory")["step"].max().max() == cfg["new_tokens"] - 1
    sample = json.loads((out / "runs" / "smollm2-135m-pretrained-sample" / "summary.json").read_text())
    assert sample["config"]["temperature"] == 1.0
    # The multilingual prompts really are Spanish and French Wikipedia, not English.
    texts = {
        lang: " ".join(
            pd.read_parquet(out / "runs" / f"smollm2-135m-pretrained-wiki-{lang}" / "trajectories.parquet")[
                "prompt_text"
            ]
        )
        for lang in ("es", "fr")
    }
    assert texts["es"].count(" de ") + texts["es"].count(" la ") > texts["es"].count(" the ")
    assert texts["fr"].count(" de ") + texts["fr"].count(" le ") > texts["fr"].count(" the ")
    # The long run's CV-by-position table covers its horizon in windows.
    windows = pd.DataFrame(json.loads(text)["tables"]["smollm2-135m-pretrained-long/cv_by_position"])
    assert list(windows["start"]) == list(range(0, 20, 10))
    assert (windows["stop"] - windows["start"] == 10).all()
    assert ((windows["cv"] >= 0) & np.isfinite(windows["cv"])).all()
    # bfloat16 is compared with float32 on the same prompts.
    data = json.loads(text)
    assert "smollm2-135m/pretrained-f32-same/global_cv" in data["measurements"]


@pytest.mark.slow
def test_verify_refuses_a_run_directory_with_other_settings(
    quick: tuple[Path, list[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, args, _ = quick
    summary_path = out / "runs" / "smollm2-135m-random" / "summary.json"
    original = summary_path.read_text()
    summary = json.loads(original)
    summary["config"]["new_tokens"] = 999
    summary_path.write_text(json.dumps(summary))
    try:
        code, _, err = _run(args, capsys)
    finally:
        summary_path.write_text(original)
    assert code == 2
    assert "different settings (new_tokens)" in err and len(err.strip().splitlines()) == 1
