"""Run directories on disk: writing them batch by batch, and reading them back.

Layout of a complete run::

    trajectories.parquet   one row per trajectory
    steps.parquet          one row per generated step
    summary.json           statistics, config, model identity, versions
    config.toml            the resolved settings (``ppmech measure --config`` reads it back)
    hidden/batch-*.npy     optional: h_t per batch, [B, T, d] float32

    .ppmech-run            marker: written by ppmech ``measure`` (see :mod:`ppmech.artifacts`)

While recording, each batch lands in ``parts/`` (written to a temporary name
and renamed, so a part is whole or absent). ``summary.json`` is written last,
after the final parquet files were renamed into place, and records the rows,
size and SHA-256 of every data file: a directory without it is an *incomplete*
run, which :func:`load_run` refuses and ``--resume`` continues from its last
whole batch. Locking, the marker and staged ``--overwrite`` are
:class:`ppmech.artifacts.Output`'s.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ppmech import artifacts
from ppmech.artifacts import write_json  # re-exported: the one JSON writer
from ppmech.engine.recorder import BatchRecord
from ppmech.errors import PPMechError
from ppmech.mechanics import energy_terms
from ppmech.settings import dump_toml

SCHEMA_VERSION = 2  # 2: summary.json lists every data file with its rows, size and SHA-256

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

    Holds the run's :class:`~ppmech.artifacts.Output` (lock, marker, staging) from
    construction until :meth:`finalize` or :meth:`close`; use it as a context
    manager so that the lock is released on any failure.

    Args:
        out: the run directory.
        config: the run's configuration; ``--resume`` requires an equal one.
        overwrite: replace a run ppmech wrote at ``out``; the old run stays whole
            until the new one is complete.
        resume: continue an interrupted run at ``out``.

    Raises:
        PPMechError: ``out`` is taken (see :class:`~ppmech.artifacts.Output`), or
            the run to resume was made with another configuration.
    """

    def __init__(
        self, out: Path, config: dict[str, Any], overwrite: bool = False, resume: bool = False
    ) -> None:
        self.out = Path(out)
        self.config = config
        self.output = artifacts.Output(
            self.out, "measure", overwrite=overwrite, resume=resume, resumable=True
        )
        self.output.open()
        try:
            self.root = self.output.path
            self.parts = self.root / "parts"
            previous_path = self.parts / "config.json"
            if self.output.resuming and previous_path.is_file():
                previous = json.loads(previous_path.read_text())
                if previous != config:
                    diff = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                    raise PPMechError(
                        f"cannot resume {self.out}: it was recorded with different settings "
                        f"({', '.join(diff)})",
                        "rerun with the original settings, or pass `overwrite` to start again",
                    )
            self.parts.mkdir(exist_ok=True)
            write_json(previous_path, config)
        except BaseException:
            self.output.close(failed=True)
            raise
        self.written: list[str] = []

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Release the run's lock (an unfinished run stays resumable)."""
        self.output.close(failed=failed)

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
            hidden_dir = self.root / "hidden"
            hidden_dir.mkdir(exist_ok=True)
            artifacts.write_npy(hidden_dir / f"batch-{index:05d}.npy", hidden.astype(np.float32))
        artifacts.write_parquet(self.parts / f"batch-{index:05d}.steps.parquet", steps)
        artifacts.write_parquet(self.parts / f"batch-{index:05d}.trajectories.parquet", trajectories)

    def finalize(self, summary_for: Any) -> dict[str, Any]:
        """Merge the parts into the final files, write ``summary.json``, and put the run in place.

        ``summary.json`` records the row count, size and SHA-256 of every data
        file, which :func:`load_run` checks.

        Args:
            summary_for: callable taking the merged steps frame and returning the
                summary dict (statistics are computed from what is on disk).
        """
        indices = sorted(self.done_batches())
        files: dict[str, Any] = {}
        for kind, schema in (("trajectories", TRAJECTORY_SCHEMA), ("steps", STEP_SCHEMA)):
            name = f"{kind}.parquet"
            rows = 0
            with artifacts.atomic_path(self.root / name) as tmp, pq.ParquetWriter(tmp, schema) as writer:
                for index in indices:
                    table = pq.read_table(self.parts / f"batch-{index:05d}.{kind}.parquet")
                    rows += table.num_rows
                    writer.write_table(table)
            files[name] = artifacts.describe_file(self.root, name, rows=rows)
        # The resolved settings, in the file `--config` reads back: `ppmech measure --config
        # RUN/config.toml --out NEW` records the same run again.
        write_config_toml(self.root, self.config)
        files[CONFIG_FILE] = artifacts.describe_file(self.root, CONFIG_FILE)
        for path in sorted((self.root / "hidden").glob("batch-*.npy")):
            relative = f"hidden/{path.name}"
            files[relative] = artifacts.describe_file(self.root, relative)
        steps = pd.read_parquet(self.root / "steps.parquet")
        summary = summary_for(steps)
        summary["schema_version"] = SCHEMA_VERSION
        summary["status"] = "complete"
        summary["files"] = files
        write_json(self.root / "summary.json", summary)
        shutil.rmtree(self.parts)
        self.written = self.output.commit()
        self.close()
        return summary


