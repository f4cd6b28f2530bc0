"""`ppmech measure`, `models` and `compare` as a user runs them, bad input included."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ppmech.cli import main
from ppmech.runs import load_run


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Callable[[str], str]) -> str:
    return tiny_model_dir("llama")


def _small(model: str, out: Path) -> list[str]:
    return [
        "measure",
        "--model",
        model,
        "--prompts",
        "3",
        "--context-tokens",
        "16",
        "--new-tokens",
        "6",
        "--out",
        str(out),
        "--no-progress",
        "--n-boot",
        "50",
    ]


def test_measure_prints_table_and_compare_reads_runs(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(_small(tiny, tmp_path / "a"), capsys)
    assert code == 0
    assert "global CV" in out and "mean H" in out and "K/V" in out
    _run([*_small(tiny, tmp_path / "b"), "--weights", "random"], capsys)
    code, out, _ = _run(
        ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--markdown", str(tmp_path / "t.md")], capsys
    )
    assert code == 0 and "pretrained" in out and "random" in out
    table = (tmp_path / "t.md").read_text()
    # First line: the generator mark (ppmech.artifacts' output rule), then the table.
    mark, table = table.split("\n", 1)
    assert mark.startswith("<!-- generator: ppmech")
    assert table.startswith("| model | weights |") and table.count("\n") == 4


def test_models_lists_the_embedded_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and "smollm2-135m" in out and "gemma3-270m" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "/nonexistent/model.gguf"], "GGUF file not found"),
        (["--prompts", "0"], "--prompts must be at least 1"),
        (["--context-tokens", "9000"], "exceeds the model's"),
        (["--corpus", "/nonexistent.txt"], "corpus '/nonexistent.txt' not found"),
        (["--prompts", "abc"], "invalid int value"),
        (["--decoding", "sample", "--temperature", "0"], "--temperature must be > 0"),
        (["--n-boot", "-1"], "--n-boot must be 0 (no CIs) or more"),
        # Issue 9: these were accepted (or crashed after recording everything).
        (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295 (got -1)"),
        (["--seed", "4294967296"], "--seed must be an integer from 0 to 4294967295"),
        (["--temperature", "0.7"], "--temperature only applies to --decoding sample, not greedy"),
        (["--decoding", "teacher", "--top-k", "5"], "--top-k only applies to --decoding sample, not teacher"),
        (["--out", ""], "--out is empty"),
        (["--overwrite", "--resume"], "--overwrite and --resume conflict"),
        (["--corpus", ""], "--corpus is empty"),
        # Issue 20: --revision pins a hub model; an embedded one has none to pin.
        (["--revision", "main"], "pins a hub model, but 'smollm2-135m' is not one"),
        (["--model", "smollm2-135m@main"], "pins a hub model"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_small("smollm2-135m", tmp_path / "run"), *extra]
    if extra[0] == "--prompts" and extra[1] == "abc":
        with pytest.raises(SystemExit) as exc:
            main(argv)
        code, err = exc.value.code, capsys.readouterr().err
    else:
        code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\n\n", "is empty"),
        (b"\xff\xfe caf\xe9", "not valid UTF-8"),
        (b"GGUF\x00\x01", "could not read GGUF"),
    ],
)
def test_bad_files_are_one_line_exit_2(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if message == "could not read GGUF":
        path = tmp_path / "broken.gguf"
        path.write_bytes(content)
        argv = [*_small(str(path), tmp_path / "run")]
    else:
        path = tmp_path / "corpus.txt"
        path.write_bytes(content)
        argv = [*_small("smollm2-135m", tmp_path / "run"), "--corpus", str(path)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_existing_out_without_overwrite(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(_small(tiny, tmp_path / "run"), capsys)[0] == 0
    before = (tmp_path / "run" / "steps.parquet").read_bytes()
    code, _, err = _run(_small(tiny, tmp_path / "run"), capsys)
    assert code == 2 and "already holds a complete run" in err and "--overwrite" in err
    assert (tmp_path / "run" / "steps.parquet").read_bytes() == before
    assert _run([*_small(tiny, tmp_path / "run"), "--overwrite"], capsys)[0] == 0


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("ppmech")
    proc = subprocess.run(
        [str(script), "compare", str(tmp_path / "missing")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"ppmech: error: run directory {tmp_path / 'missing'} not found; check the path"
    )


def test_an_unwritable_out_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An OS error on a user's path (here: a file where a parent directory should be) is one line."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _run(_small("smollm2-135m", blocker / "run"), capsys)
    assert code == 2
    assert "ppmech: error:" in err and str(blocker) in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


# --------------------------------------------------------------------------- issue 9: never lose or mix data


def _one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert "Traceback" not in err


def test_overwrite_never_deletes_a_users_directory_or_file(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "thesis.txt").write_text("chapter 1")
    code, _, err = _run([*_small(tiny, mine), "--overwrite"], capsys)
    _one_line(code, err, "was not made by this ppmech")
    assert (mine / "thesis.txt").read_text() == "chapter 1"
    notes = tmp_path / "notes.txt"
    notes.write_text("do not delete")
    code, _, err = _run([*_small(tiny, notes), "--overwrite"], capsys)
    _one_line(code, err, "is a file, not a ppmech output directory")
    assert notes.read_text() == "do not delete"


def test_a_failed_overwrite_keeps_the_old_run(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppmech.engine.recorder import Recorder

    out = tmp_path / "run"
    assert _run(_small(tiny, out), capsys)[0] == 0
    before = load_run(out).summary["statistics"]
    real = Recorder.record
    calls: list[int] = []

    def crash_on_the_second_batch(self: Recorder, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: device lost")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Recorder, "record", crash_on_the_second_batch)
    with pytest.raises(RuntimeError, match="device lost"):
        main([*_small(tiny, out), "--overwrite", "--seed", "1", "--batch-size", "1"])
    run = load_run(out)  # the old run, whole
    assert run.config["seed"] == 0 and run.summary["statistics"] == before


def test_teacher_decoding_names_its_length_rule(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text(" ".join(["word"] * 20) + "\n\n" + " ".join(["more"] * 20))
    argv = [*_small(tiny, tmp_path / "run"), "--corpus", str(corpus), "--decoding", "teacher"]
    code, _, err = _run(argv, capsys)
    _one_line(code, err, "(--context-tokens 16 + --new-tokens 6; teacher decoding scores the article's own")
    assert "ask for fewer --prompts, --context-tokens or --new-tokens" in err
    assert not (tmp_path / "run").exists()


def test_null_texts_are_refused_with_their_line(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"text": "' + "word " * 40 + '"}\n{"text": null}\n')
    code, _, err = _run([*_small(tiny, tmp_path / "run"), "--corpus", str(corpus)], capsys)
    _one_line(code, err, "docs.jsonl:2: field 'text' is null, not a string")


def test_readers_refuse_files_that_are_not_the_runs(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import pyarrow.parquet as pq

    from ppmech.artifacts import describe_file

    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(_small(tiny, a), capsys)[0] == 0
    assert _run([*_small(tiny, b), "--seed", "1"], capsys)[0] == 0
    assert (a / "steps.parquet").read_bytes() != (b / "steps.parquet").read_bytes()
    (a / "steps.parquet").write_bytes((b / "steps.parquet").read_bytes())
    code, out, err = _run(["compare", str(a), str(b)], capsys)
    _one_line(code, err, "steps.parquet of")
    assert "not the file its summary.json describes" in err and "re-record" in err and not out
    # Another schema behind a summary that was made to match it: analyze names the column.
    table = pq.read_table(b / "steps.parquet").drop_columns(["K"])
    pq.write_table(table, b / "steps.parquet")
    summary = json.loads((b / "summary.json").read_text())
    summary.setdefault("files", {})["steps.parquet"] = describe_file(b, "steps.parquet", rows=table.num_rows)
    (b / "summary.json").write_text(json.dumps(summary))
    code, _, err = _run(["analyze", str(b), "--n-boot", "0"], capsys)
    _one_line(code, err, "lacks the column(s) K")


def test_a_full_disk_says_so(tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real ENOSPC from the kernel: the temporary file of the write is /dev/full."""
    import os

    # /dev/full must be the device (writes fail with ENOSPC); were it missing, writing through
    # the link below would create a regular file there.
    assert Path("/dev/full").is_char_device()
    run = tmp_path / "run"
    assert _run(_small(tiny, run), capsys)[0] == 0
    table = tmp_path / "table.md"
    (tmp_path / f".table.md.{os.getpid()}.ppmech-tmp").symlink_to("/dev/full")
    code, _, err = _run(["compare", str(run), "--markdown", str(table)], capsys)
    _one_line(code, err, f"no space left on device while writing {table}")
    assert "free some disk space" in err and not table.exists()


