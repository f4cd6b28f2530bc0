"""`ppmech measure`, `models` and `compare` as a user runs them, bad input included."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ppmech.cli import main


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
