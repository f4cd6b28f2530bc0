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
    # What the normal text was: windows from anywhere in held-out English Wikipedia documents.
    normal = data["normal_text"]
    assert (normal["corpus"], normal["split"], normal["positions"]) == ("wiki-en", "heldout", "anywhere")
    assert (normal["tokens"], normal["count"]) == (20, 6)
    assert 0 <= normal["opening_fraction"] <= 1 and normal["chars_per_token_mean"] > 1


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
    # Each text is named by the line it starts on.
    assert "texts.txt:1" in out and "texts.txt:3" in out and "anomaly" in out and "alarm" in out
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
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "skipped long.txt:1" in err and "8192-token context" in err and "none of the 1 texts" in err

    rc = main(["monitor", "score", "--calibration", str(calibration), "--batch-size", "0", str(text)])
    _one_line_error(capsys, rc, "--batch-size must be 'auto' or at least 1")

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


def test_one_short_or_bad_text_is_skipped_and_named_not_fatal(
    calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS + "\nHi\n")  # the third text, on line 5, has 1 token
    assert main(["monitor", "score", "--calibration", str(calibration), str(path)]) == 0
    captured = capsys.readouterr()
    assert "skipped texts.txt:5: the text has only 1 token(s)" in captured.err
    assert "texts.txt:1" in captured.out and "texts.txt:3" in captured.out
    assert "scored 2 texts, skipped 1" in captured.out


def test_jsonl_on_stdin_is_recognised_and_bad_records_are_named(
    calibration: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    first, second = (t.strip() for t in TEXTS.split("\n\n"))
    lines = [json.dumps({"text": first}), "[1, 2]", json.dumps({"body": "x"}), json.dumps({"text": second})]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["monitor", "score", "--calibration", str(calibration), "--json", "-"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["source"] for r in records] == ["stdin:1", "stdin:4"]  # scored as texts, not raw JSON
    assert "stdin:2 is an array, not a JSON object" in captured.err
    assert (
        "--text-field" not in captured.err.split("stdin:2", 1)[1].split("\n")[0]
    )  # no field advice for an array
    assert "stdin:3 has no field 'text'" in captured.err and "--text-field" in captured.err
    assert "skipped 2" in captured.err
    # --format text scores the same input as raw text (two blocks? no: one, no blank line).
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert (
        main(["monitor", "score", "--calibration", str(calibration), "--json", "--format", "text", "-"]) == 0
    )
    assert [json.loads(x)["source"] for x in capsys.readouterr().out.splitlines()] == ["stdin #1"]


def test_score_warns_once_when_the_input_is_far_outside_the_calibration(
    calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "long_texts.txt"
    # Far longer than the 20-token calibration windows: one warning for all of them.
    path.write_text("\n\n".join([TEXTS.split("\n\n")[0] * 3] * 3))
    assert main(["monitor", "score", "--calibration", str(calibration), str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("far outside the calibration's normal text") == 1
    assert "3 of 3 texts" in err and "tokens, the calibration's texts had 20" in err


def test_ctrl_c_does_not_advise_resume(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from ppmech.cli.monitor import _interruptible

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert _interruptible("calibrate")(interrupted)(argparse.Namespace()) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing was written" in err and "monitor calibrate" in err


def test_benchmark_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "bench.md"
    rc = main(
        [
            "monitor",
            "benchmark",
            "--sequences",
            "10",
            "--calibration-sequences",
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
    assert "False alarms on fresh normal text" in out
    for kind in ("openings", "later windows", "other split"):
        for alarm in ("anomaly flag", "CUSUM on z_H", "either, separate thresholds", "combined alarm"):
            assert any(kind in line and alarm in line and "/ 5" in line for line in out.splitlines())
    assert "False alarms at a nominal 5% on fresh normal text of three kinds" in md.read_text()
    assert "median delay (tokens)" in out
    report = md.read_text()
    assert "| method |" in report
    assert "| \\|z\\| mean H |" in report  # pipes escaped: the markdown keeps its columns