def test_a_second_writer_is_refused_naming_the_first(tiny: str, tmp_path: Path) -> None:
    """Issue 9: a second `--overwrite --seed 1` (or `--resume`) wrote into a running run."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "ppmech", *_small(tiny, out), "--prompts", "6", "--batch-size", "1"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "parts" / "batch-00000.trajectories.parquet").exists():
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, lock taken, while the others try
        for extra in (["--overwrite", "--seed", "1"], ["--resume"]):
            second = subprocess.run([*argv, *extra], capture_output=True, text=True, check=False)
            _one_line(
                second.returncode, second.stderr, f"being written by another ppmech process (pid {first.pid}"
            )
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    run = load_run(out)
    assert run.config["seed"] == 0 and len(run.trajectories) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- issue 20: config files, re-analysis without re-recording; issue 18: --device '' ---------------


def test_a_runs_config_toml_reproduces_it(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    import pandas as pd

    argv = [*_small(tiny, tmp_path / "x"), "--decoding", "sample", "--top-k", "7", "--temperature", "0.9"]
    assert _run([*argv, "--seed", "5"], capsys)[0] == 0
    settings = tomllib.loads((tmp_path / "x" / "config.toml").read_text())
    assert settings["top_k"] == 7 and settings["seed"] == 5 and settings["model"] == tiny
    code, _, err = _run(
        [
            "measure",
            "--config",
            str(tmp_path / "x" / "config.toml"),
            "--out",
            str(tmp_path / "y"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    x, y = load_run(tmp_path / "x"), load_run(tmp_path / "y")
    pd.testing.assert_frame_equal(x.steps, y.steps)  # sampled tokens included: the same run again
    assert x.config == y.config and x.summary["statistics"] == y.summary["statistics"]
    # Flags override the file.
    code, _, err = _run(
        [
            "measure",
            "--config",
            str(tmp_path / "x" / "config.toml"),
            "--prompts",
            "2",
            *["--out", str(tmp_path / "z")],
        ],
        capsys,
    )
    assert code == 0 and load_run(tmp_path / "z").config["prompts"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prompt = 3\n", "unknown key 'prompt' (did you mean 'prompts'?)"),
        ("prompts = [\n", "is not valid TOML"),
        ("prompts = 0\n", "--prompts must be at least 1"),
    ],
)
def test_a_bad_config_file_is_one_line_exit_2(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    code, _, err = _run(["measure", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_blank_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 18: `measure --device ''` silently meant auto."""
    code, _, err = _run([*_small("smollm2-135m", tmp_path / "run"), "--device", ""], capsys)
    assert code == 2 and "--device is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: loading any model fails the test (re-analysis must read stored steps only)."""
    import ppmech.measure
    import ppmech.models.loading

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ppmech.models.loading, "load_model", refuse)
    monkeypatch.setattr(ppmech.measure, "load_configured", refuse)


