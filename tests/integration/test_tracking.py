"""Experiment tracking with the real libraries: MLflow's file store and W&B offline.

One real run of the embedded SmolLM2 (2 prompts x 5 tokens) is recorded once per module, as the
first grid point of a real study; everything else reads it back. What was logged is read back
through the trackers' own readers: ``mlflow.search_runs`` and ``MlflowClient`` for MLflow, the
offline run file (``offline-run-*/run-*.wandb``, W&B's record log) for W&B.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ppmech.errors import PPMechError
from ppmech.tracking import (
    FORMS,
    log_ledger,
    log_path,
    log_run,
    log_study,
    parse_track,
    study_run,
)

pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

STUDY = """
name = "tiny"
models = ["smollm2-135m"]
weights = ["pretrained", "random"]
prompts = 2
context_tokens = 10
new_tokens = 5
n_boot = 50
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study directory as ``ppmech sweep`` writes it: grid point 1 recorded, grid point 2 failed."""
    from ppmech.measure import measure
    from ppmech.sweep import RunOutcome, outputs, parse_study

    study = parse_study(STUDY)
    first, second = study.runs
    out = tmp_path_factory.mktemp("study")
    scratch = tmp_path_factory.mktemp("scratch") / first.name
    result = measure(first.config, scratch, progress=False)
    outcomes = [
        RunOutcome(first.name, first.config, status="complete", summary=result.summary),
        RunOutcome(second.name, second.config, status="failed", error="worker died: out of memory"),
    ]
    outputs.write_study_json(out, study)
    frame, _ = outputs.write_outputs(out, study, outcomes)
    stored = out / frame.loc[frame["status"] == "complete", "path"].iloc[0]
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(scratch, stored)
    return out


@pytest.fixture(scope="module")
def run_dir(study_dir: Path) -> Path:
    frame = pd.read_parquet(study_dir / "study.parquet")
    return study_dir / frame.loc[frame["status"] == "complete", "path"].iloc[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No tracker configuration from the machine: no URIs, keys, modes or ~/.netrc; W&B's
    directories under ``tmp_path``."""
    for name in (
        "MLFLOW_ALLOW_FILE_STORE",  # ppmech must set it itself for a file store
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "WANDB_API_KEY",
        "WANDB_MODE",
        "WANDB_PROJECT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        path = tmp_path / name.lower()
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def expected_steps(run: Path, term: str, q: float) -> pd.Series:
    """The step metric computed here from steps.parquet, independently of ppmech.tracking."""
    steps = pd.read_parquet(run / "steps.parquet")
    values = steps[term].to_numpy(dtype=np.float64)
    steps = steps.assign(x=np.where(np.isfinite(values), values, np.nan)).dropna(subset=["x"])
    return steps.groupby("step")["x"].apply(lambda s: float(np.quantile(s.to_numpy(), q)))


# --------------------------------------------------------------------------- --track forms


def test_forms_and_destinations(clean_env: Path) -> None:
    spec = parse_track("mlflow")
    assert spec is not None and spec.uri == (clean_env / "mlruns").as_uri() and spec.project == "ppmech"
    assert not (clean_env / "mlruns").exists()  # checked, not created: nothing before the run
    assert parse_track(None) is None and parse_track("") is None
    spec = parse_track("mlflow:elsewhere/store")
    assert spec is not None and spec.uri == (clean_env / "elsewhere" / "store").as_uri()
    spec = parse_track("wandb:my-project")
    assert spec is not None and (spec.backend, spec.project, spec.mode) == ("wandb", "my-project", "offline")
    os.environ["WANDB_API_KEY"] = "x" * 40
    try:
        assert parse_track("wandb").mode == "online"  # type: ignore[union-attr]
    finally:
        del os.environ["WANDB_API_KEY"]
    for bad in ("foo", "mlflow:", "MLflowx", "tensorboard"):
        with pytest.raises(PPMechError) as err:
            parse_track(bad)
        assert FORMS in err.value.one_line() and "\n" not in err.value.one_line()
    (clean_env / "a-file").write_text("x")
    with pytest.raises(PPMechError, match="is a file, not a directory"):
        parse_track("mlflow:a-file")


def test_unreachable_server_is_refused_before_the_run(clean_env: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PPMechError, match="cannot reach the MLflow tracking server"):
        parse_track(f"mlflow:http://127.0.0.1:{port}")


@pytest.mark.parametrize("backend", ["mlflow", "wandb"])
def test_missing_extra_is_one_line(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # `import mlflow` now raises ImportError
    with pytest.raises(PPMechError) as err:
        parse_track(backend)
    line = err.value.one_line()
    assert f"pip install 'ppmech[{backend}]'" in line and "\n" not in line


def test_missing_extra_on_the_command_line(tmp_path: Path, run_dir: Path) -> None:
    """With mlflow unimportable, ``--track mlflow`` is one line, exit 2, and nothing is written."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    proc = subprocess.run(
        [sys.executable, "-m", "ppmech", "track", str(run_dir), "--track", "mlflow"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ppmech[mlflow]'" in lines[0]
    assert not (tmp_path / "mlruns").exists()


# --------------------------------------------------------------------------- MLflow


def mlflow_runs(store: Path) -> pd.DataFrame:
    """Every run of the experiment ``ppmech`` in the file store ``store``.

    MLflow refuses its file store without ``MLFLOW_ALLOW_FILE_STORE``; it is set only for this
    read, so that the subprocesses of other tests show that ppmech sets it on its own.
    """
    saved = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        mlflow.set_tracking_uri(store.as_uri())
        return mlflow.search_runs(experiment_names=["ppmech"])
    finally:
        if saved is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = saved


def test_mlflow_run(clean_env: Path, run_dir: Path) -> None:
    from mlflow import MlflowClient

    spec = parse_track("mlflow")
    tracked = log_run(spec, run_dir)
    assert tracked is not None and tracked.backend == "mlflow"
    runs = mlflow_runs(clean_env / "mlruns")
    assert len(runs) == 1
    row = runs.iloc[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    stats = summary["statistics"]
    assert row["run_id"] == tracked.run_id and row["status"] == "FINISHED"
    assert row["tags.mlflow.runName"] == run_dir.name
    # Parameters: the resolved config, plus the model's identity.
    assert row["params.model"] == "smollm2-135m" and row["params.prompts"] == "2"
    assert row["params.new_tokens"] == "5" and row["params.top_k"] == "null"
    assert row["params.identity.source_hash"] == summary["model"]["source_hash"]
    # Statistics and CIs.
    assert row["metrics.global_cv"] == pytest.approx(stats["global_cv"], rel=1e-12)
    assert row["metrics.global_cv_ci_low"] == pytest.approx(stats["global_cv_ci"]["low"], rel=1e-12)
    assert row["metrics.mean_energy_ci_high"] == pytest.approx(stats["mean_energy_ci"]["high"], rel=1e-12)
    assert row["metrics.drift"] == pytest.approx(stats["drift"], rel=1e-12)
    # H, K, V per step: median and IQR bounds across trajectories.
    client = MlflowClient(tracking_uri=(clean_env / "mlruns").as_uri())
    for term, suffix, q in (("H", "median", 0.5), ("K", "q25", 0.25), ("V", "q75", 0.75)):
        history = client.get_metric_history(tracked.run_id, f"{term}/{suffix}")
        got = pd.Series({m.step: m.value for m in history}).sort_index()
        want = expected_steps(run_dir, term, q)
        assert list(got.index) == list(want.index)
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)
    assert next(m.step for m in client.get_metric_history(tracked.run_id, "H/median")) == 1  # H is null at 0
    artifacts = {f.path for f in client.list_artifacts(tracked.run_id)}
    present = {n for n in ("summary.json", "config.toml", "report.html") if (run_dir / n).is_file()}
    assert "summary.json" in artifacts and artifacts == present


def test_mlflow_report_page_is_an_artifact(clean_env: Path, run_dir: Path) -> None:
    from mlflow import MlflowClient

    from ppmech.report import build_report

    run = clean_env / run_dir.name
    shutil.copytree(run_dir, run)
    build_report([run], run / "report.html")
    tracked = log_run(parse_track("mlflow"), run)
    assert tracked is not None
    client = MlflowClient(tracking_uri=(clean_env / "mlruns").as_uri())
    assert "report.html" in {f.path for f in client.list_artifacts(tracked.run_id)}


def test_mlflow_parent_and_children(clean_env: Path, run_dir: Path) -> None:
    spec = parse_track("mlflow")
    assert spec is not None
    with study_run(spec, "my-study") as parent:
        first = log_run(spec, run_dir, parent=parent)
        second = log_run(spec, run_dir, parent=parent)
    runs = mlflow_runs(clean_env / "mlruns").set_index("run_id")
    assert len(runs) == 3
    assert runs.loc[parent.run_id, "tags.mlflow.runName"] == "my-study"
    assert runs.loc[parent.run_id, "status"] == "FINISHED"
    for child in (first, second):
        assert child is not None
        assert runs.loc[child.run_id, "tags.mlflow.parentRunId"] == parent.run_id
    assert pd.isna(runs.loc[parent.run_id, "tags.mlflow.parentRunId"])


def test_mlflow_parent_fails_with_its_block(clean_env: Path) -> None:
    spec = parse_track("mlflow")
    assert spec is not None
    with pytest.raises(KeyboardInterrupt), study_run(spec, "interrupted") as parent:
        raise KeyboardInterrupt
    runs = mlflow_runs(clean_env / "mlruns").set_index("run_id")
    assert runs.loc[parent.run_id, "status"] == "FAILED"


def test_mlflow_study(clean_env: Path, study_dir: Path) -> None:
    from mlflow import MlflowClient

    tracked = log_study(parse_track("mlflow"), study_dir)
    assert len(tracked) == 3
    runs = mlflow_runs(clean_env / "mlruns").set_index("tags.mlflow.runName")
    parent_id = tracked[0].run_id
    assert runs.loc["tiny", "run_id"] == parent_id
    assert runs.loc["tiny", "metrics.runs"] == 2 and runs.loc["tiny", "metrics.runs_complete"] == 1
    frame = pd.read_parquet(study_dir / "study.parquet").set_index("run")
    for name, status in frame["status"].items():
        assert runs.loc[name, "tags.mlflow.parentRunId"] == parent_id
        assert runs.loc[name, "status"] == ("FINISHED" if status == "complete" else "FAILED")
    failed = frame.index[frame["status"] == "failed"][0]
    assert runs.loc[failed, "tags.ppmech.error"] == "worker died: out of memory"
    assert runs.loc[failed, "params.weights"] == "random"
    client = MlflowClient(tracking_uri=(clean_env / "mlruns").as_uri())
    assert {"study.json", "study.parquet", "tables.md"} <= {f.path for f in client.list_artifacts(parent_id)}


def ledger_dir(root: Path) -> Path:
    """A verify directory written by the ledger's own code, from made-up measurements."""
    from ppmech.claims.ledger import evaluate
    from ppmech.claims.render import ledger_json, render_markdown
    from ppmech.statistics import Estimate

    measurements = {
        "smollm2-135m/pretrained/global_cv": Estimate(0.117, 0.113, 0.120, 100, "bootstrap"),
        "smollm2-135m/random/global_cv": Estimate(0.226, 0.220, 0.232, 100, "bootstrap"),
    }
    rows = evaluate(measurements, ["smollm2-135m"])
    meta = {"command": "ppmech verify --quick", "models": ["smollm2-135m"], "quick": True, "n_boot": 40}
    root.mkdir()
    (root / "claims.json").write_text(json.dumps(ledger_json(rows, meta, measurements)))
    (root / "claims.md").write_text(render_markdown(rows, meta))
    return root


def test_mlflow_ledger(clean_env: Path) -> None:
    from mlflow import MlflowClient

    ledger = ledger_dir(clean_env / "verify")
    claims = json.loads((ledger / "claims.json").read_text())
    tracked = log_ledger(parse_track("mlflow"), ledger)
    assert tracked is not None
    row = mlflow_runs(clean_env / "mlruns").iloc[0]
    for verdict, count in claims["verdicts"].items():
        assert row[f"metrics.verdicts/{verdict.replace(' ', '_')}"] == count
    assert row["metrics.measurements/smollm2-135m/pretrained/global_cv_low"] == pytest.approx(0.113)
    assert row["params.n_boot"] == "40" and row["tags.ppmech.command"] == "ppmech verify --quick"
    first = claims["claims"][0]
    assert row[f"tags.verdict/{first['id']}/{first['model']}"] == first["verdict"]
    client = MlflowClient(tracking_uri=(clean_env / "mlruns").as_uri())
    assert {f.path for f in client.list_artifacts(tracked.run_id)} == {"claims.json", "claims.md"}


def test_track_command_logs_each_kind(clean_env: Path, run_dir: Path) -> None:
    tracked = log_path(parse_track("mlflow:store"), run_dir)  # type: ignore[arg-type]
    assert [t.name for t in tracked] == [run_dir.name]
    proc = subprocess.run(
        [sys.executable, "-m", "ppmech", "track", str(run_dir), "--track", "mlflow:store"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"tracked {run_dir.name} in MLflow: run ")
    assert len(mlflow_runs(clean_env / "store")) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "ppmech", "track", str(run_dir), "--track", "tensorboard"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and FORMS in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- W&B offline


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline run's ``.wandb`` file.

    The file is W&B's record log: a 7-byte header (``:W&B``, a key, a version), then 32 KiB
    blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data`` with the LevelDB log
    types full (1), first (2), middle (3) and last (4); each whole record is a protobuf
    ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    out = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def test_wandb_offline_run(clean_env: Path, run_dir: Path) -> None:
    spec = parse_track("wandb")
    assert spec is not None and spec.mode == "offline"
    tracked = log_run(spec, run_dir)
    assert tracked is not None
    offline = Path(tracked.location)
    assert offline.parent == clean_env / "wandb_dir" / "wandb" and offline.name.startswith("offline-run-")
    records = wandb_records(offline)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == run_dir.name and run.project == "ppmech"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["model"] == "smollm2-135m" and config["new_tokens"] == 5
    history: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history[int(items["_step"])] = items
    want = expected_steps(run_dir, "H", 0.5)
    assert sorted(s for s, items in history.items() if "H/median" in items) == list(want.index)
    for step, value in want.items():
        assert history[int(step)]["H/median"] == pytest.approx(value, rel=1e-12)
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    stats = json.loads((run_dir / "summary.json").read_text())["statistics"]
    assert summary["global_cv"] == pytest.approx(stats["global_cv"], rel=1e-12)
    assert summary["mean_energy_ci_low"] == pytest.approx(stats["mean_energy_ci"]["low"], rel=1e-12)
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert "summary.json" in {c.path for c in artifact.manifest.contents}
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0


def test_wandb_study_is_a_group(clean_env: Path, study_dir: Path) -> None:
    tracked = log_study(parse_track("wandb"), study_dir)
    assert len(tracked) == 3
    runs = {}
    for offline in sorted((clean_env / "wandb_dir" / "wandb").glob("offline-run-*")):
        records = wandb_records(offline)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        exit_code = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"][-1]
        runs[run.display_name] = (run.run_group, run.job_type, exit_code)
    frame = pd.read_parquet(study_dir / "study.parquet").set_index("run")
    assert runs["tiny"] == ("tiny", "study", 0)
    for name, status in frame["status"].items():
        assert runs[name] == ("tiny", "measure", 0 if status == "complete" else 1)


# --------------------------------------------------------------------------- --track on the commands


def ppmech_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ppmech", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_measure_track_logs_the_run_it_wrote(clean_env: Path) -> None:
    out = clean_env / "run"
    tiny = [
        "--prompts",
        "2",
        "--context-tokens",
        "10",
        "--new-tokens",
        "5",
        "--n-boot",
        "20",
        "--no-progress",
    ]
    proc = ppmech_cli("measure", *tiny, "--out", str(out), "--track", "mlflow", cwd=clean_env)
    assert proc.returncode == 0, proc.stderr
    assert "tracked run in MLflow: run " in proc.stdout
    row = mlflow_runs(clean_env / "mlruns").iloc[0]
    stats = json.loads((out / "summary.json").read_text())["statistics"]
    assert row["metrics.mean_energy"] == pytest.approx(stats["mean_energy"], rel=1e-12)
    assert row["tags.ppmech.path"] == str(out.resolve())


@pytest.mark.parametrize(
    "command", [["measure"], ["sweep", "study.toml"], ["verify"], ["steer", "--prompt", "x"]]
)
def test_bad_track_is_refused_before_any_work(clean_env: Path, command: list[str]) -> None:
    (clean_env / "study.toml").write_text(STUDY)
    proc = ppmech_cli(*command, "--out", str(clean_env / "out"), "--track", "mlfow", cwd=clean_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ppmech: error: --track 'mlfow' is not a tracker; use {FORMS}"
    ]
    assert not (clean_env / "out").exists() and not (clean_env / "mlruns").exists()


def test_step_quantiles_use_finite_values_only() -> None:
    """K is -inf at a zero velocity and K, H are null at step 0: those never enter a quantile."""
    from ppmech.tracking.content import step_quantiles

    steps = pd.DataFrame(
        {
            "trajectory": [0, 0, 1, 1, 2, 2],
            "step": [0, 1, 0, 1, 0, 1],
            "K": [np.nan, -np.inf, np.nan, 2.0, np.nan, 4.0],
            "V": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "H": [np.nan, np.nan, np.nan, 6.0, np.nan, 10.0],
        }
    ).astype({"K": "float32", "V": "float32", "H": "float32"})
    out = step_quantiles(steps)
    assert list(out.index) == [0, 1] and (out.dtypes == np.float64).all()
    assert np.isnan(out.loc[0, "K/median"]) and np.isnan(out.loc[0, "H/q25"])
    assert out.loc[1, "K/median"] == 3.0 and out.loc[1, "H/q75"] == 9.0  # -inf and null left out
    assert out.loc[0, "V/median"] == 3.0 and out.loc[1, "V/q25"] == 3.0


def test_sweep_track_logs_parent_and_children(clean_env: Path, study_dir: Path) -> None:
    """``ppmech sweep --track`` on a finished study (every run reused: no Ray, no model)."""
    study = clean_env / "study"
    shutil.copytree(study_dir, study)
    (clean_env / "study.toml").write_text(STUDY)
    only = 'weights=["pretrained"]'  # the grid point the fixture recorded
    proc = ppmech_cli(
        "sweep",
        "study.toml",
        "--out",
        "study",
        "--set",
        only,
        "--track",
        "mlflow",
        "--no-progress",
        cwd=clean_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 recorded now" in proc.stdout and "tracked tiny in MLflow: run " in proc.stdout
    runs = mlflow_runs(clean_env / "mlruns").set_index("tags.mlflow.runName")
    frame = pd.read_parquet(study / "study.parquet")
    assert len(runs) == 1 + len(frame) == 2
    child = frame["run"].iloc[0]
    assert runs.loc[child, "tags.mlflow.parentRunId"] == runs.loc["tiny", "run_id"]
    assert runs.loc[child, "metrics.global_cv"] == pytest.approx(frame["global_cv"].iloc[0], rel=1e-12)


def test_steer_output(clean_env: Path, tiny_model_dir: Any) -> None:
    """A ``steer`` output (tiny random Llama): its two traces' steps and its energy comparison."""
    from mlflow import MlflowClient

    from ppmech.steering.run import SteerConfig, run_steer

    out = clean_env / "steer"
    config = SteerConfig(
        model=tiny_model_dir("llama"), prompt="The capital of France is", target_ids=(5, -1, 7)
    )
    result = run_steer(config, out)
    tracked = log_run(parse_track("mlflow"), out)
    assert tracked is not None
    row = mlflow_runs(clean_env / "mlruns").iloc[0]
    assert row["tags.ppmech.kind"] == "steer" and row["params.prompt"] == "The capital of France is"
    comparison = result.comparison.set_index("trace")
    assert row["metrics.steered/mean_H"] == pytest.approx(comparison.loc["steered", "mean H"], rel=1e-9)
    assert row["metrics.natural/steered_steps"] == 0
    steps = pd.read_parquet(out / "steps.parquet")
    client = MlflowClient(tracking_uri=(clean_env / "mlruns").as_uri())
    for trace in ("natural", "steered"):
        history = client.get_metric_history(tracked.run_id, f"{trace}/V/median")
        want = steps[steps["trace"] == trace].groupby("step")["V"].median()
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(want.index)
        got = [m.value for m in sorted(history, key=lambda m: m.step)]
        np.testing.assert_allclose(got, want.to_numpy(dtype=np.float64), rtol=1e-6)
