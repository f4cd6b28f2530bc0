"""`ppmech.sweep` on a real local Ray instance (2 CPUs): tiny llamas of three sizes and SmolLM2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from ppmech.errors import PPMechError
from ppmech.measure import measure
from ppmech.models.identity import LoadedModel
from ppmech.runs import load_run
from ppmech.sweep import SweepOptions, SweepResult, parse_study, sweep
from ppmech.sweep.outputs import TABLE5_METRICS, study_columns

SETTINGS = "prompts = 4\ncontext_tokens = 16\nnew_tokens = 8\nbatch_size = 4\nn_boot = 200\n"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance for the module, sized like this machine's share: 2 CPUs."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_sizes(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Three sizes (1, 2, 3 decoder layers) of one tiny llama, saved with save_pretrained."""
    from tests.conftest import TINY_CONFIGS
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny-family")
    made = {}
    for layers in (1, 2, 3):
        cfg = dict(TINY_CONFIGS["llama"], num_hidden_layers=layers)
        model_type = cfg.pop("model_type")
        torch.manual_seed(layers)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
        path = root / f"tiny-l{layers}"
        model.save_pretrained(path)
        smollm2.tokenizer.save_pretrained(path)
        made[layers] = str(path)
    return made


def _study_text(tiny_sizes: dict[int, str]) -> str:
    models = ", ".join(f'"{p}"' for p in tiny_sizes.values())
    return (
        f'name = "tiny-family"\nmodels = [{models}, {{ model = "smollm2-135m", weights = "pretrained" }}]\n'
        f'weights = ["pretrained", "random"]\n{SETTINGS}'
    )


@pytest.fixture(scope="module")
def swept(
    ray_local: None, tiny_sizes: dict[int, str], tmp_path_factory: pytest.TempPathFactory
) -> SweepResult:
    study = parse_study(_study_text(tiny_sizes), "tiny.toml")
    return sweep(study, tmp_path_factory.mktemp("study") / "out", SweepOptions(progress=False))


EXPECTED_RUNS = [
    *(f"tiny-l{n}-{w}-n4-ctx16-new8" for n in (1, 2, 3) for w in ("pretrained", "random")),
    "smollm2-135m-pretrained-n4-ctx16-new8",
]


def test_every_run_is_a_complete_run_directory(swept: SweepResult) -> None:
    out = swept.out
    assert [o.name for o in swept.outcomes] == EXPECTED_RUNS
    assert all(o.status == "complete" and not o.reused for o in swept.outcomes)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(EXPECTED_RUNS)  # no staging left
    for name in EXPECTED_RUNS:
        run = load_run(out / "runs" / name)
        assert run.config["prompts"] == 4 and len(run.steps) == 4 * 8
    frame = pd.read_parquet(out / "study.parquet")
    assert list(frame.columns) == study_columns()
    assert list(frame["run"]) == EXPECTED_RUNS and set(frame["status"]) == {"complete"}
    assert frame["node_id"].notna().all() and (frame["wall_seconds"] > 0).all()
    assert set(frame["family"]) == {"llama"} and set(frame["device_used"]) == {"cpu"}
    tiny = frame[frame["run"].str.startswith("tiny-l")]
    assert tiny.groupby("model")["parameters"].nunique().eq(1).all()
    assert tiny["parameters"].nunique() == 3
    saved = json.loads((out / "study.json").read_text())
    assert saved["name"] == "tiny-family" and len(saved["runs"]) == 7
    assert "ray" in saved["versions"] and saved["created"]
    tables = (out / "tables.md").read_text()
    assert "## Table 1 style" in tables and "Median (random)" in tables and "## Table 5 style" in tables