def test_measure_or_load_returns_the_stored_run_and_reanalyses_without_recording(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from ppmech.errors import PPMechError
    from ppmech.measure import MeasureConfig, measure, measure_or_load

    config = MeasureConfig(model=tiny, prompts=3, context_tokens=16, new_tokens=6, n_boot=50)
    first = measure_or_load(config, tmp_path / "run", progress=False)  # nothing there: measured
    steps_file = (tmp_path / "run" / "steps.parquet").read_bytes()
    _no_model_loads(monkeypatch)
    again = measure_or_load(config, tmp_path / "run")  # a notebook re-run: the stored run
    assert again.statistics.to_dict() == first.statistics.to_dict() and again.summary == first.summary
    pd.testing.assert_frame_equal(again.steps, first.steps)
    # An execution setting does not change what is recorded: still the stored run.
    assert (
        measure_or_load(MeasureConfig(**{**config.to_dict(), "batch_size": 1}), tmp_path / "run").files == []
    )
    # An analysis setting: statistics recomputed from the stored steps, nothing recorded.
    redone = measure_or_load(MeasureConfig(**{**config.to_dict(), "n_boot": 80}), tmp_path / "run")
    assert redone.statistics.n_boot == 80 and redone.summary["config"]["n_boot"] == 80
    assert "n_boot = 80" in (tmp_path / "run" / "config.toml").read_text()
    assert (tmp_path / "run" / "steps.parquet").read_bytes() == steps_file
    assert load_run(tmp_path / "run").summary["statistics"]["n_boot"] == 80
    # A protocol setting: refused, naming it.
    with pytest.raises(PPMechError, match=r"other settings \(new_tokens\)"):
        measure_or_load(MeasureConfig(**{**config.to_dict(), "new_tokens": 7}), tmp_path / "run")
    monkeypatch.undo()
    # The API's overwrite=True replaces it.
    replaced = measure(
        MeasureConfig(**{**config.to_dict(), "new_tokens": 7}), tmp_path / "run", overwrite=True
    )
    assert replaced.summary["config"]["new_tokens"] == 7


def test_analyze_n_boot_loads_no_model_and_device_needs_a_model_analysis(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run([*_small(tiny, tmp_path / "run"), "--prompts", "5"], capsys)[0] == 0
    _no_model_loads(monkeypatch)
    code, out, err = _run(["analyze", str(tmp_path / "run"), "--n-boot", "40", "--no-nulls"], capsys)
    assert code == 0, err
    assert "Analyses" in out
    for device in ("cuda", "bogus"):
        code, _, err = _run(["analyze", str(tmp_path / "run"), "--device", device], capsys)
        assert code == 2 and "--device" in err and "--hidden" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(tmp_path / "run"), "--device", ""])
    assert exc.value.code == 2 and "--device is empty" in capsys.readouterr().err
