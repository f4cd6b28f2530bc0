"""Experiment tracking (``--track``): MLflow and Weights & Biases, as extras.

Everything here reads what ppmech already stored (run directories, study directories, ledgers)
and never a live run or a model, so a run is logged the same whether it was just recorded or
recorded last week (``ppmech track DIR --track ...``)::

    from ppmech.tracking import parse_track, log_run, study_run
    track = parse_track("mlflow")                 # checks the library and the store first
    log_run(track, "runs/smol")                   # one tracked run
    with study_run(track, "my-study") as parent:  # a parent with one child per grid point
        for d in ("runs/a", "runs/b"):
            log_run(track, d, parent=parent)

What a tracked run holds is :mod:`ppmech.tracking.content`; the ``--track`` forms are
:mod:`ppmech.tracking.spec`. The tracking libraries are imported only when used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ppmech.errors import PPMechError
from ppmech.tracking.content import Record, ledger_record, run_record, study_records
from ppmech.tracking.spec import FORMS, TrackSpec, parse_track


@dataclass(frozen=True)
class TrackedRun:
    """A run the tracker now holds.

    Attributes:
        backend: ``"mlflow"`` or ``"wandb"``.
        run_id: the tracker's id of the run.
        location: where to find it: the tracking URI and experiment (MLflow), the run's URL
            (W&B online) or its offline directory (W&B offline; upload with ``wandb sync DIR``).
        name: the run's name (its directory's name).
    """

    backend: str
    run_id: str
    location: str
    name: str

    def line(self) -> str:
        """One line for the terminal."""
        tool = "MLflow" if self.backend == "mlflow" else "W&B"
        return f"tracked {self.name} in {tool}: run {self.run_id}, {self.location}"


@dataclass
class Parent:
    """A study's parent run, open while its children are logged (:func:`study_run`).

    Attributes:
        spec: the tracker.
        name: the study's name (W&B: the children's group).
        run_id: MLflow's id of the parent run (W&B: set when the parent is written, at the end).
        children: the children logged so far.
    """

    spec: TrackSpec
    name: str
    run_id: str | None = None
    children: list[TrackedRun] = field(default_factory=list)
    record: Record | None = None


def _location(spec: TrackSpec) -> str:
    return spec.where()


def _session(spec: TrackSpec) -> contextlib.AbstractContextManager[None]:
    """Around each public call: W&B's service is shut down after it (everything written)."""
    if spec.backend == "wandb":
        from ppmech.tracking import wandb_backend

        return wandb_backend.session()
    return contextlib.nullcontext()


def _log(spec: TrackSpec, record: Record, parent: Parent | None) -> TrackedRun:
    if spec.backend == "mlflow":
        from ppmech.tracking import mlflow_backend

        run_id = mlflow_backend.log(spec, record, parent.run_id if parent else None)
        tracked = TrackedRun("mlflow", run_id, _location(spec), record.name)
    else:
        from ppmech.tracking import wandb_backend

        logged = wandb_backend.log(spec, record, group=parent.name if parent else None)
        tracked = TrackedRun("wandb", logged.run_id, logged.location, record.name)
    if parent is not None:
        parent.children.append(tracked)
    return tracked


def log_run(spec: TrackSpec | None, run_dir: str | Path, parent: Parent | None = None) -> TrackedRun | None:
    """Log the stored run ``run_dir`` (a ``measure`` run or a ``steer`` output).

    Args:
        spec: from :func:`parse_track`; ``None`` logs nothing and returns ``None``.
        run_dir: the run directory, complete (read through :func:`ppmech.runs.load_run`).
        parent: a :func:`study_run` parent: the run becomes one of its children.

    Raises:
        PPMechError: not a complete run, or the tracker failed (one line; the run is untouched).
    """
    if spec is None:
        return None
    record = run_record(run_dir)
    with _session(spec) if parent is None else contextlib.nullcontext():
        return _log(spec, record, parent)


@contextlib.contextmanager
def study_run(spec: TrackSpec, name: str, out: str | Path | None = None) -> Iterator[Parent]:
    """A parent run for a study: log each grid point inside with ``log_run(..., parent=parent)``.

    MLflow: the parent is created on entry and its children carry ``mlflow.parentRunId``; it
    ends FINISHED, or FAILED when the block raises. W&B: the children share the group ``name``
    and the parent is written on exit as the group's ``study`` run. With ``out`` (the study
    directory), the parent also gets the study's settings, run counts and files
    (``study.json``, ``study.parquet``, ``tables.md``).
    """
    record = study_records(out)[0] if out is not None else Record(name=name, kind="study", path=Path("."))
    record.name = name
    parent = Parent(spec, name, record=record)
    if spec.backend == "mlflow":
        from ppmech.tracking import mlflow_backend

        parent.run_id = mlflow_backend.start(spec, record)
        failed = True
        try:
            yield parent
            failed = False
        finally:
            if not failed:
                mlflow_backend.fill(spec, record, parent.run_id)
            mlflow_backend.finish(spec, record, parent.run_id, failed=failed)
        return
    from ppmech.tracking import wandb_backend

    with wandb_backend.session():
        yield parent
        record.metrics.setdefault("runs", float(len(parent.children)))
        parent.run_id = wandb_backend.log(spec, record, group=name, job_type="study").run_id


def log_study(spec: TrackSpec | None, study_dir: str | Path) -> list[TrackedRun]:
    """Log a ``ppmech sweep`` study: one parent run, one child per grid point (failed ones marked).

    Returns:
        the parent (first) and its children; empty when ``spec`` is ``None``.
    """
    if spec is None:
        return []
    parent_record, children = study_records(study_dir)
    with study_run(spec, parent_record.name, study_dir) as parent:
        for child in children:
            _log(spec, child, parent)
    where = _location(spec) if spec.backend == "mlflow" else f"W&B group {parent.name}"
    head = TrackedRun(spec.backend, parent.run_id or parent.name, where, parent.name)
    return [head, *parent.children]


def log_ledger(spec: TrackSpec | None, path: str | Path) -> TrackedRun | None:
    """Log a ``ppmech verify`` ledger: verdict counts and measurements as metrics, each claim's
    verdict as a tag, ``claims.json`` and ``claims.md`` as artifacts."""
    if spec is None:
        return None
    record = ledger_record(path)
    with _session(spec):
        return _log(spec, record, None)


def log_path(spec: TrackSpec, path: str | Path) -> list[TrackedRun]:
    """Log whatever ``path`` holds: a study, a ledger, or a run (``ppmech track``)."""
    p = Path(path)
    if (p / "study.json").is_file() or (p / "study.parquet").is_file():
        return log_study(spec, p)
    if (p / "claims.json").is_file() or (p.is_file() and p.name == "claims.json"):
        tracked = log_ledger(spec, p)
    else:
        tracked = log_run(spec, p)
    if tracked is None:  # pragma: no cover - spec is not None here
        raise PPMechError("nothing was tracked", "pass --track")
    return [tracked]


__all__ = [
    "FORMS",
    "Parent",
    "TrackSpec",
    "TrackedRun",
    "log_ledger",
    "log_path",
    "log_run",
    "log_study",
    "parse_track",
    "study_run",
]
