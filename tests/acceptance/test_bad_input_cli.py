"""Bad input across every subcommand, as a user meets it: the real `ppmech` in a subprocess.

Every case must end with exit status 2, exactly one line on stderr that names the
problem, no traceback, and nothing written. The cases fail before a model is loaded,
so they are cheap; they run concurrently (one fixture) and are checked one by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

# (id, argv with {tmp} for the case's scratch directory, text the one line must contain)
CASES: list[tuple[str, list[str], str]] = [
    ("no-command", [], "the following arguments are required: command"),
    ("unknown-command", ["mesure"], "invalid choice: 'mesure'"),
    # measure
    ("measure-negative-seed", ["measure", "--seed", "-1"], "--seed must be an integer from 0"),
    ("measure-huge-seed", ["measure", "--seed", str(2**64)], "--seed must be an integer from 0"),
    ("measure-greedy-temperature", ["measure", "--temperature", "0.5"], "--temperature only applies"),
    ("measure-teacher-top-p", ["measure", "--decoding", "teacher", "--top-p", "0.9"], "--top-p only applies"),
    ("measure-empty-out", ["measure", "--out", ""], "--out is empty"),
    ("measure-overwrite-resume", ["measure", "--overwrite", "--resume", "--out", "{tmp}/r"], "conflict"),
    ("measure-out-is-a-file", ["measure", "--overwrite", "--out", "{tmp}/notes.txt"], "is a file"),
    ("measure-out-is-foreign", ["measure", "--overwrite", "--out", "{tmp}/mine"], "not made by this ppmech"),
    ("measure-unknown-flag", ["measure", "--eta", "0.5"], "unrecognized --eta; this command takes --model"),
    ("measure-not-an-int", ["measure", "--prompts", "many"], "invalid int value: 'many'"),
    ("measure-zero-prompts", ["measure", "--prompts", "0"], "--prompts must be at least 1"),
    ("measure-one-token", ["measure", "--new-tokens", "1"], "--new-tokens must be at least 2"),
    ("measure-bad-decoding", ["measure", "--decoding", "beam"], "invalid choice: 'beam'"),
    # models, compare
    ("models-flag", ["models", "--all"], "this command takes no flags"),
    ("compare-missing", ["compare", "{tmp}/nowhere"], "not found"),
    ("compare-a-file", ["compare", "{tmp}/notes.txt"], "is a file, not a run directory"),
    ("compare-not-a-run", ["compare", "{tmp}/mine"], "is not a ppmech run (no summary.json)"),
    ("compare-steer-output", ["compare", "{tmp}/steer-out"], "is a ppmech steer output, not a measure run"),
    # analyze, verify
    ("analyze-missing", ["analyze", "{tmp}/nowhere"], "not found"),
    ("analyze-negative-seed", ["analyze", "{tmp}/mine", "--seed", "-1"], "--seed must be an integer"),
    ("analyze-negative-boot", ["analyze", "{tmp}/mine", "--n-boot", "-1"], "--n-boot must be at least 0"),
    ("verify-few-boot", ["verify", "--n-boot", "10", "--out", "{tmp}/v"], "--n-boot must be at least 40"),
    ("verify-empty-out", ["verify", "--out", ""], "--out is empty"),
    ("verify-seed", ["verify", "--seed", "-1", "--out", "{tmp}/v"], "--seed must be an integer"),
    ("verify-unknown-model", ["verify", "--models", "gpt-5", "--out", "{tmp}/v"], "gpt-5"),
    # steer, evaluate-steering
    ("steer-no-prompt", ["steer", "--target-text", "x"], "--prompt is missing or empty"),
    (
        "steer-two-targets",
        ["steer", "--prompt", "a", "--target-text", "b", "--target-ids", "3"],
        "not allowed",
    ),
    (
        "steer-eta",
        ["steer", "--prompt", "a", "--target-text", "b", "--eta", "1.5"],
        "--eta must lie strictly",
    ),
    ("steer-layer", ["steer", "--prompt", "a", "--target-text", "b", "--layer", "x"], "--layer must be"),
    ("steer-empty-out", ["steer", "--prompt", "a", "--target-text", "b", "--out", ""], "--out is empty"),
    ("steer-seed", ["steer", "--prompt", "a", "--target-text", "b", "--seed", "-3"], "--seed must be"),
    (
        "steer-greedy-temperature",
        ["steer", "--prompt", "a", "--target-text", "b", "--temperature", "2"],
        "--temperature only applies to --decoding sample",
    ),
    ("eval-top-k", ["evaluate-steering", "--top-k", "0"], "--top-k must be >= 1"),
    ("eval-seed", ["evaluate-steering", "--seed", "-1"], "--seed must be an integer"),
    ("eval-prompts", ["evaluate-steering", "--prompts", "0"], "--prompts must be at least 1"),
    ("eval-targets", ["evaluate-steering", "--targets", "mine"], "invalid choice: 'mine'"),
    ("eval-empty-out", ["evaluate-steering", "--out", ""], "--out is empty"),
    ("eval-unknown-flag", ["evaluate-steering", "--judge-modle", "x"], "did you mean --judge-model?"),
    # monitor
    ("monitor-no-sub", ["monitor"], "the following arguments are required: monitor_command"),
    ("calibrate-no-out", ["monitor", "calibrate"], "the following arguments are required: --out"),
    ("calibrate-alpha", ["monitor", "calibrate", "--alpha", "2", "--out", "{tmp}/c.json"], "--alpha must be"),
    (
        "calibrate-over-a-users-file",
        ["monitor", "calibrate", "--overwrite", "--out", "{tmp}/notes.txt"],
        "exists and was not written by ppmech",
    ),
    ("calibrate-existing", ["monitor", "calibrate", "--out", "{tmp}/notes.txt"], "not written by ppmech"),
    ("calibrate-empty-out", ["monitor", "calibrate", "--out", ""], "--out is empty"),
    ("calibrate-seed", ["monitor", "calibrate", "--seed", "-1", "--out", "{tmp}/c.json"], "--seed must be"),
    (
        "score-no-calibration",
        ["monitor", "score", "{tmp}/notes.txt", "--calibration", "{tmp}/x"],
        "not found",
    ),
    (
        "score-not-a-calibration",
        ["monitor", "score", "{tmp}/notes.txt", "--calibration", "{tmp}/notes.txt"],
        "is corrupt (invalid JSON",
    ),
    ("benchmark-splice", ["monitor", "benchmark", "--splice-at", "100"], "--splice-at must be between"),
    ("benchmark-sequences", ["monitor", "benchmark", "--sequences", "2"], "--sequences must be at least 10"),
    ("benchmark-seed", ["monitor", "benchmark", "--seed", "-1"], "--seed must be an integer"),
]


def _scratch(root: Path) -> None:
    """What the cases point at: a user's file, a user's directory, a ppmech steer output."""
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("my notes\n")
    (root / "mine").mkdir()
    (root / "mine" / "thesis.txt").write_text("chapter 1\n")
    steer = root / "steer-out"
    steer.mkdir()
    (steer / ".ppmech-run").write_text(json.dumps({"kind": "steer"}))
    (steer / "summary.json").write_text("{}")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    base = tmp_path_factory.mktemp("bad-input")
    # Only the cases this session selected (e.g. with -k), all at once.
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is request.module and hasattr(item, "callspec")
    }
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}

    def run(case: tuple[str, list[str], str]) -> tuple[str, tuple[subprocess.CompletedProcess[str], Path]]:
        name, argv, _ = case
        root = base / name
        _scratch(root)
        args = [a.replace("{tmp}", str(root)) for a in argv]
        proc = subprocess.run(
            [sys.executable, "-m", "ppmech", *args],
            capture_output=True,
            text=True,
            cwd=root,  # a default --out would land here, never in the repository
            env=env,
            timeout=300,
            check=False,
        )
        return name, (proc, root)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, [c for c in CASES if c[0] in selected]))


@pytest.mark.parametrize(("name", "argv", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    name: str, argv: list[str], needle: str, results: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    proc, root = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]
    assert lines[0].startswith("ppmech"), lines[0]
    # Nothing written, nothing deleted: the scratch directory is exactly as it was made.
    fresh = root.with_name(root.name + "-fresh")
    _scratch(fresh)
    assert _snapshot(root) == _snapshot(fresh)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in fresh.iterdir())
