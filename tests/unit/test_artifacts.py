"""Output safety (issue 9): atomic files, ownership markers, one writer per output, staged overwrite.

No model is involved: run directories are written with :class:`~ppmech.runs.RunWriter`
from small synthetic tables, and read back with the real reader (:func:`load_run`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppmech import artifacts
from ppmech.artifacts import MARKER, Output, OutputLock, files
from ppmech.errors import PPMechError
from ppmech.runs import STEP_SCHEMA, TRAJECTORY_SCHEMA, RunWriter, load_run

PER_BATCH = 2
STEPS = 3
BATCHES = 3
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _tables(variant: int, batch: int) -> tuple[pa.Table, pa.Table]:
    """One batch whose every row names the settings (``variant``) it was made with."""
    ids = [batch * PER_BATCH + i for i in range(PER_BATCH)]
    tag = f"v{variant}"
    traj = pa.Table.from_pydict(
        {
            "trajectory": ids,
            "source": [tag] * PER_BATCH,
            "prompt_ids": [[1, 2]] * PER_BATCH,
            "generated_ids": [[3] * STEPS] * PER_BATCH,
            "prompt_text": ["p"] * PER_BATCH,
            "generated_text": ["g"] * PER_BATCH,
        },
        schema=TRAJECTORY_SCHEMA,
    )
    n = PER_BATCH * STEPS
    steps = pa.Table.from_pydict(
        {
            "trajectory": [t for t in ids for _ in range(STEPS)],
            "step": list(range(STEPS)) * PER_BATCH,
            "token_id": [3] * n,
            "token": [tag] * n,
            "logp": [-1.0] * n,
            "entropy": [1.0] * n,
            "speed_sq": [1.0] * n,
            "K": [0.0] * n,
            "V": [1.0] * n,
            "H": [1.0] * n,
        },
        schema=STEP_SCHEMA,
    )
    return traj, steps


def write_run(out: Path, variant: int, overwrite: bool = False, resume: bool = False) -> None:
    """A ``measure``-like writer: batches, then the summary, under one :class:`RunWriter`."""
    config = {"variant": variant, "batches": BATCHES}
    with RunWriter(out, config, overwrite=overwrite, resume=resume) as writer:
        done = writer.done_batches()
        for index in range(BATCHES):
            if index not in done:
                writer.write_batch(index, *_tables(variant, index), None)
        writer.finalize(lambda steps: {"config": config, "rows": len(steps)})


def write_steer(out: Path, variant: int, overwrite: bool = False) -> None:
    """A single-shot (non-resumable) writer, like ``steer``."""
    with Output(out, "steer", overwrite=overwrite) as output:
        artifacts.write_parquet(output.path / "steps.parquet", _tables(variant, 0)[1])
        artifacts.write_json(output.path / "summary.json", {"variant": variant})
        output.commit()


REFUSALS = (
    "not found",
    "incomplete",
    "unfinished write",
    "not a measure run",
    "is a file",
    "not a ppmech run",
)


def check_reads_whole(out: Path) -> int | None:
    """The variant of a complete run at ``out`` (every row from it), or ``None`` when it is not complete.

    A run that is not complete must be refused as absent or interrupted, never as torn
    (a file that differs from its summary).
    """
    try:
        run = load_run(out)
    except PPMechError as exc:
        assert any(s in exc.problem for s in REFUSALS), exc.problem
        return None
    variant = run.summary["config"]["variant"]
    assert set(run.trajectories["source"]) == {f"v{variant}"}
    assert set(run.steps["token"]) == {f"v{variant}"}
    assert sorted(run.trajectories["trajectory"]) == list(range(BATCHES * PER_BATCH))
    assert len(run.steps) == BATCHES * PER_BATCH * STEPS
    return int(variant)


# --------------------------------------------------------------------------- files


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    artifacts.write_json(path, {"x": 1})
    with pytest.raises(ValueError), artifacts.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("killed")
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        pytest.raises(PPMechError, match="no space left on device while writing") as exc,
        artifacts.atomic_path(tmp_path / "x.bin"),
    ):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left")
    assert "free some disk space" in exc.value.fix
    # numpy's tofile loses the errno ("N requested and M written"): a nearly full disk still counts.
    monkeypatch.setattr(
        files.shutil, "disk_usage", lambda _: type("U", (), {"total": 1, "used": 1, "free": 0})()
    )
    assert artifacts.no_space(OSError("46080 requested and 4064 written"), tmp_path / "x.npy")
    assert not artifacts.no_space(OSError(errno.EACCES, "Permission denied"), tmp_path / "x.npy")
    assert not list(tmp_path.iterdir())


def test_npy_is_serialised_before_it_is_written(tmp_path: Path) -> None:
    import numpy as np

    artifacts.write_npy(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(6).reshape(2, 3))


def test_an_empty_out_is_refused() -> None:
    with pytest.raises(PPMechError, match="--out is empty"):
        artifacts.output_path("", "runs/x")
    with pytest.raises(PPMechError, match="--out is empty"):
        artifacts.output_path("  ", "runs/x")
    assert artifacts.output_path(None, "runs/x") == Path("runs/x")


# --------------------------------------------------------------------------- ownership


def test_overwrite_never_touches_a_users_file_or_directory(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my thesis")
    for overwrite in (False, True):
        with pytest.raises(PPMechError, match="is a file, not a ppmech output directory"):
            write_run(notes, 0, overwrite=overwrite)
    assert notes.read_text() == "my thesis"
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "thesis.txt").write_text("chapter 1")
    for overwrite in (False, True):
        with pytest.raises(PPMechError, match="was not made by this ppmech"):
            write_run(mine, 0, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "notes.txt"]


def test_a_users_file_inside_a_run_blocks_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out, 0)
    (out / "my-notes.md").write_text("keep")
    with pytest.raises(PPMechError, match=r"holds files ppmech did not write \(my-notes.md\)"):
        write_run(out, 1, overwrite=True)
    assert (out / "my-notes.md").read_text() == "keep" and check_reads_whole(out) == 0


def test_overwrite_replaces_only_the_same_kind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out, 0)
    with pytest.raises(PPMechError, match="holds a ppmech measure output, not a steer output"):
        write_steer(out, 1, overwrite=True)
    assert check_reads_whole(out) == 0
    steer = tmp_path / "steer"
    write_steer(steer, 1)
    with pytest.raises(PPMechError, match="is a ppmech steer output, not a measure run"):
        load_run(steer)
    with pytest.raises(PPMechError, match="holds a ppmech steer output"):
        write_run(steer, 2, overwrite=True)
    marker = json.loads((steer / MARKER).read_text())
    assert marker["kind"] == "steer" and marker["pid"] == os.getpid() and marker["created"]


def test_overwrite_and_resume_conflict(tmp_path: Path) -> None:
    with pytest.raises(PPMechError, match="`overwrite` and `resume` conflict"):
        write_run(tmp_path / "run", 0, overwrite=True, resume=True)
    assert not list(tmp_path.iterdir())


class Killed(BaseException):
    """An injected crash (BaseException, like KeyboardInterrupt: nothing may swallow it)."""


@contextmanager
def crash_after(monkeypatch: pytest.MonkeyPatch, events: int | None) -> Iterator[list[str]]:
    """Raise :class:`Killed` at the ``events``-th file write, rename or delete of :mod:`ppmech.artifacts`."""
    seen: list[str] = []
    real_atomic, real_rename, real_delete = files.atomic_path, files._rename, files._delete

    def tick(what: str) -> None:
        seen.append(what)
        if events is not None and len(seen) == events:
            raise Killed(what)

    @contextmanager
    def atomic(path: Any) -> Iterator[Path]:
        tick(f"write {Path(path).name}")
        with real_atomic(path) as tmp:
            yield tmp

    def rename(a: Path, b: Path) -> None:
        tick(f"rename {a.name} -> {b.name}")
        real_rename(a, b)

    def delete(path: Path) -> None:
        tick(f"delete {path.name}")
        real_delete(path)

    with monkeypatch.context() as m:
        # Writes of runs.py go through the package's name, the rest through the files module.
        m.setattr(artifacts, "atomic_path", atomic)
        m.setattr(files, "atomic_path", atomic)
        m.setattr(files, "_rename", rename)
        m.setattr(files, "_delete", delete)
        yield seen


def test_a_failed_overwrite_leaves_the_old_run_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    write_run(out, 0)
    with crash_after(monkeypatch, None) as seen:
        write_run(tmp_path / "probe", 1)
    for events in range(1, len(seen) + 4):
        with crash_after(monkeypatch, events), pytest.raises(Killed):
            write_run(out, 1, overwrite=True)
        # Until the new run is complete and swapped in, the old one is there and whole.
        assert check_reads_whole(out) == 0
        with pytest.raises(PPMechError, match="already holds a complete run"):
            write_run(out, 1)
    write_run(out, 1, overwrite=True)
    assert check_reads_whole(out) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "run"]


def test_an_interrupted_swap_is_finished_by_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    write_run(out, 0)
    with crash_after(monkeypatch, None) as seen:
        write_run(out, 1, overwrite=True)
    swap = next(i for i, e in enumerate(seen, start=1) if e.startswith("rename run ->"))
    with crash_after(monkeypatch, swap + 1), pytest.raises(Killed):
        write_run(out, 2, overwrite=True)
    # Between the two renames: no run at `out`, but the new one is complete beside it.
    assert not out.exists()
    with pytest.raises(PPMechError, match="unfinished write"):
        load_run(out)
    with pytest.raises(PPMechError, match="already holds a complete run"):
        write_run(out, 3)  # the next writer finishes the swap first, then refuses
    assert check_reads_whole(out) == 2


# --------------------------------------------------------------------------- readers verify


def test_readers_refuse_a_replaced_or_reshaped_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, 0)
    write_run(b, 1)
    (a / "steps.parquet").write_bytes((b / "steps.parquet").read_bytes())
    with pytest.raises(PPMechError, match="not the file its summary.json describes"):
        load_run(a)
    # A file whose summary was rewritten to match still has to have the run's schema.
    table = _tables(0, 0)[1].drop_columns(["H"])
    artifacts.write_parquet(b / "steps.parquet", table)
    summary = json.loads((b / "summary.json").read_text())
    summary["files"]["steps.parquet"] = artifacts.describe_file(b, "steps.parquet", rows=table.num_rows)
    (b / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(PPMechError, match=r"steps.parquet of .* lacks the column\(s\) H"):
        load_run(b)


# --------------------------------------------------------------------------- one writer


HOLD = textwrap.dedent(
    """
    import sys, time
    from ppmech.artifacts import Output
    output = Output(sys.argv[1], "steer")
    output.open()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(PPMechError) as exc:
            write_steer(out, 1)
        assert f"being written by another ppmech process (pid {holder.pid} on " in exc.value.problem
        with pytest.raises(PPMechError, match=f"pid {holder.pid}"):
            write_steer(out, 1, overwrite=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The kernel released the dead holder's lock: the lock file it left behind does not block.
    assert (tmp_path / ".out.ppmech-lock").exists()
    write_steer(out, 1)
    assert json.loads((out / "summary.json").read_text()) == {"variant": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_lock_is_released_on_any_failure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(PPMechError), RunWriter(out, {"variant": 0}) as writer:
        raise PPMechError("inside", "fix")
    assert writer.output.committed is False
    with OutputLock(out.absolute()):
        pass


# --------------------------------------------------------------------------- the property


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from test_artifacts import write_run
    import ppmech.artifacts as artifacts
    real = artifacts.atomic_path
    from contextlib import contextmanager

    @contextmanager
    def slow(path):
        time.sleep(0.02)
        with real(path) as tmp:
            yield tmp

    artifacts.atomic_path = slow
    artifacts.files.atomic_path = slow
    mode = sys.argv[4]
    write_run(__import__("pathlib").Path(sys.argv[1]), int(sys.argv[2]),
              overwrite=mode == "overwrite", resume=mode == "resume")
    """
)

OPS = st.lists(
    st.tuples(
        st.sampled_from(["measure", "measure", "measure", "steer", "user-file-inside"]),
        st.sampled_from(["plain", "overwrite", "resume", "both"]),
        st.integers(0, 1),  # settings (variant)
        st.one_of(st.none(), st.integers(1, 30)),  # crash at this file event
    ),
    min_size=1,
    max_size=7,
)


@settings(
    max_examples=int(os.environ.get("PPMECH_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(start=st.sampled_from(["absent", "empty", "user-dir", "user-file"]), ops=OPS)
def test_random_overwrite_resume_crash_sequences_never_lose_or_mix_data(
    tmp_path_factory: pytest.TempPathFactory, start: str, ops: list[tuple[str, str, int, int | None]]
) -> None:
    root = tmp_path_factory.mktemp("prop")
    out = root / "run"
    users: dict[Path, bytes] = {root / "notes.txt": b"not ppmech's"}
    if start == "empty":
        out.mkdir()
    elif start == "user-dir":
        out.mkdir()
        users[out / "thesis.txt"] = b"chapter 1"
    elif start == "user-file":
        users[out] = b"a file named like the run"
    for path, content in users.items():
        path.write_bytes(content)
    monkeypatch = pytest.MonkeyPatch()
    try:
        for kind, mode, variant, crash in ops:
            if kind == "user-file-inside":
                if out.is_dir():
                    users[out / "added-by-user.txt"] = b"mine"
                    (out / "added-by-user.txt").write_bytes(b"mine")
                continue
            succeeded = False
            with crash_after(monkeypatch, crash):
                try:
                    overwrite = mode in ("overwrite", "both")
                    if kind == "measure":
                        write_run(out, variant, overwrite=overwrite, resume=mode in ("resume", "both"))
                    else:
                        write_steer(out, variant, overwrite=overwrite)
                    succeeded = True
                except (Killed, PPMechError):
                    pass
            # Never a file ppmech did not write deleted or changed.
            for path, content in users.items():
                assert path.read_bytes() == content, path
            # Complete means whole and from one writer's settings; otherwise not complete.
            got = check_reads_whole(out)
            if succeeded:
                assert got == (variant if kind == "measure" else None)
            # No lock is left held.
            with OutputLock(out.absolute()):
                pass
    finally:
        monkeypatch.undo()


def test_a_writer_killed_at_random_moments_leaves_a_whole_or_resumable_run(tmp_path: Path) -> None:
    """The same property with real SIGKILLs: no Python code runs at the kill, no cleanup happens."""
    out = tmp_path / "run"
    write_run(out, 0)
    env = {**os.environ, "PYTHONPATH": SRC}
    here = str(Path(__file__).parent)
    for attempt, delay in enumerate((0.05, 0.15, 0.3, 0.5)):
        mode = "overwrite" if attempt % 2 == 0 else "resume"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), "1", here, mode], env=env, stderr=subprocess.PIPE
        )
        # Kill it once it is inside the write (its lock file exists), a little later each time.
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / ".run.ppmech-lock").exists():
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert check_reads_whole(out) in (0, 1, None)
    # Whatever state the kills left, one more writer finishes the job.
    try:
        write_run(out, 1, resume=True)
    except PPMechError as exc:
        assert "already holds a complete run" in exc.problem
        write_run(out, 1, overwrite=True)
    assert check_reads_whole(out) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --------------------------------------------------------------------------- the output rule (issue 18)


@pytest.mark.parametrize(
    ("kind", "data", "start"),
    [
        (
            "html",
            "<!doctype html><html><head><title>t</title></head><body>x</body></html>",
            "<!doctype html>",
        ),
        ("html", "<p>no head</p>", '<meta name="generator" content="ppmech '),
        ("markdown", "| a |\n|---|\n", "<!-- generator: ppmech "),
        ("json", '{"a": 1}', '{\n  "generator": "ppmech '),
    ],
)
def test_each_format_carries_a_mark_that_is_recognised(
    tmp_path: Path, kind: str, data: str, start: str
) -> None:
    path = tmp_path / f"out.{kind}"
    artifacts.write_output_file(path, data, kind=kind, replace=False)
    text = path.read_text()
    assert text.startswith(start) and artifacts.has_mark(path)
    assert text.count("ppmech " + files.ppmech_version()) == 1
    if kind == "html":
        assert '<meta name="generator"' in text.split("<body>")[0]
    if kind == "json":
        assert json.loads(text) == {"generator": artifacts.generator(), "a": 1}
    # Written again (with the flag): still one mark, the content replaced.
    artifacts.write_output_file(path, data, kind=kind, replace=True)
    assert path.read_text() == text


def test_a_png_mark_keeps_the_image_readable(tmp_path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (255, 0, 0)).save(buffer, format="PNG")
    artifacts.write_output_file(tmp_path / "f.png", buffer.getvalue(), kind="png", replace=False)
    image = Image.open(tmp_path / "f.png")
    image.load()
    assert image.size == (3, 2) and image.info["Software"] == artifacts.generator()
    assert artifacts.has_mark(tmp_path / "f.png")


def test_files_that_only_mention_ppmech_are_not_ppmechs(tmp_path: Path) -> None:
    for name, text in [
        ("a.md", "notes about <!-- generator: ppmech 0.1 --> on line 2\n<!-- generator: ppmech 0.1 -->"),
        ("b.json", '{"a": 1, "generator": "ppmech 0.1"}'),
        ("c.html", "<html><head></head><body>ppmech wrote this? no</body></html>"),
        ("d.png", "\x89PNG but not tEXt"),
    ]:
        (tmp_path / name).write_text(text)
        assert not artifacts.has_mark(tmp_path / name), name


def _refusal(path: Any, kind: str = "markdown", replace: bool = True, **flags: str) -> str:
    with pytest.raises(PPMechError) as info:
        artifacts.check_output_file(path, kind=kind, replace=replace, **flags)
    return info.value.one_line()


def test_check_output_file_refuses_before_anything_is_written(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a user's file")
    (tmp_path / "link.md").symlink_to(blocker)
    os.mkfifo(tmp_path / "fifo.md")
    assert "--out is empty" in _refusal("")
    assert "/proc/x.md is on the special file system /proc" in _refusal("/proc/x.md")
    assert "/dev/null is on the special file system /dev" in _refusal("/dev/null")
    assert f"{tmp_path} is a directory" in _refusal(tmp_path)
    assert f"{blocker} is a file, not a directory" in _refusal(blocker / "x" / "t.md")
    assert "symbolic link" in _refusal(tmp_path / "link.md")
    assert "not a regular file" in _refusal(tmp_path / "fifo.md")
    message = _refusal(blocker, flag="--markdown", replace_flag="--overwrite")
    assert f"{blocker} exists and was not written by ppmech" in message and "--markdown" in message
    assert blocker.read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "fifo.md", "link.md"]


def test_a_ppmech_file_is_replaced_only_with_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.md"
    artifacts.write_output_file(path, "one\n", kind="markdown", replace=False)
    message = _refusal(path, replace=False, replace_flag="--overwrite")
    assert "already exists" in message and "--overwrite" in message
    artifacts.write_output_file(path, "two\n", kind="markdown", replace=True)
    assert path.read_text().endswith("\ntwo\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.md"]  # no lock, no temporary left


def test_check_output_dir_follows_the_same_rule(tmp_path: Path) -> None:
    def refused(path: Path, kind: str, replace: bool = True) -> str:
        with pytest.raises(PPMechError) as info:
            artifacts.check_output_dir(
                path, kind=kind, replace=replace, flag="--out", replace_flag="--overwrite"
            )
        return info.value.one_line()

    write_run(tmp_path / "run", 0)
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert "is a file, not a directory" in refused(tmp_path / "file", "steer")
    assert "holds a ppmech measure output, not a steer output" in refused(tmp_path / "run", "steer")
    assert "--overwrite" in refused(tmp_path / "run", "measure", replace=False)
    assert "not a ppmech verify directory" in refused(tmp_path / "mine", "verify")
    assert "measure output, not a verify directory" in refused(tmp_path / "run", "verify")
    assert "/sys/x is on the special file system /sys" in refused(Path("/sys/x"), "measure")
    artifacts.check_output_dir(tmp_path / "run", kind="measure", replace=True)
    artifacts.check_output_dir(tmp_path / "new", kind="verify", replace=False)
    assert not (tmp_path / "new").exists()  # a check writes nothing
    artifacts.open_output_dir(tmp_path / "new", kind="verify")
    assert artifacts.read_marker(tmp_path / "new") == {
        **artifacts.read_marker(tmp_path / "new"),
        "kind": "verify",
    }
    artifacts.open_output_dir(tmp_path / "new", kind="verify")  # reused, not replaced


def test_an_output_on_a_special_file_system_is_refused_naming_it() -> None:
    with pytest.raises(PPMechError, match="/proc/ppmech-run is on the special file system /proc"):
        Output("/proc/ppmech-run", "steer").preflight()
