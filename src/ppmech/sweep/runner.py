"""Running a study on Ray: one task per run, files written by the driver.

Flow (data goes one way: study -> Ray tasks -> run directories -> study outputs):

1. **Plan.** Each run of the grid is looked up under ``OUT/runs/<name>``. A run
   that reads back complete (:func:`~ppmech.runs.load_run`) with the same
   settings and the same model files is *reused*, without starting Ray. A run
   made with other settings, or whose model files changed, is *stale*: the sweep
   refuses to touch it unless ``replace`` is set.
2. **Run.** Every other run is a Ray task (:func:`record_run`) that calls the
   public :func:`~ppmech.measure.measure` into a scratch directory on its own
   node, and returns the run's files as bytes. Nothing assumes a shared file
   system. A task lost to a dead worker or node is retried by Ray
   (``max_retries``); the retry resumes the scratch run from its last whole
   batch when it lands on the same node. A run that fails for its own reasons
   (an unknown model, say) comes back as ``failed`` with its one-line error and
   the others go on.
3. **Write.** The driver writes each returned run into ``OUT/runs/.staging-*``
   and renames it to ``OUT/runs/<name>`` when complete, so a run directory
   exists whole or not at all, even after Ctrl-C or a crash. ``study.parquet``
   is rewritten after every run; the tables at the end (:mod:`ppmech.sweep.outputs`).

One sweep writes into a study directory at a time (an exclusive lock on
``OUT/.study.ppmech-lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ppmech.artifacts import OutputLock, write_bytes
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig, measure
from ppmech.runs import Run, load_run, write_json
from ppmech.sweep.study import PlannedRun, Resources, Study

#: The study directory is locked as this (hidden) name inside it: ``out/.study.ppmech-lock``.
LOCK_TARGET = "study"
LOCK_NAME = f".{LOCK_TARGET}.ppmech-lock"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class SweepOptions:
    """How to run a study.

    Attributes:
        address: ``None`` starts a local Ray instance sized to the machine;
            ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins an existing cluster.
        num_cpus, num_gpus: size of the local instance (default: the machine's).
        work_dir: scratch directory on each worker node (default: the system temp dir).
        replace: re-record runs whose directory holds other settings or an older model.
        progress: show a progress bar across runs.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    work_dir: str | None = None
    replace: bool = False
    progress: bool = True


@dataclass
class RunOutcome:
    """What happened to one run of the grid.

    Attributes:
        status: ``complete``, ``failed``, ``interrupted`` (the sweep was stopped
            before it finished) or ``pending`` (not started yet).
        reused: complete from an earlier sweep, not recorded again.
        error: the one-line error of a failed run.
        summary: the run's ``summary.json`` (complete runs).
        node_id: the Ray node that recorded it.
        pids: worker process ids of each attempt on that node (a retry after a
            dead worker adds one).
        wall_seconds: the task's wall time (model load, recording, statistics).
    """

    name: str
    config: MeasureConfig
    status: str = "pending"
    reused: bool = False
    error: str | None = None
    summary: dict[str, Any] | None = None
    node_id: str | None = None
    pids: list[int] = field(default_factory=list)
    wall_seconds: float | None = None


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


# --------------------------------------------------------------------------- planning


def expected_source_hash(spec: str) -> str | None:
    """The ``source_hash`` a fresh load of ``spec`` would record, where the driver can tell cheaply.

    Reads the same (memoised) digests as :func:`ppmech.models.loading.load_model`, without
    loading the model. ``None`` when the driver cannot know: a hub id not in the
    local hub cache, or a path that exists only on the workers.
    """
    # The identity rules live in ppmech.models.loading; reuse them rather than restate them.
    from ppmech.models import loading as M

    try:
        if spec in M.EMBEDDED_MODELS:
            return M._sha256(M.EMBEDDED_MODELS[spec].locate())
        path = Path(spec).expanduser()
        if spec.endswith(".gguf"):
            return M._sha256(path) if path.is_file() else None
        if path.is_dir():
            return M._directory_hash(path) if (path / "config.json").is_file() else None
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            revision = M._hub_revision(spec)
            if revision == "unknown-revision":
                return None
            return hashlib.sha256(f"{spec}@{revision}".encode()).hexdigest()
    except (PPMechError, OSError):
        return None
    return None


@dataclass(frozen=True)
class Existing:
    """The state of a run's directory before the sweep.

    ``missing``; ``complete`` (reusable); ``stale`` (a ppmech run with other settings or
    an older model: ``--replace`` re-records it); ``foreign`` (not a ppmech run: never touched).
    """

    state: str
    reason: str = ""
    run: Run | None = None


def _defaults() -> dict[str, Any]:
    return MeasureConfig().to_dict()


def existing_run(path: Path, config: MeasureConfig) -> Existing:
    """Whether ``path`` holds a finished run of ``config`` (same settings, same model files)."""
    if not path.exists():
        return Existing("missing")
    if not (path / "summary.json").is_file():
        return Existing("foreign", "it is not a ppmech run (no summary.json)")
    try:
        run = load_run(path)
    except PPMechError as exc:
        return Existing("stale", f"it does not read back as a complete run ({exc.problem})")
    defaults = _defaults()
    planned = config.to_dict()
    # A setting added to measure after the run was made reads as its default.
    diff = [k for k, v in planned.items() if run.config.get(k, defaults.get(k)) != v]
    if diff:
        changes = ", ".join(f"{k}: {run.config.get(k, defaults.get(k))!r} -> {planned[k]!r}" for k in diff)
        return Existing("stale", f"it was made with different settings ({changes})")
    expected = expected_source_hash(config.model)
    if expected is not None and run.model.get("source_hash") != expected:
        return Existing("stale", f"the files of model {config.model} changed since it was recorded")
    return Existing("complete", run=run)


def plan(study: Study, out: Path) -> dict[str, Existing]:
    """The state of every run of ``study`` under ``out/runs``."""
    root = out / "runs"
    return {r.name: existing_run(root / r.name, r.config) for r in study.runs}


# --------------------------------------------------------------------------- the Ray task


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PPMechError):
        return exc.one_line()
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    return text[:400]