#: A run's resolved settings as TOML (the keys of its config dataclass).
CONFIG_FILE = "config.toml"


def write_config_toml(root: Path, config: dict[str, Any], command: str = "measure") -> None:
    """Write ``root/config.toml``: ``config`` (a config dataclass's ``to_dict()``) as TOML."""
    header = (
        f"Settings of this ppmech {command} run, as `ppmech {command} --config` reads them.\n"
        "A setting left out (TOML has no null) takes its default."
    )
    artifacts.write_text(root / CONFIG_FILE, dump_toml(config, header))


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
        """``h_t`` for every trajectory, ``[N, T, d]`` float32 (needs ``--save-hidden``).

        Raises:
            PPMechError: no saved states, or files that differ from the summary's record.
        """
        files = sorted((self.path / "hidden").glob("batch-*.npy"))
        if not files:
            raise PPMechError(
                f"run {self.path} has no saved hidden states",
                "re-record it with `ppmech measure --save-hidden`",
            )
        recorded = {k: v for k, v in self.summary.get("files", {}).items() if k.startswith("hidden/")}
        present = {f"hidden/{f.name}" for f in files}
        fix = f"re-record the run (`ppmech measure --save-hidden --overwrite --out {self.path}`)"
        if present != set(recorded):
            raise PPMechError(
                f"the hidden states of {self.path} are not the ones its summary.json lists "
                f"({len(present)} files on disk, {len(recorded)} listed)",
                fix,
            )
        for name, expected in recorded.items():
            artifacts.verify_file(self.path, name, expected, fix)
        return np.concatenate([np.load(f, mmap_mode="r") for f in files], axis=0)


def _check_schema(root: Path, name: str, expected: pa.Schema, fix: str) -> None:
    """Refuse a Parquet file whose columns or types are not the run schema's."""
    try:
        schema = pq.read_schema(root / name)
    except (OSError, pa.ArrowException) as exc:
        raise PPMechError(f"cannot read {name} of {root}: {exc}", fix) from exc
    got = {f.name: f.type for f in schema}
    want = {f.name: f.type for f in expected}
    missing = [n for n in want if n not in got]
    if missing:
        raise PPMechError(f"{name} of {root} lacks the column(s) {', '.join(missing)}", fix)
    wrong = [f"{n} is {got[n]}, not {t}" for n, t in want.items() if got[n] != t]
    if wrong:
        raise PPMechError(f"{name} of {root} has other column types ({'; '.join(wrong)})", fix)


def load_run(path: str | Path) -> Run:
    """Read a complete run directory, and check it is the run its summary describes.

    Checks, in order: the directory, ``summary.json``, the run schema version, each
    Parquet file's size and SHA-256 against the summary, the column names and
    types, and the row counts. This is how ``compare``, ``analyze``, ``verify``
    and every other reader get a run.

    Raises:
        PPMechError: missing, incomplete, another kind of output, another schema
            version, or data files that differ from what the summary recorded.
    """
    root = Path(path)
    summary_path = root / "summary.json"
    if not root.is_dir():
        if root.exists():
            raise PPMechError(f"{root} is a file, not a run directory", "pass a run directory")
        if artifacts.staging_path(root).is_dir():
            raise PPMechError(
                f"{root} is not there, but an unfinished write of it is",
                f"finish it with `ppmech measure --resume --out {root}` and the same settings",
            )
        raise PPMechError(f"run directory {root} not found", "check the path")
    marker = artifacts.read_marker(root)
    if marker is not None and marker["kind"] != "measure":
        raise PPMechError(
            f"{root} is a ppmech {marker['kind']} output, not a measure run", "pass a run directory"
        )
    if not summary_path.is_file():
        if (root / "parts").is_dir() or marker is not None:
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
    version = summary.get("schema_version") if isinstance(summary, dict) else None
    if version != SCHEMA_VERSION:
        raise PPMechError(
            f"{root} was written with run schema {version}; this ppmech reads schema {SCHEMA_VERSION}",
            "re-record it with this version of `ppmech measure` (delete the old directory first)",
        )
    fix = f"re-record the run (`ppmech measure --overwrite --out {root}`)"
    files = summary.get("files")
    tables = {"trajectories.parquet": TRAJECTORY_SCHEMA, "steps.parquet": STEP_SCHEMA}
    if not isinstance(files, dict) or not all(isinstance(files.get(n), dict) for n in tables):
        raise PPMechError(f"{summary_path} does not list the run's data files", fix)
    for name, schema in tables.items():
        artifacts.verify_file(root, name, files[name], fix)
        _check_schema(root, name, schema, fix)
    try:
        trajectories = pd.read_parquet(root / "trajectories.parquet")
        steps = pd.read_parquet(root / "steps.parquet")
    except (OSError, pa.ArrowException) as exc:
        raise PPMechError(f"cannot read the parquet files of {root}: {exc}", "re-record the run") from exc
    for name, frame in (("trajectories.parquet", trajectories), ("steps.parquet", steps)):
        if len(frame) != files[name].get("rows"):
            raise PPMechError(
                f"{name} of {root} has {len(frame)} rows; its summary.json says {files[name].get('rows')}",
                fix,
            )
    return Run(path=root, summary=summary, trajectories=trajectories, steps=steps)
