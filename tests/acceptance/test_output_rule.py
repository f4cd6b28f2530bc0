"""The one output rule (issue 18, item 1), as a user meets it on every command that writes.

A new path is created; an existing file or directory is replaced only when ppmech wrote it
and the command's replace flag is given; outputs are checked before any work; every error
names the user's path. The defect tests each failed on the code before the rule; the
property test at the end runs the commands against random existing paths.

Everything runs in-process (``ppmech.cli.main``) on one tiny random-config model and one
5-prompt × 3-token run made once per module.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppmech.artifacts import MARKER, files, has_mark
from ppmech.cli import main


def _cli(args: list[str]) -> tuple[int, str]:
    """Run the CLI in-process; ``(exit status, stderr)``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def _refused(code: int, err: str, *names: object) -> None:
    """One line, exit 2, naming each of ``names`` and never a temporary file."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "ppmech-tmp" not in err and ".tmp" not in err, err
    for name in names:
        assert str(name) in err, err


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Callable[[str], str]) -> str:
    return tiny_model_dir("llama")


def _measure_args(model: str, out: Path) -> list[str]:
    small = ["--prompts", "5", "--context-tokens", "8", "--new-tokens", "3", "--n-boot", "40"]
    return ["measure", "--model", model, *small, "--out", str(out), "--no-progress"]


def _steer_args(model: str, out: Path) -> list[str]:
    target = ["--prompt", "The capital", "--target-ids", "5,7", "--new-tokens", "3", "--max-steps", "2"]
    return ["steer", "--model", model, *target, "--out", str(out)]


def _calibrate_args(model: str, out: Path) -> list[str]:
    small = ["--sequences", "8", "--tokens", "8", "--no-progress"]
    return ["monitor", "calibrate", "--model", model, *small, "--out", str(out)]


@pytest.fixture(scope="module")
def outputs(tiny: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real outputs made once: a measure run, a steer output, a report, a compare table."""
    root = tmp_path_factory.mktemp("made")
    made = {"run": root / "run", "steer": root / "steer", "html": root / "r.html", "md": root / "t.md"}
    made["cal"] = root / "cal.json"
    assert _cli(_calibrate_args(tiny, made["cal"]))[0] == 0
    assert _cli(_measure_args(tiny, made["run"]))[0] == 0
    assert _cli(_steer_args(tiny, made["steer"]))[0] == 0
    assert _cli(["report", str(made["run"]), "--out", str(made["html"])])[0] == 0
    assert _cli(["compare", str(made["run"]), "--markdown", str(made["md"])])[0] == 0
    return made


# --------------------------------------------------------------------------- the defects of issue 18


