"""`ppmech analyze` and `ppmech verify` as a user runs them, bad input included."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ppmech.cli import main


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
    ):
        assert needle in out
    assert "Per-layer mechanics" in out and "CV of H by position" in out
    data = json.loads(out_json.read_text())
    entry = data[str(runs["hidden"])]
    assert len(entry["layers"]) == 2  # the tiny llama has 2 decoder layers
    cos = entry["estimates"]["el_cos"]
    assert -1.0 <= cos["value"] <= 1.0 and cos["low"] <= cos["high"]


def test_analyze_hidden_without_saved_states_is_a_one_line_error(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["analyze", str(runs["plain"]), "--hidden", "--n-boot", "20"], capsys)
    assert code == 2
    assert "no saved hidden states" in err and len(err.strip().splitlines()) == 1


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


def test_correlation_needs_three_sizes(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["analyze", str(runs["hidden"]), str(runs["plain"]), "--correlate", "drift"], capsys)
    assert code == 2
    assert "at least 3 sizes" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["analyze", str(runs["hidden"]), "--correlate", "no_such_metric"], capsys)
    assert code == 2 and "unknown metric" in err


def test_verify_refuses_other_models(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(["verify", "--models", "gpt-5", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "embedded models only" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], float, str]:
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
    t0 = time.perf_counter()
    code = main(args)
    assert code == 0
    return out, args, time.perf_counter() - t0, (out / "claims.json").read_text()


@pytest.mark.slow
def test_verify_quick_writes_the_ledger(quick: tuple[Path, list[str], float, str]) -> None:
    out, _, _, text = quick
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
    } <= ids
    assert all(c["verdict"] in ("supported", "not supported", "inconclusive") for c in data["claims"])
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
    quick: tuple[Path, list[str], float, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, args, first, text = quick
    t0 = time.perf_counter()
    code, stdout, err = _run(args, capsys)
    second = time.perf_counter() - t0
    assert code == 0, err
    assert "Claims ledger" in stdout
    assert second < first / 3
    assert json.loads((out / "claims.json").read_text())["claims"] == json.loads(text)["claims"]


@pytest.mark.slow
def test_verify_refuses_a_run_directory_with_other_settings(
    quick: tuple[Path, list[str], float, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, args, _, _ = quick
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
