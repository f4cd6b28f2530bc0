"""Write a :class:`~ppmech.tracking.content.Record` to Weights & Biases.

W&B has no parent runs: a sweep's grid points share a ``group`` (the study's name) and the study
itself is one more run of that group with ``job_type="study"``. Each run is opened with
``reinit="create_new"`` and finished before the next, so nothing stays open between calls.
Console capture, system metrics and code saving are off: these runs are written after the work,
from stored files, so there is no live process to watch.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ppmech.errors import PPMechError
from ppmech.tracking.content import Record
from ppmech.tracking.spec import TrackSpec

_ARTIFACT_NAME = re.compile(r"[^\w.\-]")


@dataclass(frozen=True)
class Logged:
    """A run W&B wrote: its id, and where to look (the URL online, the run directory offline)."""

    run_id: str
    location: str


@contextlib.contextmanager
def _one_line(record: Record) -> Iterator[None]:
    try:
        yield
    except PPMechError:
        raise
    except Exception as exc:  # wandb's own errors, its service's, and the file system's
        reason = " ".join(str(exc).split())[:300]
        raise PPMechError(
            f"could not log {record.path} to W&B ({reason})",
            f"the {record.kind} output itself is complete; fix W&B (or set WANDB_MODE=offline) and log it "
            f"again with `ppmech track {record.path} --track wandb`",
        ) from exc


@contextlib.contextmanager
def session() -> Iterator[None]:
    """W&B's service for the runs logged inside, shut down after them when this opened it.

    ``run.finish()`` returns before W&B's service has written everything to the offline run file;
    only ``wandb.teardown()`` waits for that. A W&B session the caller already had (a notebook's
    own runs) is left running: its data is written when that session ends.
    """
    from wandb.sdk import wandb_setup

    ours = getattr(wandb_setup, "_singleton", None) is None
    try:
        yield
    finally:
        if ours:
            import wandb

            wandb.teardown()


def log(spec: TrackSpec, record: Record, group: str | None = None, job_type: str | None = None) -> Logged:
    """Log ``record`` as one finished W&B run, in ``group`` if given."""
    import wandb

    with _one_line(record):
        run = wandb.init(
            project=spec.project,
            name=record.name,
            group=group,
            job_type=job_type or record.kind,
            config=record.params,
            tags=[record.kind],
            mode=spec.mode,  # type: ignore[arg-type]  # validated by wandb itself ($WANDB_MODE)
            reinit="create_new",
            settings=wandb.Settings(
                console="off", x_disable_stats=True, save_code=False, disable_git=True, silent=True
            ),
        )
        failed = True
        try:
            for step, row in record.steps.iterrows():
                values = {str(k): float(v) for k, v in row.items() if math.isfinite(v)}
                if values:
                    run.log(values, step=int(step))
            summary: dict[str, Any] = dict(record.metrics)
            summary |= {f"tag/{k}": v for k, v in record.tags.items()}
            if record.error:
                summary["error"] = record.error
            run.summary.update(summary)
            if record.artifacts:
                artifact = wandb.Artifact(
                    _ARTIFACT_NAME.sub("_", f"{record.kind}-{record.name}"), type=f"ppmech-{record.kind}"
                )
                for path in record.artifacts:
                    artifact.add_file(str(path))
                run.log_artifact(artifact)
            failed = record.failed
        finally:
            run.finish(exit_code=1 if failed else 0)
        location = run.url if spec.mode == "online" and run.url else str(run.settings.sync_dir)
        return Logged(run_id=str(run.id), location=location)
