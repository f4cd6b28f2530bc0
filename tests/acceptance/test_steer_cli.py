"""`ppmech steer` and `ppmech evaluate-steering` as a user runs them, bad input included."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ppmech.cli import main
from ppmech.runs import STEP_SCHEMA


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_steer_prints_texts_and_energy_and_writes_both_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "steer"
    args = ["steer", "--model", "smollm2-135m", "--prompt", "The capital of France is"]
    args += ["--target-text", "a small village", "--new-tokens", "5", "--out", str(out)]
    code, stdout, _ = _run(args, capsys)
    assert code == 0
    assert "natural:" in stdout and "steered:" in stdout and "Energy comparison" in stdout
    assert "a small village" in stdout.split("steered:")[1].splitlines()[0]
    steps = pd.read_parquet(out / "steps.parquet")
    assert set(STEP_SCHEMA.names) <= set(steps.columns)
    assert {"trace", "target_id", "steer_steps", "delta_norm", "p_target_before", "p_target_after"} <= set(
        steps.columns
    )
    assert sorted(steps["trace"].unique()) == ["natural", "steered"]
    steered = steps[(steps["trace"] == "steered") & (steps["target_id"] >= 0)]
    assert len(steered) == 3 and (steered["p_target_after"] >= 0.5).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steered_text"].startswith(" a small village")
    # Refuses to overwrite without --overwrite.
    code, _, err = _run(args, capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-text", "   "], "tokenises to no tokens"),
        (["--target-text", "Paris", "--eta", "1.5"], "--eta must lie strictly between 0 and 1"),
        (["--target-text", "Paris", "--eta", "0"], "--eta must lie strictly between 0 and 1"),
        (["--target-text", "Paris", "--layer", "99"], "layer index 99 is out of range"),
        (["--target-ids", "5,x"], "--target-ids takes comma-separated ids"),
    ],
)
def test_steer_bad_input_is_one_line_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["steer", "--model", "smollm2-135m", "--prompt", "Hello", "--out", str(tmp_path / "o"), *extra]
    try:
        code, _, err = _run(args, capsys)
    except SystemExit as exc:  # argparse type errors exit directly
        code = int(exc.code or 0)
        err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_judge_endpoint_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    args = ["evaluate-steering", "--prompts", "2", "--judge", "openai", "--judge-url", url]
    args += ["--judge-model", "m", "--judge-retries", "1", "--no-baselines", "--no-progress"]
    args += ["--out", str(tmp_path / "e")]
    code, _, err = _run(args, capsys)
    assert code == 2
    assert "unreachable after 2 attempts" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture
def judge_server() -> Iterator[str]:
    """A real loopback chat-completions server: request n gets "Score: 6" or, every third, no score."""
    count = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                count["n"] += 1
                n = count["n"]
            content = "I would rather not rate this." if n % 3 == 0 else f"Score: {4 + n % 3}"
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_evaluate_steering_records_missing_scores_as_missing(
    judge_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate-steering", "--prompts", "6", "--judge", "openai", "--judge-url", judge_server]
    args += ["--judge-model", "m", "--no-progress", "--out", str(out), "--markdown", str(tmp_path / "t.md")]
    code, stdout, _ = _run(args, capsys)
    assert code == 0
    assert "Table 3" in stdout and "Cohen's d_z" in stdout and "Baselines" in stdout
    items = pd.read_csv(out / "items.csv")
    assert len(items) == 6
    missing = items["natural_score"].isna() | items["steered_score"].isna()
    assert missing.sum() >= 1
    assert items.loc[items["natural_score"].isna(), "natural_error"].eq("no score in reply").all()
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["statistics"]
    assert stats["n_missing_pairs"] == int(missing.sum())
    assert stats["n_pairs"] == 6 - int(missing.sum())
    complete = items[~missing]
    assert stats["natural_mean"] == pytest.approx(complete["natural_score"].mean())
    moved = items["steps"] > 0
    assert stats["moved_only"]["n_items"] == int(moved.sum())
    assert "moved states only" in stdout
    assert {"natural_topk", "steered_topk", "target_in_natural_topk"} <= set(items.columns)
    assert len(json.loads(items.loc[0, "steered_topk"])) == 10
    assert (out / "baselines.csv").is_file()
    assert "| model |" in (tmp_path / "t.md").read_text()
    # Issue 9: a partial judge failure is summarised on the console.
    n = int(missing.sum())
    assert "ratings missing (no score in reply ×" in stdout and "'I would rather not rate this.'" in stdout
    assert stats["judge_failures"]["missing"] >= n


@pytest.fixture
def broken_judge() -> Iterator[str]:
    """A loopback endpoint that answers every request with an HTML error page (not JSON)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            data = b"<html>upstream model not loaded</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_judge_that_never_answers_is_an_error_and_writes_nothing(
    broken_judge: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9: this exited 0 with N = 0 and claimed to have written baselines.csv."""
    out = tmp_path / "eval"
    args = ["evaluate-steering", "--prompts", "2", "--judge", "openai", "--judge-url", broken_judge]
    args += ["--judge-model", "m", "--no-progress", "--no-baselines", "--out", str(out)]
    code, stdout, err = _run(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "gave no usable rating for any of the 4 lists" in err
    assert "'<html>upstream model not loaded</html>'" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert "wrote" not in stdout


def test_steer_overwrite_never_replaces_another_commands_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9: `steer --overwrite` replaced a `measure` run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".ppmech-run").write_text(json.dumps({"kind": "measure"}))
    (run / "summary.json").write_text("{}")
    args = ["steer", "--prompt", "Hello", "--target-text", "world", "--out", str(run), "--overwrite"]
    code, _, err = _run(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds a ppmech measure output, not a steer output" in err
    assert sorted(p.name for p in run.iterdir()) == [".ppmech-run", "summary.json"]


# --- issues 18-20: steer's lengths, sampling settings, config files ----------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Any) -> str:
    """A tiny random-config model (256 positions); made in setup, so its save chatter is not the test's."""
    return str(tiny_model_dir("llama"))


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code, _, err = _run(argv, capsys)
    except SystemExit as exc:
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_new_tokens_shorter_than_the_target_is_refused_naming_both(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: the rest of the target was silently dropped."""
    base = ["steer", "--model", tiny, "--prompt", "Hello", "--out", str(tmp_path / "o")]
    err = _refused([*base, "--target-ids", "5,6,7", "--new-tokens", "2"], capsys)
    assert "--new-tokens 2 is shorter than the 3-step target schedule" in err
    err = _refused([*base, "--target-text", "one two three four", "--new-tokens", "1"], capsys)
    assert "--new-tokens 1 is shorter than the target, which is 4 tokens" in err
    assert not (tmp_path / "o").exists()


def test_a_too_long_target_names_the_target_not_context_tokens(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: the message named `context_tokens`, which is not a steer flag."""
    argv = ["steer", "--model", tiny, "--prompt", "Hello", "--out", str(tmp_path / "o")]
    err = _refused([*argv, "--target-text", " word" * 300], capsys)  # the tiny model has 256 positions
    assert "300-token target text exceed the model's 256 positions" in err
    assert "context_tokens" not in err and "context-tokens" not in err


@pytest.mark.parametrize("extra", [["--top-p", "0.5"], ["--top-k", "3"], ["--top-k", "3", "--top-p", "0.5"]])
def test_steer_refuses_sampling_settings_under_greedy(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: `steer --decoding greedy --top-p 0.5 --top-k 3` was accepted and ignored."""
    argv = ["steer", "--prompt", "Hi", "--target-text", "x", "--out", str(tmp_path / "o"), *extra]
    assert "only applies to --decoding sample, not greedy" in _refused(argv, capsys)


def test_steer_reads_a_config_file_and_writes_its_own(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    path = tmp_path / "steer.toml"
    path.write_text(
        f'model = "{tiny}"\nprompt = "The capital of France is"\ntarget_ids = [5, -1, 7]\neta = 0.4\n'
    )
    code, _, err = _run(
        ["steer", "--config", str(path), "--max-steps", "3", "--out", str(tmp_path / "a")], capsys
    )
    assert code == 0, err
    written = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert written["target_ids"] == [5, -1, 7] and written["eta"] == 0.4 and written["max_steps"] == 3
    code, _, err = _run(
        ["steer", "--config", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b")], capsys
    )
    assert code == 0, err
    a = pd.read_parquet(tmp_path / "a" / "steps.parquet")
    b = pd.read_parquet(tmp_path / "b" / "steps.parquet")
    pd.testing.assert_frame_equal(a, b)
