"""Run directories on disk: writing them batch by batch, and reading them back.

Layout of a complete run::

    trajectories.parquet   one row per trajectory
    steps.parquet          one row per generated step
    summary.json           statistics, config, model identity, versions
    hidden/batch-*.npy     optional: h_t per batch, [B, T, d] float32

While recording, each batch lands in ``parts/`` (written to a temporary name
and renamed, so a part is whole or absent). ``summary.json`` is written last,
after the final parquet files were renamed into place: a directory without it
is an *incomplete* run, which :func:`load_run` refuses and ``--resume``
continues from its last whole batch.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ppmech.engine.recorder import BatchRecord
from ppmech.errors import PPMechError
from ppmech.mechanics import energy_terms

SCHEMA_VERSION = 1

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("trajectory", pa.int32()),
        ("source", pa.string()),
        ("prompt_ids", pa.list_(pa.int64())),
        ("generated_ids", pa.list_(pa.int64())),
        ("prompt_text", pa.string()),
        ("generated_text", pa.string()),
    ]
)

STEP_SCHEMA = pa.schema(
    [
        ("trajectory", pa.int32()),
        ("step", pa.int32()),
        ("token_id", pa.int64()),
        ("token", pa.string()),
        ("logp", pa.float64()),
        ("entropy", pa.float64()),
        ("speed_sq", pa.float64()),
        ("K", pa.float64()),
        ("V", pa.float64()),
        ("H", pa.float64()),
    ]
)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _nullable(values: np.ndarray) -> pa.Array:
    """float64 array where NaN means "undefined" (null) and ±inf is kept."""
    arr = np.asarray(values, dtype=np.float64)
    return pa.array(arr, mask=np.isnan(arr), type=pa.float64())


def batch_tables(
    record: BatchRecord,
    trajectory_ids: list[int],
    sources: list[str],
    prompt_ids: list[list[int]],
    tokenizer: Any,
) -> tuple[pa.Table, pa.Table]:
    """Turn a :class:`BatchRecord` into rows of the two parquet schemas."""
    traj_rows: dict[str, list[Any]] = {name: [] for name in TRAJECTORY_SCHEMA.names}
    cols: dict[str, list[np.ndarray]] = {name: [] for name in STEP_SCHEMA.names}
    tokens: list[str] = []
    for row, traj in enumerate(trajectory_ids):
        n = record.lengths[row]
        gen = record.token_ids[row, :n].tolist()
        traj_rows["trajectory"].append(traj)
        traj_rows["source"].append(sources[row])
        traj_rows["prompt_ids"].append(list(prompt_ids[row]))
        traj_rows["generated_ids"].append(gen)
        traj_rows["prompt_text"].append(tokenizer.decode(prompt_ids[row]))
        traj_rows["generated_text"].append(tokenizer.decode(gen))
        terms = energy_terms(record.speed_sq[row, :n].numpy(), record.logp[row, :n].double().numpy())
        cols["trajectory"].append(np.full(n, traj, dtype=np.int32))
        cols["step"].append(np.arange(n, dtype=np.int32))
        cols["token_id"].append(np.asarray(gen, dtype=np.int64))
        cols["logp"].append(record.logp[row, :n].double().numpy())
        cols["entropy"].append(record.entropy[row, :n].double().numpy())
        cols["speed_sq"].append(record.speed_sq[row, :n].numpy())
        for name in ("K", "V", "H"):
            cols[name].append(terms[name])
        tokens.extend(tokenizer.batch_decode([[i] for i in gen]))
    steps = {name: np.concatenate(parts) for name, parts in cols.items() if name != "token"}
    arrays = []
    for field in STEP_SCHEMA:
        if field.name == "token":
            arrays.append(pa.array(tokens, type=pa.string()))
        elif pa.types.is_floating(field.type):
            arrays.append(_nullable(steps[field.name]))
        else:
            arrays.append(pa.array(steps[field.name], type=field.type))
    return (
        pa.Table.from_pydict(traj_rows, schema=TRAJECTORY_SCHEMA),
        pa.Table.from_arrays(arrays, schema=STEP_SCHEMA),
    )


class RunWriter:
    """Writes a run directory batch by batch; see the module docstring.

    Args:
        out: the run directory.
        config: the run's configuration; ``--resume`` requires an equal one.
        overwrite: replace whatever is at ``out``.
        resume: continue an incomplete run at ``out``.

    Raises:
        PPMechError: ``out`` exists and neither flag allows using it, or the
            run to resume was made with another configuration.
    """

    def __init__(
        self, out: Path, config: dict[str, Any], overwrite: bool = False, resume: bool = False
    ) -> None:
        self.out = Path(out)
        self.parts = self.out / "parts"
        self.config = config
        complete = (self.out / "summary.json").is_file()
        started = (self.parts / "config.json").is_file()
        occupied = self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir()))
        if occupied and overwrite:
            if self.out.is_dir():
                # The summary goes first so that a crash mid-delete never leaves
                # something that still reads as a complete run.
                (self.out / "summary.json").unlink(missing_ok=True)
                shutil.rmtree(self.out)
            else:
                self.out.unlink()
        elif occupied and resume and started and not complete:
            previous = json.loads((self.parts / "config.json").read_text())
            if previous != config:
                diff = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise PPMechError(
                    f"cannot resume {self.out}: it was recorded with different settings ({', '.join(diff)})",
                    "rerun with the original settings, or pass --overwrite to start again",
                )
        elif occupied and complete:
            raise PPMechError(
                f"{self.out} already holds a complete run",
                "pass --overwrite to replace it, or choose another --out",
            )
        elif occupied and started:
            raise PPMechError(
                f"{self.out} holds an interrupted run",
                "pass --resume to continue it, or --overwrite to start again",
            )
        elif occupied:
            raise PPMechError(
                f"{self.out} exists and is not empty",
                "pass --overwrite to replace it, or choose another --out",
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        write_json(self.parts / "config.json", config)

    def done_batches(self) -> set[int]:
        """Indices of batches already on disk."""
        done = set()
        for path in self.parts.glob("batch-*.steps.parquet"):
            index = int(path.name.split(".")[0].split("-")[1])
            if (self.parts / f"batch-{index:05d}.trajectories.parquet").is_file():
                done.add(index)
        return done

    def write_batch(
        self, index: int, trajectories: pa.Table, steps: pa.Table, hidden: np.ndarray | None
    ) -> None:
        """Store one batch; the trajectories part is written last and marks it whole."""
        if hidden is not None:
            hidden_dir = self.out / "hidden"
            hidden_dir.mkdir(exist_ok=True)
            tmp = hidden_dir / f".batch-{index:05d}.npy.tmp"
            with tmp.open("wb") as handle:
                np.save(handle, hidden.astype(np.float32))
            os.replace(tmp, hidden_dir / f"batch-{index:05d}.npy")
        _write_table(self.parts / f"batch-{index:05d}.steps.parquet", steps)
        _write_table(self.parts / f"batch-{index:05d}.trajectories.parquet", trajectories)

    def finalize(self, summary_for: Any) -> dict[str, Any]:
        """Merge the parts into the final files, then write ``summary.json``.

        Args:
            summary_for: callable taking the merged steps frame and returning the
                summary dict (statistics are computed from what is on disk).
        """
        indices = sorted(self.done_batches())
        for kind, schema in (("trajectories", TRAJECTORY_SCHEMA), ("steps", STEP_SCHEMA)):
            target = self.out / f"{kind}.parquet"
            tmp = target.with_name(f".{target.name}.tmp")
            with pq.ParquetWriter(tmp, schema) as writer:
                for index in indices:
                    writer.write_table(pq.read_table(self.parts / f"batch-{index:05d}.{kind}.parquet"))
            os.replace(tmp, target)
        steps = pd.read_parquet(self.out / "steps.parquet")
        summary = summary_for(steps)
        summary["schema_version"] = SCHEMA_VERSION
        summary["status"] = "complete"
        write_json(self.out / "summary.json", summary)
        shutil.rmtree(self.parts)
        return summary


@dataclass
class Run:
    """A complete run read back from disk.

    Attributes:
        path: the run directory.
        summary: ``summary.json``.
        trajectories: one row per trajectory.
        steps: one row per step; null K/V/H read as NaN.
    """

    path: Path
    summary: dict[str, Any]
    trajectories: pd.DataFrame
    steps: pd.DataFrame

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.summary.get("model", {}))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.summary.get("config", {}))

    def hidden(self) -> np.ndarray:
        """``h_t`` for every trajectory, ``[N, T, d]`` float32 (needs ``--save-hidden``)."""
        files = sorted((self.path / "hidden").glob("batch-*.npy"))
        if not files:
            raise PPMechError(
                f"run {self.path} has no saved hidden states",
                "re-record it with `ppmech measure --save-hidden`",
            )
        return np.concatenate([np.load(f, mmap_mode="r") for f in files], axis=0)


def load_run(path: str | Path) -> Run:
    """Read a complete run directory.

    Raises:
        PPMechError: missing, incomplete, or from another schema version.
    """
    root = Path(path)
    summary_path = root / "summary.json"
    if not root.is_dir():
        raise PPMechError(f"run directory {root} not found", "check the path")
    if not summary_path.is_file():
        if (root / "parts").is_dir():
            raise PPMechError(
                f"{root} is an incomplete (interrupted) run",
                f"finish it with `ppmech measure --resume --out {root}` and the same settings",
            )
        raise PPMechError(f"{root} is not a ppmech run (no summary.json)", "check the path")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise PPMechError(
            f"{summary_path} is corrupt ({exc.msg})", "re-record the run with ppmech measure"
        ) from exc
    version = summary.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PPMechError(
            f"{root} was written with run schema {version}; this ppmech reads schema {SCHEMA_VERSION}",
            "re-record it with this version of `ppmech measure`",
        )
    try:
        trajectories = pd.read_parquet(root / "trajectories.parquet")
        steps = pd.read_parquet(root / "steps.parquet")
    except (OSError, pa.ArrowException) as exc:
        raise PPMechError(f"cannot read the parquet files of {root}: {exc}", "re-record the run") from exc
    return Run(path=root, summary=summary, trajectories=trajectories, steps=steps)
