"""Running a study on Ray: one task per run, files written by the driver.

Flow (data goes one way: study -> Ray tasks -> run directories -> study outputs):

1. **Check, writing nothing.** The study was validated when it was parsed (each
   run's :class:`~ppmech.measure.MeasureConfig` built, so ``measure``'s own checks
   applied). Each run is looked up under ``OUT/runs/<name>`` (:mod:`ppmech.sweep.reuse`):
   complete runs are reused, runs whose analysis settings changed are re-analysed from
   their stored steps, stale runs need ``replace``, and a directory holding a user's
   file is never touched. If any run must be recorded, Ray is started or joined
   (:mod:`ppmech.sweep.cluster`: a join timeout, resources no node has refused).
   Only then is the study directory locked and written.
2. **Run.** Every run to record is a Ray task (:func:`record_run`) that calls the
   public :func:`~ppmech.measure.measure` into a scratch directory on its own
   node, and returns the run's files as bytes. Nothing assumes a shared file
   system. A task lost to a dead worker or node is retried by Ray
   (``max_retries``); the retry resumes the scratch run from its last whole
   batch when it lands on the same node. A run that fails for its own reasons
   (an unknown model, say) comes back as ``failed`` with its one-line error and
   the others go on.
3. **Write.** The driver writes each returned run through
   :class:`ppmech.artifacts.Output` (staged in ``OUT/runs/.<name>.ppmech-staging``,
   renamed into place when whole), so a run directory exists whole or not at all,
   even after Ctrl-C or a crash, and a replaced run's directory is deleted only when
   it holds nothing but ppmech's files. ``study.parquet`` is rewritten after every
   run; the tables at the end (:mod:`ppmech.sweep.outputs`).

One sweep writes into a study directory at a time (an exclusive lock on
``OUT/.study.ppmech-lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ppmech.artifacts import MARKER, Output, OutputLock, check_location, write_bytes, write_text
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig, measure
from ppmech.runs import load_run, write_json
from ppmech.sweep import cluster, outputs
from ppmech.sweep.cluster import JOIN_TIMEOUT, Session, ray_version, strip_ansi
from ppmech.sweep.names import run_path
from ppmech.sweep.outputs import RunOutcome
from ppmech.sweep.reuse import Existing, existing_run, plan, reanalyse, refuse
from ppmech.sweep.study import PlannedRun, Resources, Study

__all__ = ["RunOutcome", "SweepOptions", "SweepResult", "plan", "ray_version", "record_run", "sweep"]

#: The study directory is locked as this (hidden) name inside it: ``out/.study.ppmech-lock``.
LOCK_TARGET = "study"
LOCK_NAME = f".{LOCK_TARGET}.ppmech-lock"
#: Staging directories of sweeps before runs were written through artifacts.Output.
LEGACY_STAGING = ".staging-"


@dataclass(frozen=True)
class SweepOptions:
    """How to run a study.

    Attributes:
        address: ``None`` starts a local Ray instance sized to the machine;
            ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins an existing cluster.
        num_cpus, num_gpus: size of the local instance (default: the machine's).
        work_dir: scratch directory on each worker node (default: the system temp dir).
        replace: re-record runs whose directory holds other settings or an older model.
        progress: show runs done/running/failed and the current run's progress
            (on a terminal; elsewhere nothing until the final summary).
        join_timeout: seconds a join of ``address`` may take before it is given up.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    work_dir: str | None = None
    replace: bool = False
    progress: bool = True
    join_timeout: float = JOIN_TIMEOUT


@dataclass
class SweepResult:
    """What :func:`sweep` returns (also written under ``out``)."""

    out: Path
    study: Study
    outcomes: list[RunOutcome]
    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    wall_seconds: float

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# --------------------------------------------------------------------------- the Ray task


def one_line(exc: BaseException) -> str:
    """An exception as one line without colour codes; a Ray task error as its cause."""
    cause = getattr(exc, "cause", None)  # RayTaskError(OSError) -> the OSError
    if isinstance(cause, BaseException) and cause is not exc:
        return one_line(cause)
    if isinstance(exc, PPMechError):
        return strip_ansi(exc.one_line())
    lines = [line.strip() for line in strip_ansi(str(exc)).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    return text[:400]


def _measure_resumably(config: MeasureConfig, run_dir: Path) -> None:
    """Make ``run_dir`` a complete run of ``config``: reuse it, resume it, or record it afresh."""
    with contextlib.suppress(PPMechError):
        if load_run(run_dir).config == config.to_dict():
            return  # an earlier attempt finished, then its worker died before returning
    if run_dir.exists():
        try:
            measure(config, run_dir, resume=True, progress=True)
            return
        except PPMechError:
            shutil.rmtree(run_dir)  # not resumable (other settings, or it failed): start again
    measure(config, run_dir, progress=True)


class _LatestLine:
    """A text stream that keeps only the latest progress line in a file (the driver reads it).

    It passes for a terminal, so that ``measure`` draws its status line and token bar
    (:mod:`ppmech.progress`) into it; a worker's stderr is otherwise not a terminal.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = 0.0

    def write(self, text: str) -> int:
        parts = [p.strip() for p in re.split(r"[\r\n]", text) if p.strip()]
        now = time.monotonic()
        if parts and now - self.last > 0.25:
            self.last = now
            with contextlib.suppress(OSError, PPMechError):
                write_text(self.path, parts[-1])  # scratch on the worker: the driver's bar reads it
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True  # so that measure draws its bar (ppmech.progress draws only on a terminal)


def _read_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.endswith(".ppmech-tmp")
    }


def record_run(name: str, config: dict[str, Any], work_dir: str, threads: int) -> dict[str, Any]:
    """The Ray task: record one run in node-local scratch and return its files.

    Args:
        name: the run's name (for messages and the scratch directory).
        config: ``MeasureConfig.to_dict()``.
        work_dir: this run's scratch directory on the worker's node; the same on
            every attempt, so a retry on the same node resumes the recording.
        threads: torch threads (the CPUs the run reserved).

    Returns:
        ``status`` (``complete`` or ``failed``), ``error`` (one line), ``files``
        (relative path -> bytes), ``node_id``, ``pids``, ``wall_seconds``.
    """
    import ray
    import torch

    started = time.perf_counter()
    work = Path(work_dir)
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    out: dict[str, Any] = {"node_id": node_id, "pids": [os.getpid()], "files": None, "error": None}
    try:
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PPMechError(
                f"cannot create the run's scratch directory {work} ({exc.strerror or exc})",
                "pass a writable --work-dir (it must exist on every node)",
            ) from exc
        log = work / "worker.json"
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no usable note: first attempt
            pids = [int(p) for p in json.loads(log.read_text())["pids"]]
        pids.append(os.getpid())
        out["pids"] = pids
        write_json(log, {"run": name, "node_id": node_id, "pids": pids})
        torch.set_num_threads(threads)
        run_dir = work / "run"
        # measure's progress bar writes its latest line to a scratch file the driver shows.
        with contextlib.redirect_stderr(_LatestLine(work / "progress.txt")):
            _measure_resumably(MeasureConfig(**config), run_dir)
        out["files"] = _read_files(run_dir)
        out["status"] = "complete"
    except Exception as exc:  # the run's own failure: report it, let the other runs go on
        out["status"] = "failed"
        out["error"] = one_line(exc)
    shutil.rmtree(work, ignore_errors=True)
    out["wall_seconds"] = round(time.perf_counter() - started, 3)
    return out


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Hold the study directory's lock (``out/.study.ppmech-lock``) for the duration of a sweep.

    The same cross-process lock as every other ppmech output (:class:`ppmech.artifacts.OutputLock`):
    a second sweep into ``out`` is refused in one line that names the process holding it.
    """
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out / LOCK_TARGET):
        yield


def install_run(runs_root: Path, name: str, files: dict[str, bytes], replace: bool = False) -> dict[str, Any]:
    """Write a run's files to ``runs_root/<name>`` through :class:`ppmech.artifacts.Output`.

    Staged and renamed into place when whole; with ``replace``, the old run is deleted only
    when it holds nothing but ppmech's files (otherwise this refuses, and nothing changes).
    Returns the run's summary.
    """
    target = run_path(runs_root, name)
    ordered = sorted(files, key=lambda rel: (rel == "summary.json", rel))  # summary.json last
    with Output(target, "measure", overwrite=replace) as output:
        root = output.path.resolve()
        for rel in ordered:
            path = (root / rel).resolve()
            if root not in path.parents:
                raise PPMechError(
                    f"run {name} returned a file outside its directory ({rel})", "report this bug"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, files[rel])  # fsynced; a full disk is one line naming the path
        output.commit()
    return load_run(target).summary


def _clean_staging(runs_root: Path) -> None:
    """Remove what an interrupted sweep left half-written (we hold the study lock)."""
    if not runs_root.is_dir():
        return
    for path in runs_root.glob(f"{LEGACY_STAGING}*"):
        if path.name.endswith(".old") and not (runs_root / path.name[len(LEGACY_STAGING) : -4]).exists():
            # Interrupted between moving a replaced run aside and moving its successor in.
            path.rename(runs_root / path.name[len(LEGACY_STAGING) : -4])
            continue
        shutil.rmtree(path, ignore_errors=True)
    for path in runs_root.glob(".*.ppmech-staging"):
        # Opening the run's Output finishes an interrupted swap and discards an unfinished copy,
        # by artifacts' rule (only when it holds nothing but ppmech's files); closing it as
        # failed discards the empty copy that opening made.
        output = Output(runs_root / path.name[1 : -len(".ppmech-staging")], "measure", overwrite=True)
        with contextlib.suppress(PPMechError, OSError):
            output.open()
            output.close(failed=True)


def _work_dir(options: SweepOptions, out: Path, run: PlannedRun) -> str:
    key = json.dumps(
        [socket.gethostname(), str(out.resolve()), run.name, run.config.to_dict()], sort_keys=True
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    root = Path(options.work_dir) if options.work_dir else Path(tempfile.gettempdir())
    return str(root / "ppmech-sweep" / f"{run.name[:80]}-{digest}")


#: What a study directory may hold before its first study.json (an interrupted first sweep).
OWN_ENTRIES = {LOCK_NAME, "runs", "study.json", "study.parquet", "tables.md"}


def _check_out(out: Path) -> None:
    """Refuse to write a study where it may not go, or into a directory that holds something else."""
    if not str(out).strip():
        raise PPMechError("--out is empty", "give --out a study directory")
    check_location(Path(os.path.abspath(out)), out, "--out")
    if out.exists() and not out.is_dir():
        raise PPMechError(
            f"--out {out} is a file, not a directory", "pass a directory (it is created if missing)"
        )
    if not out.is_dir() or (out / "study.json").is_file():
        return
    other = sorted(
        p.name for p in out.iterdir() if p.name not in OWN_ENTRIES and not p.name.startswith(".tables")
    )
    if other:
        raise PPMechError(
            f"--out {out} is not empty and holds no ppmech study (it has {other[0]}"
            + (f" and {len(other) - 1} more" if len(other) > 1 else "")
            + ")",
            "pass a new or empty directory, or the --out of an earlier sweep",
        )


def _check_work_dir(options: SweepOptions) -> None:
    """A local sweep's --work-dir must be creatable here (a cluster's is checked on its nodes)."""
    if options.work_dir is None or options.address:
        return
    check_location(
        Path(os.path.abspath(options.work_dir)) / "ppmech-sweep", Path(options.work_dir), "--work-dir"
    )


# --------------------------------------------------------------------------- the sweep


def sweep(study: Study, out: str | Path, options: SweepOptions | None = None) -> SweepResult:
    """Run every run of ``study`` that ``out`` does not already hold, and write the study outputs.

    Writes ``out/study.json``, ``out/study.parquet``, ``out/tables.md`` and
    ``out/runs/<run>/``, and nothing at all before every check has passed and Ray has
    been started or joined. A ``KeyboardInterrupt`` cancels the runs in flight,
    writes the outputs of what finished, and is re-raised.

    Raises:
        PPMechError: stale runs without ``replace``, a run directory holding a user's
            file, a cluster that cannot be joined or cannot hold a run, another sweep
            writing ``out``.
    """
    options = options or SweepOptions()
    _check_out(Path(out))
    out = Path(out)
    _check_work_dir(options)
    started = time.perf_counter()
    runs_root = out / "runs"
    states = plan(study, out)
    refuse(states, runs_root, options.replace)
    session: Session | None = None
    if any(s.state in ("missing", "stale") for s in states.values()):
        session = _connect(study.resources, options)
    try:
        with study_lock(out):
            runs_root.mkdir(exist_ok=True)
            _clean_staging(runs_root)
            states = plan(study, out)  # again, under the lock
            refuse(states, runs_root, options.replace)
            todo = [r for r in study.runs if states[r.name].state in ("missing", "stale")]
            if todo and session is None:
                session = _connect(study.resources, options)
            outputs.write_study_json(out, study)
            outcomes = _reused(study, out, states)
            interrupted = False
            try:
                if todo:
                    _run_on_ray(study, todo, out, options, outcomes, states)
            except KeyboardInterrupt:
                interrupted = True
                _after_interrupt(runs_root, outcomes)
            finally:
                _clean_staging(runs_root)
            ordered = [outcomes[r.name] for r in study.runs]
            frame, tables = outputs.write_outputs(out, study, ordered, final=True)
            if interrupted:
                raise KeyboardInterrupt
            return SweepResult(out, study, ordered, frame, tables, time.perf_counter() - started)
    finally:
        if session is not None:
            session.close()


def _connect(resources: Resources, options: SweepOptions) -> Session:
    return cluster.connect(
        resources,
        address=options.address,
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        join_timeout=options.join_timeout,
    )


def _reused(study: Study, out: Path, states: dict[str, Existing]) -> dict[str, RunOutcome]:
    """Outcomes of the runs the study directory already holds (re-analysed where their analysis changed)."""
    previous = outputs.read_previous(out)
    outcomes: dict[str, RunOutcome] = {}
    for run in study.runs:
        o = RunOutcome(run.name, run.config)
        existing = states[run.name]
        if existing.state in ("complete", "reanalyse") and existing.run is not None:
            o.status, o.reused, o.summary = "complete", True, existing.run.summary
            outputs.carry_forward(o, previous.get(run.name))
            if existing.state == "reanalyse":
                o.summary = reanalyse(run_path(out / "runs", run.name), run.config).summary
                o.reanalysed = True
        outcomes[run.name] = o
    return outcomes


def _after_interrupt(runs_root: Path, outcomes: dict[str, RunOutcome]) -> None:
    for o in outcomes.values():
        if o.status == "pending":
            # Ctrl-C may land between a run's rename into place and its bookkeeping.
            existing = existing_run(runs_root / o.name, o.config)
            if existing.state == "complete" and existing.run is not None:
                o.status, o.summary = "complete", existing.run.summary
            else:
                o.status = "interrupted"


def _run_on_ray(
    study: Study,
    todo: list[PlannedRun],
    out: Path,
    options: SweepOptions,
    outcomes: dict[str, RunOutcome],
    states: dict[str, Existing],
) -> None:
    import ray

    from ppmech.sweep.progress import SweepProgress

    pending: dict[Any, PlannedRun] = {}
    work_dirs = {r.name: _work_dir(options, out, r) for r in todo}
    progress = SweepProgress(
        study.name,
        total=len(study.runs),
        done=len(study.runs) - len(todo),
        enabled=options.progress,
        local=options.address is None,
    )
    try:
        task = ray.remote(record_run)
        for run in todo:
            ref = task.options(**_task_options(study.resources, run.name)).remote(
                run.name, run.config.to_dict(), work_dirs[run.name], study.resources.threads()
            )
            pending[ref] = run
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            progress.poll({r.name: work_dirs[r.name] for r in pending.values()})
            for ref in ready:
                run = pending.pop(ref)
                o = outcomes[run.name]
                try:
                    payload = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up: a dead worker or node
                    o.status, o.error = "failed", one_line(exc)
                else:
                    o.node_id, o.pids, o.wall_seconds = (
                        payload["node_id"],
                        payload["pids"],
                        payload["wall_seconds"],
                    )
                    if payload["status"] == "complete":
                        replace = states[run.name].state == "stale"
                        o.summary = install_run(out / "runs", run.name, payload["files"], replace=replace)
                        o.status = "complete"
                    else:
                        o.status, o.error = "failed", payload["error"]
                outputs.write_outputs(out, study, [outcomes[r.name] for r in study.runs], final=False)
                progress.finished(run.name, o.status)
    finally:
        progress.close()
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


def _task_options(resources: Resources, name: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "max_retries": resources.max_retries,
        "retry_exceptions": False,
        "name": f"ppmech-sweep:{name}",
    }
    if resources.memory_gb:
        opts["memory"] = int(resources.memory_gb * 2**30)
    return opts
