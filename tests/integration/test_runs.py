"""Run directories: files, schema, interruption, resume and overwrite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig, measure
from ppmech.runs import SCHEMA_VERSION, load_run


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Callable[[str], str]) -> str:
    return tiny_model_dir("llama")


def _config(model: str, **overrides: object) -> MeasureConfig:
    base: dict[str, object] = dict(
        model=model, prompts=6, context_tokens=20, new_tokens=8, batch_size=2, n_boot=100
    )
    base.update(overrides)
    return MeasureConfig(**base)  # type: ignore[arg-type]


def test_run_directory_contents(tiny: str, tmp_path: Path) -> None:
    result = measure(_config(tiny, save_hidden=True), tmp_path / "run", progress=False)
    run = load_run(result.path)
    assert sorted(p.name for p in result.path.iterdir()) == [
        ".ppmech-run",
        "config.toml",
        "hidden",
        "steps.parquet",
        "summary.json",
        "trajectories.parquet",
    ]
    assert list(run.trajectories.columns) == [
        "trajectory",
        "source",
        "prompt_ids",
        "generated_ids",
        "prompt_text",
        "generated_text",
    ]
    assert {"trajectory", "step", "token_id", "token", "logp", "entropy", "K", "V", "H"} <= set(
        run.steps.columns
    )
    assert len(run.trajectories) == 6 and len(run.steps) == 6 * 8
    first = run.steps[run.steps.step == 0]
    assert first.K.isna().all() and first.H.isna().all() and first.V.notna().all()
    # Null, not NaN, in the file itself.
    table = pq.read_table(result.path / "steps.parquet")
    assert table.column("H").null_count == 6
    later = run.steps[run.steps.step > 0]
    np.testing.assert_allclose(later.H, later.K + later.V)
    np.testing.assert_allclose(later.V, -later.logp)
    # Hidden states agree with the recorded speeds.
    hidden = run.hidden()
    assert hidden.shape == (6, 8, 64)
    speed = ((hidden[:, 1:] - hidden[:, :-1]).astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(speed.ravel(), later.sort_values(["trajectory", "step"]).speed_sq, rtol=1e-5)
    summary = run.summary
    assert summary["schema_version"] == SCHEMA_VERSION and summary["status"] == "complete"
    assert summary["config"]["seed"] == 0 and summary["config"]["model"] == tiny
    assert {"ppmech", "torch", "transformers"} <= set(summary["versions"])
    assert summary["counts"]["generated_tokens"] == 48
    assert summary["statistics"]["n_valid"] == 42


def test_existing_out_needs_overwrite(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    measure(_config(tiny), out, progress=False)
    with pytest.raises(PPMechError, match="already holds a complete run"):
        measure(_config(tiny), out, progress=False)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(PPMechError, match="not empty"):
        measure(_config(tiny), other, progress=False)
    assert (other / "keep.txt").read_text() == "mine"
    measure(_config(tiny, seed=3), out, overwrite=True, progress=False)
    assert load_run(out).config["seed"] == 3


def test_interrupted_run_is_marked_and_resumable(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "ppmech",
        "measure",
        "--model",
        tiny,
        "--prompts",
        "40",
        "--context-tokens",
        "20",
        "--new-tokens",
        "30",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--n-boot",
        "100",
    ]
    # Ctrl-C at a terminal: start the child with SIGINT at its default disposition. A test
    # runner launched in the background by a non-interactive shell ignores SIGINT, children
    # inherit that, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "parts").glob("batch-*.trajectories.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "summary.json").exists() and not (out / "steps.parquet").exists()
    with pytest.raises(PPMechError, match="incomplete"):
        load_run(out)
    with pytest.raises(PPMechError, match="interrupted run"):
        measure(_config(tiny, prompts=40, new_tokens=30, batch_size=1), out, progress=False)
    with pytest.raises(PPMechError, match="different settings"):
        measure(
            _config(tiny, prompts=40, new_tokens=30, batch_size=1, seed=9), out, resume=True, progress=False
        )
    done_before = len(list((out / "parts").glob("batch-*.trajectories.parquet")))
    assert 0 < done_before < 40
    resumed = measure(
        _config(tiny, prompts=40, new_tokens=30, batch_size=1), out, resume=True, progress=False
    )
    fresh = measure(
        _config(tiny, prompts=40, new_tokens=30, batch_size=1), tmp_path / "fresh", progress=False
    )
    pd.testing.assert_frame_equal(resumed.steps, fresh.steps)
    assert resumed.summary["statistics"] == fresh.summary["statistics"]
    assert not (out / "parts").exists()


def test_corrupt_or_old_runs_are_refused(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    measure(_config(tiny), out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    summary["schema_version"] = 0
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(PPMechError, match="run schema 0"):
        load_run(out)
    (out / "summary.json").write_text("{ not json")
    with pytest.raises(PPMechError, match="corrupt"):
        load_run(out)
    with pytest.raises(PPMechError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_teacher_decoding_scores_the_article(tiny: str, tmp_path: Path) -> None:
    result = measure(_config(tiny, decoding="teacher"), tmp_path / "run", progress=False)
    from ppmech.corpus import load_documents

    docs = {d.source: d.text for d in load_documents("wiki-en")}
    row = result.trajectories.iloc[0]
    assert docs[row.source].startswith(row.prompt_text.strip()[:40])
    assert len(row.generated_ids) == 8