def _measure_resumably(config: MeasureConfig, run_dir: Path) -> None:
    """Make ``run_dir`` a complete run of ``config``: reuse it, resume it, or record it afresh."""
    with contextlib.suppress(PPMechError):
        if load_run(run_dir).config == config.to_dict():
            return  # an earlier attempt finished, then its worker died before returning
    if run_dir.exists():
        try:
            measure(config, run_dir, resume=True, progress=False)
            return
        except PPMechError:
            shutil.rmtree(run_dir)  # not resumable (other settings, or it failed): start again
    measure(config, run_dir, progress=False)


def _read_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
    work.mkdir(parents=True, exist_ok=True)
    log = work / "worker.json"
    pids: list[int] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no usable note: first attempt
        pids = [int(p) for p in json.loads(log.read_text())["pids"]]
    pids.append(os.getpid())
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    write_json(log, {"run": name, "node_id": node_id, "pids": pids})
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"node_id": node_id, "pids": pids, "files": None, "error": None}
    try:
        run_dir = work / "run"
        _measure_resumably(MeasureConfig(**config), run_dir)
        out["files"] = _read_files(run_dir)
        out["status"] = "complete"
    except Exception as exc:  # the run's own failure: report it, let the other runs go on
        out["status"] = "failed"
        out["error"] = _one_line(exc)
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


def install_run(runs_root: Path, name: str, files: dict[str, bytes]) -> Run:
    """Write a run's files to ``runs_root/<name>`` atomically (staging directory, then rename)."""
    staging = runs_root / f"{STAGING_PREFIX}{name}"
    target = runs_root / name
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for rel, data in files.items():
            path = (staging / rel).resolve()
            if staging.resolve() not in path.parents:
                raise PPMechError(
                    f"run {name} returned a file outside its directory ({rel})", "report this bug"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, data)  # fsynced; a full disk is one line
        old = runs_root / f"{STAGING_PREFIX}{name}.old"
        if target.exists():  # only with replace: the stale run goes once the new one is whole
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_run(target)


def _clean_staging(runs_root: Path) -> None:
    """Remove what an interrupted earlier sweep left half-written (we hold the study lock)."""
    for path in runs_root.glob(f"{STAGING_PREFIX}*"):
        if path.name.endswith(".old") and not (runs_root / path.name[len(STAGING_PREFIX) : -4]).exists():
            # Interrupted between moving a replaced run aside and moving its successor in.
            path.rename(runs_root / path.name[len(STAGING_PREFIX) : -4])
            continue
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- Ray


def _reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``HOST:PORT`` (or ``ray://HOST:PORT``)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise PPMechError(
            f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT",
            "pass the address `ray start --head` printed, e.g. 10.0.0.5:6379",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise PPMechError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})",
            "check the address and that the cluster is up (`ray status` on its head node)",
        ) from exc


