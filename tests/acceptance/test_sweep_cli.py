"""`ppmech sweep` end to end: bad input, Ctrl-C and resume, and the paper preset offline on two Ray nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tests.integration.test_models import _hub_cache_entry

from ppmech.cli import main
from ppmech.runs import load_run
from ppmech.sweep.study import PAPER_TABLE1_MODELS


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("study", "extra", "message"),
    [
        ('models = ["smollm2-135m"]\nprompts = 4 4\n', [], "not valid TOML: "),
        (
            'models = ["smollm2-135m"]\nnew_token = 4\n',
            [],
            "unknown key 'new_token' at the top level (line 2, column 1)",
        ),
        ("models = []\n", [], "the grid is empty"),
        (
            'models = ["smollm2-135m"]\n',
            ["--address", "127.0.0.1:1"],
            "cannot reach a Ray cluster at 127.0.0.1:1",
        ),
        (
            'models = ["smollm2-135m"]\n',
            ["--address", "nowhere"],
            "is not auto, HOST:PORT or ray://HOST:PORT",
        ),
        ('models = ["smollm2-135m"]\n', ["--set", "promts=3"], "did you mean 'prompts'"),
        # What `measure` refuses, `sweep` refuses at validation, before Ray starts.
        ('models = ["smollm2-135m"]\ndevice = "bogus"\n', [], "unknown device 'bogus'"),
        ('models = ["smollm2-135m"]\ndevice = ""\n', [], "`device` is empty"),
        ('models = ["smollm2-135m"]\nbatch_size = [1, 2]\n', [], "measure the same thing"),
        ('models = [{ model = "smollm2-135m", name = "../escaped" }]\n', [], "not one safe path component"),
        ('models = ["smollm2-135m"]\n', ["--join-timeout", "0"], "--join-timeout must be more than 0"),
        # Resources no node has are refused up front, naming what there is (Ray would wait forever).
        ('models = ["smollm2-135m"]\n[resources]\ngpus = 1\n', [], "no node can run one run of this study"),
        (
            'models = ["smollm2-135m"]\n[resources]\ncpus = 8\n',
            ["--num-cpus", "2"],
            "([resources] cpus = 8, gpus = 0): this machine's Ray instance has 1 node: 2 CPUs, 0 GPUs",
        ),
        (
            'models = ["smollm2-135m"]\n',
            ["--preset", "paper-table1"],
            "give a study file or --preset, not both",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    study: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.toml"
    path.write_text(study)
    code, _, err = _run(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress", *extra], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if "TOML" in message:
        assert "(at line 2, column 13)" in err
    assert not (tmp_path / "out").exists()


def test_no_study_and_a_file_as_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["sweep", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no study given" in err
    code, _, err = _run(["sweep", "--preset", "paper-table1", "--out", ""], capsys)
    assert code == 2 and "--out is empty" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "file").write_text("kept")
    code, _, err = _run(["sweep", "--preset", "paper-table1", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "is a file, not a directory" in err
    assert (tmp_path / "file").read_text() == "kept"


def test_a_second_sweep_into_a_locked_study_is_one_line_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('models = ["smollm2-135m"]\nprompts = 2\nnew_tokens = 3\n')
    out = tmp_path / "out"
    # Another process holds the study's lock, as a running sweep does (the same OutputLock).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ppmech.sweep.runner import study_lock\n"
            "with study_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # Its own process, as a user runs it: inside pytest, a Ray that earlier tests started in
        # this process can log to the captured stderr (Ray 2.60's token-auth notice).
        done = subprocess.run(
            [sys.executable, "-m", "ppmech", "sweep", str(path), "--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, err = done.returncode, done.stderr
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"being written by another ppmech process (pid {holder.pid} on " in err
        assert not (out / "runs").exists() and not (out / "study.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock file is left, and the next sweep can still lock it.
    from ppmech.sweep.runner import study_lock

    with study_lock(out):
        pass
    assert not (out / ".study.ppmech-lock").exists()  # removed on release


def test_dry_run_lists_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        ["sweep", "--preset", "paper-table1", "--out", str(tmp_path / "o"), "--dry-run"], capsys
    )
    assert code == 0 and "20 runs (dry run)" in out
    assert all(m in out for m in PAPER_TABLE1_MODELS) and not (tmp_path / "o").exists()


def _sweep_cmd(study: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ppmech", "sweep", str(study), "--out", str(out), "--no-progress", *extra]


def _complete_dirs(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) if runs.is_dir() else []


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(
    tiny_model_dir: Callable[[str], str], tmp_path: Path
) -> None:
    models = ", ".join(f'"{tiny_model_dir(a)}"' for a in ("llama", "qwen2", "gpt2"))
    study = tmp_path / "study.toml"
    study.write_text(
        f"models = [{models}]\nprompts = 8\ncontext_tokens = 16\nnew_tokens = 24\n"
        "batch_size = 2\nn_boot = 50\n"
    )
    out = tmp_path / "out"
    # Ctrl-C at a terminal reaches the whole foreground process group, Ray's processes included.
    proc = subprocess.Popen(
        _sweep_cmd(study, out, "--num-cpus", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not _complete_dirs(out / "runs"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err and "Traceback" not in err
    done = _complete_dirs(out / "runs")
    assert 1 <= len(done) < 3
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # nothing half-written
    for name in done:
        assert len(load_run(out / "runs" / name).steps) == 8 * 24
    frame = pd.read_parquet(out / "study.parquet")
    assert len(frame) == 3 and sorted(frame.loc[frame["status"] == "complete", "run"]) == done
    assert set(frame.loc[frame["status"] != "complete", "status"]) == {"interrupted"}

    again = subprocess.run(
        _sweep_cmd(study, out, "--num-cpus", "2"), capture_output=True, text=True, timeout=400
    )
    assert again.returncode == 0, again.stderr
    frame = pd.read_parquet(out / "study.parquet")
    assert set(frame["status"]) == {"complete"} and len(_complete_dirs(out / "runs")) == 3
    assert sorted(frame.loc[frame["reused"], "run"]) == done
    assert f"3 runs: 3 complete ({len(done)} reused, {3 - len(done)} recorded now), 0 failed" in again.stdout


@pytest.fixture(scope="module")
def offline_cluster(
    tiny_model_dir: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, str]]]:
    """Two Ray nodes on this machine (1 CPU each), offline, with one hub id in a local hub cache."""
    from ray.cluster_utils import Cluster

    hub = tmp_path_factory.mktemp("hub")
    _hub_cache_entry(hub, "HuggingFaceTB/SmolLM2-135M", tiny_model_dir("llama"), "c" * 40)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the nodes' workers inherit it
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster, env
    finally:
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_paper_preset_offline_on_a_two_node_cluster(
    offline_cluster: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    """Every hub id fails with the hub's one-line error except the one in the hub cache; both nodes work."""
    cluster, env = offline_cluster
    out = tmp_path / "paper"
    cmd = [
        sys.executable, "-m", "ppmech", "sweep", "--preset", "paper-table1", "--out", str(out),
        "--no-progress", "--address", cluster.address,
        *("--set", "prompts=2", "--set", "new_tokens=4", "--set", "context_tokens=8", "--set", "n_boot=50"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env={**os.environ, **env})
    assert done.returncode == 1, done.stderr  # some runs failed
    frame = pd.read_parquet(out / "study.parquet")
    assert len(frame) == 20
    ok = frame[frame["status"] == "complete"]
    assert list(ok["model"]) == ["HuggingFaceTB/SmolLM2-135M"] * 2 and set(ok["weights"]) == {
        "pretrained",
        "random",
    }
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 18
    for row in failed.itertuples():
        # The loader's one line for a hub id that is neither cached nor reachable (offline).
        assert row.error.startswith(
            (
                f"model '{row.model}' is not in the local Hugging Face cache",
                f"could not load model '{row.model}' from the Hugging Face hub",
            )
        ), row.error
        assert "\n" not in row.error
    assert _complete_dirs(out / "runs") == sorted(ok["run"])
    nodes = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert len(nodes) == 2 and set(frame["node_id"]) == nodes  # runs landed on both nodes
    assert "18 failed" in done.stdout and "Runs not complete" in done.stdout


def test_nothing_that_is_not_ours_is_written_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.toml"
    study.write_text('models = ["smollm2-135m"]\n')
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "thesis.txt").write_text("kept")
    code, _, err = _run(["sweep", str(study), "--out", str(notes), "--replace"], capsys)
    assert code == 2 and "is not empty and holds no ppmech study (it has thesis.txt)" in err
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    foreign = tmp_path / "out" / "runs" / "smollm2-135m-pretrained"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("kept")
    code, _, err = _run(["sweep", str(study), "--out", str(tmp_path / "out"), "--replace"], capsys)
    assert code == 2 and "exists and is not a ppmech run" in err and len(err.strip().splitlines()) == 1
    assert (foreign / "notes.txt").read_text() == "kept" and not (tmp_path / "out" / "study.json").exists()


