"""``ppmech monitor`` end to end on the embedded SmolLM2-135M."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppmech.cli import main

pytestmark = pytest.mark.slow

TEXTS = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel.\n\n"
    "banana banana banana banana banana banana banana banana banana banana banana banana\n"
)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitor") / "cal.json"
    rc = main(
        ["monitor", "calibrate", "--sequences", "6", "--tokens", "20", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    return out


def test_calibrate_writes_a_calibration_tied_to_the_model(calibration: Path) -> None:
    data = json.loads(calibration.read_text())
    assert data["kind"] == "ppmech-monitor-calibration"
    assert data["model"]["spec"] == "smollm2-135m"
    assert data["config"]["sequences"] == 6 and data["n_sequences"] == 6
    # Split conformal: 3 texts fit, 3 set the thresholds, too few for alpha 0.05: alarms off (null).
    assert (data["n_fit"], data["n_holdout"]) == (3, 3)
    assert data["anomaly_threshold"] is None
    assert data["signals"]["H"]["token_std"] > 0


def test_calibrate_refuses_to_overwrite(calibration: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["monitor", "calibrate", "--sequences", "6", "--tokens", "20", "--out", str(calibration)])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


def test_score_prints_sequence_and_token_scores(
    calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS)
    assert main(["monitor", "score", "--calibration", str(calibration), str(path)]) == 0
    out = capsys.readouterr().out
    assert "texts.txt#0" in out and "texts.txt#1" in out and "anomaly" in out
    assert main(["monitor", "score", "--calibration", str(calibration), "--json", "--tokens", str(path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2
    normal, looped = records
    assert looped["anomaly"] > normal["anomaly"]
    assert normal["tokens"][0]["H"] is None  # the first scored token has no velocity
    assert normal["n_tokens"] == len(normal["tokens"])


def test_score_reads_stdin(
    calibration: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS))
    assert main(["monitor", "score", "--calibration", str(calibration), "--whole", "-"]) == 0
    assert "stdin" in capsys.readouterr().out


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert "Traceback" not in err


def test_bad_input_exits_2_with_one_line(
    calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXTS)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    rc = main(["monitor", "score", "--calibration", str(calibration), str(empty)])
    _one_line_error(capsys, rc, "is empty")

    long_text = tmp_path / "long.txt"
    long_text.write_text("word " * 8300)
    rc = main(["monitor", "score", "--calibration", str(calibration), str(long_text)])
    _one_line_error(capsys, rc, "8192-token context")

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(calibration.read_text()[:300])
    rc = main(["monitor", "score", "--calibration", str(corrupt), str(text)])
    _one_line_error(capsys, rc, "corrupt")

    other = json.loads(calibration.read_text())
    other["model"]["tokenizer_hash"] = "0" * 64
    wrong_tok = tmp_path / "wrong_tok.json"
    wrong_tok.write_text(json.dumps(other))
    rc = main(["monitor", "score", "--calibration", str(wrong_tok), str(text)])
    _one_line_error(capsys, rc, "different tokenizer")

    rc = main(["monitor", "score", "--calibration", str(calibration), "--weights", "random", str(text)])
    _one_line_error(capsys, rc, "was made for model")


def test_benchmark_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "bench.md"
    rc = main(
        [
            "monitor",
            "benchmark",
            "--sequences",
            "10",
            "--calibration-texts",
            "10",
            "--false-alarm-sequences",
            "5",
            "--tokens",
            "16",
            "--splice-at",
            "8",
            "--no-progress",
            "--markdown",
            str(md),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("shuffled", "wiki-es", "wiki-fr", "random-chars", "repetition", "random-model", "spliced"):
        assert name in out
    for method in (
        "anomaly (mean, std, drift of H)",
        "mean NLL",
        "energy score -logsumexp",
        "predictive entropy",
        "|z| text length (characters)",
        "Mahalanobis final hidden state",
    ):
        assert method in out
    assert "False alarms on fresh normal text" in out and "split conformal (5 fit + 5 held out)" in out
    assert "False alarms at nominal 5% on 15 fresh normal texts" in md.read_text()
    assert "median delay (tokens)" in out
    report = md.read_text()
    assert "| method |" in report
    assert "| \\|z\\| mean H |" in report  # pipes escaped: the markdown keeps its columns