def test_report_never_replaces_a_users_html(outputs: dict[str, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    for extra in ([], ["--overwrite"]):
        code, err = _cli(["report", str(outputs["run"]), "--out", str(notes), *extra])
        _refused(code, err, notes, "not written by ppmech")
    assert notes.read_text() == "<html>my notes</html>"


def test_report_replaces_its_own_page_only_with_overwrite(outputs: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    shutil.copy(outputs["html"], page)
    assert has_mark(page) and '<meta name="generator" content="ppmech' in page.read_text()
    code, err = _cli(["report", str(outputs["run"]), "--out", str(page)])
    _refused(code, err, page, "--overwrite")
    before = page.stat().st_mtime_ns
    assert _cli(["report", str(outputs["run"]), "--out", str(page), "--overwrite"])[0] == 0
    assert page.stat().st_mtime_ns != before and has_mark(page)


def test_report_out_on_proc_names_the_path_before_reading_anything(tmp_path: Path) -> None:
    # The input does not exist: the output is refused first, so it is the output that is named.
    code, err = _cli(["report", str(tmp_path / "missing-run"), "--out", "/proc/x.html"])
    _refused(code, err, "/proc/x.html")


def test_compare_never_overwrites_a_users_markdown(outputs: dict[str, Path], tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    table.write_text("| mine |\n")
    for extra in ([], ["--overwrite"]):
        code, err = _cli(["compare", str(outputs["run"]), "--markdown", str(table), *extra])
        _refused(code, err, table, "--markdown")
    assert table.read_text() == "| mine |\n"
    own = tmp_path / "own.md"
    shutil.copy(outputs["md"], own)
    _refused(*_cli(["compare", str(outputs["run"]), "--markdown", str(own)]), own, "--overwrite")
    assert _cli(["compare", str(outputs["run"]), "--markdown", str(own), "--overwrite"])[0] == 0
    assert own.read_text().startswith("<!-- generator: ppmech")


def test_compare_markdown_on_a_directory_names_the_directory(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    code, err = _cli(["compare", str(outputs["run"]), "--markdown", str(tmp_path)])
    _refused(code, err, tmp_path, "is a directory")


def test_a_full_disk_names_the_users_path(
    outputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    monkeypatch.chdir(tmp_path)
    code, err = _cli(["compare", str(outputs["run"]), "--markdown", "table.md"])
    _refused(code, err, "no space left on device while writing table.md")
    assert sorted(os.listdir(tmp_path)) == []  # neither the table nor a temporary file


def test_a_full_disk_in_steer_and_report_names_the_path(
    outputs: dict[str, Path], tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    code, err = _cli(_steer_args(tiny, tmp_path / "steer"))
    _refused(code, err, f"no space left on device while writing {tmp_path / 'steer'}")
    assert "ppmech-staging" not in err  # the internal name of a replacement is never shown
    code, err = _cli(["report", str(outputs["run"]), "--out", str(tmp_path / "r.html")])
    _refused(code, err, f"no space left on device while writing {tmp_path / 'r.html'}")
    assert sorted(os.listdir(tmp_path)) == []  # the failed steer output is discarded whole


def test_another_write_failure_names_the_users_path(
    outputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(source: Any, target: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(source))

    monkeypatch.setattr(files.os, "replace", denied)
    code, err = _cli(["report", str(outputs["run"]), "--out", str(tmp_path / "r.html")])
    _refused(code, err, tmp_path / "r.html", "Permission denied")
    assert sorted(os.listdir(tmp_path)) == []


def _user_dir(tmp_path: Path) -> Path:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "claims.md").write_text("my own claims")
    return mine


def test_verify_never_writes_into_a_users_directory_or_a_measure_run(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    mine = _user_dir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(outputs["run"], run)
    listing = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    for out, why in ((mine, "not a ppmech verify directory"), (run, "measure output")):
        code, err = _cli(
            ["verify", "--quick", "--models", "smollm2-135m", "--out", str(out), "--no-progress"]
        )
        _refused(code, err, out, why, "--out")
    assert sorted(p.name for p in mine.iterdir()) == ["claims.md"]
    assert (mine / "claims.md").read_text() == "my own claims"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == listing


def test_verify_refuses_a_users_claims_md_in_its_own_directory(tmp_path: Path) -> None:
    from ppmech.artifacts import open_output_dir

    out = tmp_path / "verify"
    open_output_dir(out, kind="verify")  # as an earlier verify left it
    (out / "claims.md").write_text("my notes on the claims")
    code, err = _cli(["verify", "--quick", "--models", "smollm2-135m", "--out", str(out), "--no-progress"])
    _refused(code, err, out, "claims.md")
    assert (out / "claims.md").read_text() == "my notes on the claims"


@contextlib.contextmanager
def _tripwire(monkeypatch: pytest.MonkeyPatch, target: str) -> Iterator[None]:
    """Fail the test if ``target`` (the command's work) is reached."""

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{target} ran before the output was checked")

    with monkeypatch.context() as m:
        m.setattr(target, reached)
        yield


def test_monitor_benchmark_checks_its_outputs_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": true}')
    with _tripwire(monkeypatch, "ppmech.monitor.benchmark.run_benchmark"):
        _refused(*_cli(["monitor", "benchmark", "--markdown", "/proc/nope.md"]), "/proc/nope.md")
        for extra in ([], ["--overwrite"]):
            _refused(*_cli(["monitor", "benchmark", "--json", str(mine), *extra]), mine, "--json")
    assert mine.read_text() == '{"mine": true}'


def test_monitor_calibrate_never_replaces_a_users_file(tmp_path: Path) -> None:
    mine = tmp_path / "cal.json"
    mine.write_text('{"kind": "not mine to lose"}')
    for extra in ([], ["--overwrite"]):
        code, err = _cli(["monitor", "calibrate", "--model", "no-such-model", "--out", str(mine), *extra])
        _refused(code, err, mine, "not written by ppmech")  # before the (unknown) model is looked up
    assert mine.read_text() == '{"kind": "not mine to lose"}'


def test_steer_and_evaluate_steering_check_their_outputs_before_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = _cli(_steer_args("no-such-model", Path("/proc/steer")))
    _refused(code, err, "/proc/steer")
    mine = tmp_path / "t.md"
    mine.write_text("my table")
    with _tripwire(monkeypatch, "ppmech.steering.evaluation.evaluate_steering"):
        code, err = _cli(["evaluate-steering", "--out", str(tmp_path / "ev"), "--markdown", str(mine)])
        _refused(code, err, mine, "--markdown")
        mine_dir = _user_dir(tmp_path)
        code, err = _cli(["evaluate-steering", "--out", str(mine_dir), "--overwrite"])
        _refused(code, err, mine_dir)
    assert mine.read_text() == "my table"
    assert sorted(os.listdir(tmp_path)) == ["mine", "t.md"]


def test_analyze_never_replaces_a_users_json(outputs: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "a.json"
    mine.write_text("[1, 2]")
    for extra in ([], ["--overwrite"]):
        args = ["analyze", str(outputs["run"]), "--no-nulls", "--n-boot", "40", "--json", str(mine), *extra]
        _refused(*_cli(args), mine, "--json")
    assert mine.read_text() == "[1, 2]"


# --------------------------------------------------------------------------- the property

# Each command that writes: (the flags that name its output, kind of output, replace flag).
COMMANDS = ("compare", "report", "analyze", "calibrate", "measure", "steer")
SITUATIONS = (
    "absent",
    "user-file",
    "user-empty-dir",
    "user-dir-with-file",
    "same-command",
    "other-command",
    "absent-parent",
)


def _command(name: str, tiny: str, run: Path, out: Path, overwrite: bool) -> list[str]:
    flag = ["--overwrite"] if overwrite else []
    if name == "compare":
        return ["compare", str(run), "--markdown", str(out), *flag]
    if name == "report":
        return ["report", str(run), "--out", str(out), *flag]
    if name == "analyze":
        return ["analyze", str(run), "--no-nulls", "--n-boot", "40", "--json", str(out), *flag]
    if name == "calibrate":
        return [*_calibrate_args(tiny, out), *flag]
    if name == "measure":
        return [*_measure_args(tiny, out), *flag]
    return [*_steer_args(tiny, out), *flag]


def _own_output(name: str, outputs: dict[str, Path], tiny: str, at: Path) -> None:
    """Put a real ppmech output of command ``name`` at ``at``."""
    if name in ("measure", "steer"):
        shutil.copytree(outputs["run" if name == "measure" else "steer"], at)
    elif name == "calibrate":
        shutil.copy(outputs["cal"], at)
    elif name == "analyze":
        assert _cli(_command("analyze", tiny, outputs["run"], at, False))[0] == 0
    else:
        shutil.copy(outputs["html" if name == "report" else "md"], at)


OTHER = {
    "compare": "report",
    "report": "compare",
    "analyze": "calibrate",
    "calibrate": "analyze",
    "measure": "steer",
    "steer": "measure",
}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes, or ``None`` for a directory (locks and temporaries too)."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


@settings(
    max_examples=int(os.environ.get("PPMECH_OUTPUT_RULE_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(COMMANDS),
    situation=st.sampled_from(SITUATIONS),
    overwrite=st.booleans(),
    content=st.binary(min_size=0, max_size=40),
)
def test_no_user_byte_is_lost_and_nothing_is_written_outside_the_output(
    outputs: dict[str, Path],
    tiny: str,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    situation: str,
    overwrite: bool,
    content: bytes,
) -> None:
    root = tmp_path_factory.mktemp("rule")
    (root / "beside.txt").write_bytes(content)  # a user's file next to the output
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "keep.bin").write_bytes(content[::-1])
    is_dir = name in ("measure", "steer")
    names = {"compare": "o.md", "report": "o.html", "analyze": "o.json", "calibrate": "o.json"}
    out = root / ("out" if is_dir else names[name])
    if situation == "absent-parent":
        out = root / "new" / "deeper" / out.name
    elif situation == "user-file":
        out.write_bytes(content)
    elif situation == "user-empty-dir":
        out.mkdir()
    elif situation == "user-dir-with-file":
        out.mkdir()
        (out / "summary.json").write_bytes(content)  # a ppmech-looking name does not make it ppmech's
    elif situation in ("same-command", "other-command"):
        _own_output(name if situation == "same-command" else OTHER[name], outputs, tiny, out)
    user = {
        k: v
        for k, v in _snapshot(root).items()
        if not (situation.endswith("command") and k.startswith(out.name))
    }

    code, err = _cli(_command(name, tiny, outputs["run"], out, overwrite))

    after = _snapshot(root)
    rel = out.relative_to(root).as_posix()
    # No user byte is deleted or changed (the output path itself only when it was ppmech's).
    for path, data in user.items():
        assert after.get(path, b"<gone>") == data, (path, code, err)
    # Nothing is written outside the requested output (its new parents excepted), no debris.
    for path in after:
        inside = path == rel or path.startswith(rel + "/") or rel.startswith(path + "/")
        assert path in user or inside, (path, code, err)
        assert not path.endswith((".ppmech-tmp", ".ppmech-lock")) and ".ppmech-staging" not in path, path
    # What is refused and what is written.
    users = situation in ("user-file", "user-dir-with-file") or (situation == "user-empty-dir" and not is_dir)
    # Another command's directory is never replaced; a ppmech file only with the flag.
    foreign_kind = situation == "other-command" and is_dir
    ppmech_without_flag = situation in ("same-command", "other-command") and not overwrite
    if users or foreign_kind or ppmech_without_flag:
        _refused(code, err, out)
    else:
        assert code == 0, err
        assert (out / MARKER).is_file() if is_dir else has_mark(out)


# The commands whose work takes minutes: only the refusals are run (the work is tripwired, so a
# path that should have been refused fails the test at once instead of running the benchmark).
SLOW = {
    "benchmark-markdown": (
        ["monitor", "benchmark", "--markdown"],
        "ppmech.monitor.benchmark.run_benchmark",
        False,
    ),
    "benchmark-json": (["monitor", "benchmark", "--json"], "ppmech.monitor.benchmark.run_benchmark", False),
    "evaluate-out": (["evaluate-steering", "--out"], "ppmech.steering.evaluation.evaluate_steering", True),
    "evaluate-markdown": (
        ["evaluate-steering", "--markdown"],
        "ppmech.steering.evaluation.evaluate_steering",
        False,
    ),
}


@settings(
    max_examples=int(os.environ.get("PPMECH_OUTPUT_RULE_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(sorted(SLOW)),
    situation=st.sampled_from(("user-file", "user-empty-dir", "user-dir-with-file", "other-command")),
    overwrite=st.booleans(),
    content=st.binary(min_size=0, max_size=40),
)
def test_slow_commands_refuse_before_their_work_and_keep_every_user_byte(
    outputs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    situation: str,
    overwrite: bool,
    content: bytes,
) -> None:
    argv, work, is_dir = SLOW[name]
    if is_dir and situation == "user-empty-dir":
        return  # an empty directory is a new output: the work would run
    root = tmp_path_factory.mktemp("slow")
    (root / "beside.txt").write_bytes(content)
    out = root / ("out" if is_dir else "o.md")
    if situation == "user-file":
        out.write_bytes(content)
    elif situation == "user-empty-dir":
        out.mkdir()
    elif situation == "user-dir-with-file":
        out.mkdir()
        (out / "summary.json").write_bytes(content)
    else:  # a ppmech output of another kind: a measure run where a directory goes, a page where a file goes
        if is_dir:
            shutil.copytree(outputs["run"], out)
        else:
            shutil.copy(outputs["html"], out)
            if overwrite:
                return  # a ppmech file is replaced with the flag: the work would run
    before = _snapshot(root)
    with _tripwire(monkeypatch, work):
        code, err = _cli([*argv, str(out), *(["--overwrite"] if overwrite else [])])
    _refused(code, err, out)
    assert _snapshot(root) == before
