"""Write a :class:`~ppmech.tracking.content.Record` to MLflow, through ``MlflowClient`` only.

The client is used directly (no ``mlflow.start_run``): no process-wide active run is left
behind, and a parent's id is passed explicitly (``mlflow.parentRunId``, the tag MLflow's own
nested runs use, so the UI nests a sweep's children under it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ppmech.errors import PPMechError
from ppmech.tracking.content import Record, metric_key
from ppmech.tracking.spec import TrackSpec, allow_file_store, quick_http

MAX_PARAM_CHARS = 6000
"""MLflow's limit on a parameter's value (longer values are cut, with a trailing "...")."""

PARAM_BATCH, METRIC_BATCH = 100, 1000
"""MLflow's limits on one ``log_batch`` call."""


def _param(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def _client(spec: TrackSpec) -> Any:
    from mlflow import MlflowClient

    if spec.is_file_store:
        allow_file_store()
    return MlflowClient(tracking_uri=spec.uri)


def _experiment_id(client: Any, name: str) -> str:
    """The experiment's id, created on first use (a second process creating it at once is fine)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


@contextlib.contextmanager
def _one_line(spec: TrackSpec, record: Record) -> Iterator[None]:
    """MLflow's and the file system's errors as one line that says the run itself is safe."""
    try:
        with quick_http() if not spec.is_file_store else contextlib.nullcontext():
            yield
    except PPMechError:
        raise
    except Exception as exc:  # MLflow, requests and OSError alike
        reason = " ".join(str(exc).split())[:300]
        raise PPMechError(
            f"could not log {record.path} to MLflow at {spec.uri} ({reason})",
            f"the {record.kind} output itself is complete; fix the tracking store and log it again "
            f"with `ppmech track {record.path} --track mlflow:...`",
        ) from exc


def start(spec: TrackSpec, record: Record, parent_id: str | None = None) -> str:
    """Create the MLflow run of ``record`` (status RUNNING) and return its id."""
    with _one_line(spec, record):
        client = _client(spec)
        experiment = _experiment_id(client, spec.project)
        tags = dict(record.tags)
        if parent_id is not None:
            tags["mlflow.parentRunId"] = parent_id
        run = client.create_run(experiment, run_name=record.name, tags=tags)
        return str(run.info.run_id)


def fill(spec: TrackSpec, record: Record, run_id: str) -> None:
    """Log ``record``'s params, metrics, step metrics and artifacts into the run ``run_id``."""
    from mlflow.entities import Metric, Param

    with _one_line(spec, record):
        client = _client(spec)
        params = [Param(metric_key(k), _param(v)) for k, v in record.params.items()]
        for i in range(0, len(params), PARAM_BATCH):
            client.log_batch(run_id, params=params[i : i + PARAM_BATCH])
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), float(v), now, 0) for k, v in record.metrics.items()]
        for column in record.steps.columns:
            values = record.steps[column].to_numpy(dtype=np.float64)
            metrics += [
                Metric(metric_key(str(column)), float(v), now, int(step))
                for step, v in zip(record.steps.index, values, strict=True)
                if np.isfinite(v)
            ]
        for i in range(0, len(metrics), METRIC_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + METRIC_BATCH])
        if record.error:
            client.set_tag(run_id, "ppmech.error", record.error[:5000])
        for path in record.artifacts:
            client.log_artifact(run_id, str(path))


def finish(spec: TrackSpec, record: Record, run_id: str, failed: bool = False) -> None:
    """Mark the run FINISHED, or FAILED (a failed grid point, or logging that broke off)."""
    with _one_line(spec, record):
        _client(spec).set_terminated(run_id, "FAILED" if failed or record.failed else "FINISHED")


def log(spec: TrackSpec, record: Record, parent_id: str | None = None) -> str:
    """Log ``record`` as one finished MLflow run (a child of ``parent_id`` if given); its id."""
    run_id = start(spec, record, parent_id)
    try:
        fill(spec, record, run_id)
    except BaseException:
        with contextlib.suppress(Exception):
            _client(spec).set_terminated(run_id, "FAILED")
        raise
    finish(spec, record, run_id)
    return run_id