def test_verify_refuses_a_sweep_that_is_not_a_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["verify", "--sweep", str(tmp_path), "--out", str(tmp_path / "v")], capsys)
    assert code == 2 and "is not a ppmech sweep study directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_joining_something_that_is_not_a_ray_head_times_out_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain TCP listener accepts the connection and never answers: the join gives up at --join-timeout."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    study = tmp_path / "study.toml"
    study.write_text('models = ["smollm2-135m"]\nprompts = 2\nnew_tokens = 3\n')
    started = time.monotonic()
    try:
        code, _, err = _run(
            ["sweep", str(study), "--out", str(tmp_path / "out"), "--address", f"127.0.0.1:{port}",
             "--join-timeout", "6", "--no-progress"],
            capsys,
        )  # fmt: skip
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    elapsed = time.monotonic() - started
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing at 127.0.0.1:{port} answered" in err
    assert "within 6 s" in err and "--join-timeout" in err and "Ray's log: " in err
    assert accepted, "the join never reached the listener"
    assert elapsed < 40, elapsed
    assert not (tmp_path / "out").exists()  # nothing written before the cluster is joined


def test_without_ray_a_sweep_that_must_record_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text('models = ["smollm2-135m"]\nprompts = 2\nnew_tokens = 3\n')
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "import ppmech\n"
        "from ppmech.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "sweep", str(study), "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "needs Ray, which is not installed" in done.stderr and "pip install 'ppmech[sweep]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