def test_statistics_equal_plain_measure(swept: SweepResult, tmp_path: Path) -> None:
    """Each run equals `measure` with the same settings (one torch thread, as the run's one CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for o in swept.outcomes:
            plain = measure(o.config, tmp_path / o.name, progress=False)
            run = load_run(swept.out / "runs" / o.name)
            assert run.summary["statistics"] == plain.summary["statistics"], o.name
            pd.testing.assert_frame_equal(run.steps, plain.steps)
            assert run.model == plain.summary["model"]
    finally:
        torch.set_num_threads(threads)


def test_table5_matches_scipy_on_the_run_summaries(swept: SweepResult) -> None:
    from scipy import stats

    table = swept.tables["table5"]
    summaries = [load_run(swept.out / "runs" / n).summary for n in EXPECTED_RUNS]
    for weights, n_sizes in (("pretrained", 4), ("random", 3)):
        group = [s for s in summaries if s["config"]["weights"] == weights]
        params = [s["model"]["num_parameters"] for s in group]
        assert len(set(params)) == n_sizes
        for metric in TABLE5_METRICS:
            row = table[(table["weights"] == weights) & (table["metric"] == metric)]
            assert len(row) == 1, (weights, metric)
            expected = stats.pearsonr(params, [s["statistics"][metric] for s in group])
            assert row["n"].iloc[0] == n_sizes
            assert row["r"].iloc[0] == pytest.approx(expected.statistic, rel=1e-12)
            assert row["p"].iloc[0] == pytest.approx(expected.pvalue, rel=1e-9)


def test_rerun_skips_every_run(swept: SweepResult, tiny_sizes: dict[int, str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (swept.out / "runs").glob("*/summary.json")}
    again = sweep(parse_study(_study_text(tiny_sizes), "tiny.toml"), swept.out, SweepOptions(progress=False))
    assert all(o.status == "complete" and o.reused for o in again.outcomes)
    after = {p.name: p.stat().st_mtime_ns for p in (swept.out / "runs").glob("*/summary.json")}
    assert after == before
    frame = pd.read_parquet(swept.out / "study.parquet")
    assert frame["reused"].all()
    # Node ids and wall times of the original recording are kept.
    assert list(frame["node_id"]) == [o.node_id for o in swept.outcomes]
    assert list(frame["wall_seconds"]) == [o.wall_seconds for o in swept.outcomes]


def test_an_analysis_change_is_reanalysed_not_refused(
    swept: SweepResult, tiny_sizes: dict[int, str], tmp_path: Path
) -> None:
    """n_boot is an ANALYSIS setting: the stored steps are re-analysed (no --replace, no recording)."""
    out = tmp_path / "copy"
    shutil.copytree(swept.out, out)
    text = f'models = ["{tiny_sizes[1]}"]\n{SETTINGS.replace("n_boot = 200", "n_boot = 100")}'
    study = parse_study(text, "changed.toml")
    name = "tiny-l1-pretrained-n4-ctx16-new8"
    steps = (out / "runs" / name / "steps.parquet").read_bytes()
    result = sweep(study, out, SweepOptions(progress=False))
    assert [(o.status, o.reused, o.reanalysed) for o in result.outcomes] == [("complete", True, True)]
    assert load_run(out / "runs" / name).config["n_boot"] == 100
    assert (out / "runs" / name / "steps.parquet").read_bytes() == steps
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]


def _work_dirs(root: Path) -> list[Path]:
    base = root / "ppmech-sweep"
    return [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []


def test_a_worker_killed_while_recording_is_retried(
    ray_local: None, tiny_sizes: dict[int, str], tmp_path: Path
) -> None:
    """SIGKILL the worker of one run mid-recording: Ray retries it, it resumes, nothing is lost or doubled."""
    text = (
        f'models = ["{tiny_sizes[2]}", "{tiny_sizes[1]}"]\nprompts = 16\ncontext_tokens = 16\n'
        "new_tokens = 64\nbatch_size = 1\nn_boot = 100\n[resources]\nmax_retries = 2\n"
    )
    study = parse_study(text, "fault.toml")
    work = tmp_path / "work"
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = sweep(study, tmp_path / "out", SweepOptions(progress=False, work_dir=str(work)))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and thread.is_alive():
        for d in _work_dirs(work):
            # Recording has begun once the run's directory has a file (the worker's note is written first).
            if (
                d.name.startswith("tiny-l2")
                and (d / "worker.json").is_file()
                and any(p.is_file() for p in (d / "run").rglob("*"))
            ):
                killed = json.loads((d / "worker.json").read_text())["pids"][-1]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.01)
    thread.join(timeout=300)
    assert killed is not None, "the run finished before it could be killed"
    assert "error" not in box, box.get("error")
    result: SweepResult = box["result"]
    first, second = result.outcomes
    assert first.status == "complete" and second.status == "complete", (first.error, second.error)
    assert first.pids[0] == killed and len(first.pids) == 2 and first.pids[1] != killed, first.pids
    assert len(second.pids) == 1
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == sorted(o.name for o in result.outcomes)
    run = load_run(tmp_path / "out" / "runs" / first.name)
    assert len(run.steps) == 16 * 64
    assert not run.steps.duplicated(["trajectory", "step"]).any()
    assert sorted(run.trajectories["trajectory"]) == list(range(16))
    frame = pd.read_parquet(tmp_path / "out" / "study.parquet")
    assert len(frame) == 2 and list(frame["attempts"]) == [2, 1]
    assert _work_dirs(work) == []  # scratch is cleaned up
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = measure(first.config, tmp_path / "plain", progress=False)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(run.steps, plain.steps)
    assert run.summary["statistics"] == plain.summary["statistics"]


def test_a_run_that_fails_on_its_own_is_recorded_and_the_others_go_on(
    ray_local: None, tiny_sizes: dict[int, str], tmp_path: Path
) -> None:
    text = f'models = ["{tiny_sizes[1]}", "gpt-17"]\n{SETTINGS}'
    result = sweep(parse_study(text, "bad-model.toml"), tmp_path, SweepOptions(progress=False))
    ok, bad = result.outcomes
    assert ok.status == "complete" and bad.status == "failed"
    assert bad.error is not None and bad.error.startswith("unknown model 'gpt-17'") and "\n" not in bad.error
    assert not (tmp_path / "runs" / bad.name).exists()
    frame = pd.read_parquet(tmp_path / "study.parquet")
    assert list(frame["status"]) == ["complete", "failed"]
    assert frame["error"].iloc[1] == bad.error and pd.isna(frame["global_cv"].iloc[1])
    assert "gpt-17" in (tmp_path / "tables.md").read_text()


def test_table5_gives_the_ledger_row_a_measured_verdict(swept: SweepResult, tmp_path: Path) -> None:
    """`verify --sweep`: the T5 row is evaluated on each family of 3+ sizes, with a bootstrap CI of r."""
    from ppmech.claims.ledger import evaluate
    from ppmech.claims.rules import apply_rule
    from ppmech.claims.verify import VerifyConfig, verify
    from ppmech.sweep.ledger import T5_SWEEP, ledger_models, table5_measurements

    measured = table5_measurements(swept.out, n_boot=200, seed=0)
    labels = ledger_models(measured)
    assert labels == ["sweep:llama-pretrained-n4-ctx16-new8", "sweep:llama-random-n4-ctx16-new8"]
    table = swept.tables["table5"]
    for label in labels:
        est = measured[f"{label}/table5/drift_r"]
        weights = label.split("-")[1]
        row = table[(table["weights"] == weights) & (table["metric"] == "drift")]
        assert est.value == pytest.approx(row["r"].iloc[0], rel=1e-12) and est.n == row["n"].iloc[0]
        assert est.has_ci and -1 <= est.low <= est.high <= 1
    rows = evaluate(measured, labels, [T5_SWEEP])
    assert [r.model for r in rows] == labels
    for r in rows:
        expected, _ = apply_rule(T5_SWEEP.rule, measured[r.metric])
        assert r.id == "T5" and r.verdict == expected and r.low is not None
    # A directory that is not a study fails before verify records anything.
    with pytest.raises(PPMechError, match="not a ppmech sweep study directory"):
        verify(VerifyConfig(out=str(tmp_path / "v"), sweep=str(tmp_path)), progress=False)
    assert not (tmp_path / "v").exists()


def test_a_ray_task_error_is_recorded_as_its_cause_without_colour_codes() -> None:
    from ray.exceptions import RayTaskError

    from ppmech.sweep.runner import one_line

    cause = PermissionError(13, "Permission denied", "/ro/ppmech-sweep/run")
    error = RayTaskError("record_run", "Traceback\n\x1b[36mray::record_run()\x1b[39m (pid=1)", cause)
    for exc in (error, error.as_instanceof_cause()):
        line = one_line(exc)
        assert line == "PermissionError: [Errno 13] Permission denied: '/ro/ppmech-sweep/run'"
        assert "\x1b" not in line and "\n" not in line


def _resave(source: str, target: Path, seed: int) -> None:
    """A copy of a tiny model directory with weights drawn from ``seed`` (its files, so its hash, change)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def test_analysis_changes_reanalyse_without_a_model_and_replace_never_deletes_a_users_file(
    ray_local: None, tiny_sizes: dict[int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    model = tmp_path / "model"
    _resave(tiny_sizes[1], model, seed=1)
    text = f'models = ["{model}"]\n{SETTINGS}'
    out = tmp_path / "out"
    first = sweep(parse_study(text, "s.toml"), out, SweepOptions(progress=False))
    (o,) = first.outcomes
    run_dir = out / "runs" / o.name
    steps = (run_dir / "steps.parquet").read_bytes()

    # An analysis setting: no model (its files are gone) and no Ray (it cannot be imported) are needed.
    hidden = tmp_path / "model-away"
    model.rename(hidden)
    monkeypatch.setitem(sys.modules, "ray", None)
    started = time.perf_counter()
    again = sweep(parse_study(text, "s.toml", ["n_boot=70"]), out, SweepOptions(progress=False))
    seconds = time.perf_counter() - started
    monkeypatch.delitem(sys.modules, "ray")
    hidden.rename(model)
    (r,) = again.outcomes
    assert r.status == "complete" and r.reused and r.reanalysed, r
    print(f"re-analysis of a finished 1-run study (n_boot=70): {seconds:.2f} s")
    run = load_run(run_dir)
    assert run.config["n_boot"] == 70 and "70 replicates" in run.summary["statistics"]["global_cv_ci"]["note"]
    assert (run_dir / "steps.parquet").read_bytes() == steps  # nothing re-recorded
    frame = pd.read_parquet(out / "study.parquet")
    assert list(frame["reanalysed"]) == [True]
    # An execution setting: reused as it is.
    same = sweep(
        parse_study(text, "s.toml", ["n_boot=70", "batch_size=2"]), out, SweepOptions(progress=False)
    )
    assert same.outcomes[0].reused and not same.outcomes[0].reanalysed

    # The model's files change: the run is stale. A user's file in it is never deleted, even with --replace.
    shutil.rmtree(model)
    _resave(tiny_sizes[1], model, seed=2)
    (run_dir / "NOTES.txt").write_text("mine")
    summary = (run_dir / "summary.json").read_bytes()
    with pytest.raises(PPMechError, match=r"holds files ppmech did not write \(NOTES.txt\)"):
        sweep(parse_study(text, "s.toml", ["n_boot=70"]), out, SweepOptions(progress=False, replace=True))
    assert (run_dir / "NOTES.txt").read_text() == "mine" and (
        run_dir / "summary.json"
    ).read_bytes() == summary
    (run_dir / "NOTES.txt").unlink()
    replaced = sweep(
        parse_study(text, "s.toml", ["n_boot=70"]), out, SweepOptions(progress=False, replace=True)
    )
    assert replaced.outcomes[0].status == "complete" and not replaced.outcomes[0].reused
    assert (run_dir / "steps.parquet").read_bytes() != steps
    assert sorted(p.name for p in (out / "runs").iterdir()) == [o.name]  # no staging debris