class _QuietSecureDefault(logging.Filter):
    """Drop Ray's notice that token authentication is on (the safe default); keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def connect(options: SweepOptions) -> bool:
    """Start or join Ray; returns whether this call started it (and so must stop it)."""
    import ray

    token_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _QuietSecureDefault) for f in token_log.filters):
        token_log.addFilter(_QuietSecureDefault())
    if ray.is_initialized():
        return False  # the caller's own Ray (a notebook, a test session): use it as it is
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if options.address:
        if options.address != "auto":
            _reachable(options.address)
        try:
            ray.init(address=options.address, **quiet)  # type: ignore[arg-type]
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PPMechError(
                f"cannot join the Ray cluster at {options.address}: {_one_line(exc)}",
                "check the address, and that this machine's Ray and Python match the cluster's",
            ) from exc
        return True
    ray.init(
        address="local",
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        include_dashboard=False,
        **quiet,  # type: ignore[arg-type]
    )
    return True


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


def _work_dir(options: SweepOptions, out: Path, run: PlannedRun) -> str:
    key = json.dumps(
        [socket.gethostname(), str(out.resolve()), run.name, run.config.to_dict()], sort_keys=True
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    root = Path(options.work_dir) if options.work_dir else Path(tempfile.gettempdir())
    return str(root / "ppmech-sweep" / f"{run.name[:80]}-{digest}")


# --------------------------------------------------------------------------- the sweep


def sweep(study: Study, out: str | Path, options: SweepOptions | None = None) -> SweepResult:
    """Run every run of ``study`` that ``out`` does not already hold, and write the study outputs.

    Writes ``out/study.json``, ``out/study.parquet``, ``out/tables.md`` and
    ``out/runs/<run>/``. A ``KeyboardInterrupt`` cancels the runs in flight,
    writes the outputs of what finished, and is re-raised.

    Raises:
        PPMechError: stale runs without ``replace``, an unreachable ``address``,
            another sweep writing ``out``.
    """
    from ppmech.sweep import outputs

    options = options or SweepOptions()
    out = Path(out)
    _check_out(out)
    started = time.perf_counter()
    if options.address and options.address != "auto":
        import ray

        if not ray.is_initialized():
            _reachable(options.address)  # fail fast, before anything is written
    with study_lock(out):
        runs_root = out / "runs"
        runs_root.mkdir(exist_ok=True)
        _clean_staging(runs_root)
        states = plan(study, out)
        foreign = [n for n, s in states.items() if s.state == "foreign"]
        if foreign:
            raise PPMechError(
                f"{runs_root / foreign[0]} exists and is not a ppmech run"
                + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""),
                "move it out of the study directory, or use another --out",
            )
        stale = {n: s for n, s in states.items() if s.state == "stale"}
        if stale and not options.replace:
            first = next(iter(stale))
            more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
            raise PPMechError(
                f"{runs_root / first} holds another run: {stale[first].reason}{more}",
                "pass --replace to re-record such runs, or use another --out",
            )
        outputs.write_study_json(out, study)
        previous = outputs.read_previous(out)
        outcomes: dict[str, RunOutcome] = {}
        for run in study.runs:
            o = RunOutcome(run.name, run.config)
            existing = states[run.name]
            if existing.state == "complete" and existing.run is not None:
                o.status, o.reused, o.summary = "complete", True, existing.run.summary
                outputs.carry_forward(o, previous.get(run.name))
            outcomes[run.name] = o
        todo = [r for r in study.runs if outcomes[r.name].status != "complete"]
        interrupted = False
        try:
            if todo:
                _run_on_ray(study, todo, out, options, outcomes)
        except KeyboardInterrupt:
            interrupted = True
            for o in outcomes.values():
                if o.status == "pending":
                    # Ctrl-C may land between a run's rename into place and its bookkeeping.
                    existing = existing_run(runs_root / o.name, o.config)
                    if existing.state == "complete" and existing.run is not None:
                        o.status, o.summary = "complete", existing.run.summary
                    else:
                        o.status = "interrupted"
        ordered = [outcomes[r.name] for r in study.runs]
        frame, tables = outputs.write_outputs(out, study, ordered, final=True)
        if interrupted:
            raise KeyboardInterrupt
        return SweepResult(out, study, ordered, frame, tables, time.perf_counter() - started)


#: What a study directory may hold before its first study.json (an interrupted first sweep).
OWN_ENTRIES = {LOCK_NAME, "runs", "study.json", "study.parquet", "tables.md"}


def _check_out(out: Path) -> None:
    """Refuse to write a study into a directory that holds something else."""
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


def _run_on_ray(
    study: Study, todo: list[PlannedRun], out: Path, options: SweepOptions, outcomes: dict[str, RunOutcome]
) -> None:
    import ray
    from tqdm.auto import tqdm

    from ppmech.sweep import outputs

    started_here = False
    was_running = ray.is_initialized()
    pending: dict[Any, PlannedRun] = {}
    bar = tqdm(
        total=len(study.runs),
        initial=len(study.runs) - len(todo),
        desc=f"sweep {study.name}",
        unit="run",
        disable=not options.progress,
        file=sys.stderr,
    )
    try:
        started_here = connect(options)
        task = ray.remote(record_run)
        for run in todo:
            ref = task.options(**_task_options(study.resources, run.name)).remote(
                run.name, run.config.to_dict(), _work_dir(options, out, run), study.resources.threads()
            )
            pending[ref] = run
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                run = pending.pop(ref)
                o = outcomes[run.name]
                try:
                    payload = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up: a dead worker or node
                    o.status, o.error = "failed", _one_line(exc)
                else:
                    o.node_id, o.pids, o.wall_seconds = (
                        payload["node_id"],
                        payload["pids"],
                        payload["wall_seconds"],
                    )
                    if payload["status"] == "complete":
                        o.summary = install_run(out / "runs", run.name, payload["files"]).summary
                        o.status = "complete"
                    else:
                        o.status, o.error = "failed", payload["error"]
                outputs.write_outputs(out, study, [outcomes[r.name] for r in study.runs], final=False)
                bar.set_postfix_str(f"{run.name}: {o.status}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
        if pending:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        if started_here or (not was_running and ray.is_initialized()):
            with contextlib.suppress(Exception):
                ray.shutdown()


def ray_version() -> str:
    """Ray's installed version, without importing it (a second of start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return "not installed"
