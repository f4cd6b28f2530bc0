"""What a report is made of: each input path, recognised and read back from disk, read-only.

A report never runs a model: it reads what ``ppmech`` commands wrote. The kinds
of input (:func:`detect` tells them apart by the files they hold):

* **run**: a ``ppmech measure`` directory (``summary.json`` + parquet files),
  read through :func:`ppmech.runs.load_run`.
* **sweep**: a ``ppmech sweep`` study directory (``study.json`` and/or
  ``study.parquet``, complete runs under ``runs/<name>/``).
* **verify**: a ``ppmech verify`` directory (``claims.json``, runs under ``runs/``).
* **monitor-benchmark**: the JSON of ``ppmech monitor benchmark --json FILE``.
* **monitor-score**: the JSON lines of ``ppmech monitor score --json --tokens``.
* **steer**: a ``ppmech steer`` directory (``summary.json`` of kind ``steer`` + ``steps.parquet``).
* **steering-evaluation**: a ``ppmech evaluate-steering`` directory
  (``summary.json`` of kind ``steering-evaluation`` + ``items.csv``).

Each input is checked against its schema when it is read (:mod:`ppmech.report.schema`:
the ``*_SCHEMA`` constants below); a malformed one is one line naming the file and
the field, never a traceback from inside a figure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ppmech.errors import PPMechError
from ppmech.report.schema import (
    ANY,
    NUM,
    SCALAR,
    Fields,
    ListOf,
    MapOf,
    Maybe,
    Omittable,
    check,
    check_columns,
)
from ppmech.runs import Run, load_run

KINDS = (
    "run",
    "sweep",
    "verify",
    "monitor-benchmark",
    "monitor-score",
    "steer",
    "steering-evaluation",
)

ACCEPTED = (
    "pass run directories (ppmech measure), a sweep or verify directory, a steer or evaluate-steering "
    "directory, a monitor benchmark --json file or monitor score --json --tokens output"
)


@dataclass
class RunSource:
    """One measure run. ``name`` labels it in legends (unique within a report)."""

    path: Path
    name: str
    run: Run
    kind: str = "run"


@dataclass
class SweepSource:
    """A sweep's study directory.

    Attributes:
        study: ``study.json`` (empty if absent).
        table: ``study.parquet``, one row per run (empty if absent).
        runs: the complete runs under ``runs/``, by name; failed or unfinished ones
            are listed in ``skipped`` with the reason.
    """

    path: Path
    name: str
    study: dict[str, Any]
    table: pd.DataFrame
    runs: dict[str, Run]
    skipped: dict[str, str] = field(default_factory=dict)
    kind: str = "sweep"


@dataclass
class VerifySource:
    """A ``ppmech verify`` directory: the ledger and its core (pretrained/random) runs."""

    path: Path
    name: str
    claims: dict[str, Any]
    runs: dict[str, Run]
    kind: str = "verify"


@dataclass
class MonitorBenchmarkSource:
    """``ppmech monitor benchmark --json``: AUROC / TPR per method and set, CUSUM delays."""

    path: Path
    name: str
    data: dict[str, Any]
    kind: str = "monitor-benchmark"

    @property
    def scores(self) -> pd.DataFrame:
        return pd.DataFrame(self.data.get("scores", []))

    @property
    def delays(self) -> pd.DataFrame:
        return pd.DataFrame(self.data.get("delays", []))


@dataclass
class MonitorScoreSource:
    """``ppmech monitor score --json --tokens``: one record per text with per-token scores."""

    path: Path
    name: str
    records: list[dict[str, Any]]
    kind: str = "monitor-score"


@dataclass
class SteerSource:
    """``ppmech steer``: natural and steered traces of one prompt."""

    path: Path
    name: str
    summary: dict[str, Any]
    steps: pd.DataFrame
    kind: str = "steer"


@dataclass
class SteeringEvalSource:
    """``ppmech evaluate-steering``: per-prompt judge scores and the Table-3 statistics."""

    path: Path
    name: str
    summary: dict[str, Any]
    items: pd.DataFrame
    kind: str = "steering-evaluation"


Source = (
    RunSource
    | SweepSource
    | VerifySource
    | MonitorBenchmarkSource
    | MonitorScoreSource
    | SteerSource
    | SteeringEvalSource
)


# --------------------------------------------------------------------------- schemas (what is read)

TABLE_ROWS = ListOf(MapOf(SCALAR))
"""Rows of a table drawn as is (one object per row, cells are scalars)."""
BENCHMARK_SCHEMA = Fields(
    {
        "scores": ListOf(Fields({"method": str, "set": str, "auroc": Maybe(NUM), "tpr_at_5fpr": Maybe(NUM)})),
        "delays": TABLE_ROWS,
        "sizes": MapOf(NUM),
        "model": Omittable(Fields({"spec": Omittable(SCALAR)})),
        "false_alarms": Omittable(TABLE_ROWS),
        "text_scores": Omittable(Maybe(MapOf(MapOf(ListOf(Maybe(NUM)))))),
    }
)
CLAIM_COLUMNS = ("id", "model", "source", "claim", "paper", "measured", "verdict", "rule", "why")
"""The ledger's columns the page shows first, in this order."""
CLAIMS_SCHEMA = Fields(
    {
        # Each claim an object; the columns the page shows must be table cells (others are left alone).
        "claims": ListOf(Fields({c: Omittable(SCALAR) for c in CLAIM_COLUMNS})),
        "verdicts": MapOf(int),
        "meta": Omittable(Fields({"models": Omittable(ListOf(str)), "quick": Omittable(bool)})),
    }
)
SCORE_RECORD_SCHEMA = Fields(
    {
        "tokens": ListOf(
            Fields(
                {
                    "z_H": Maybe(NUM),
                    "cusum": Maybe(NUM),
                    "index": Omittable(int),
                    "token": Omittable(Maybe(str)),
                }
            )
        ),
        "source": Omittable(SCALAR),
        "alarm_at": Omittable(Maybe(int)),
        "mean_H": Omittable(Maybe(NUM)),
        "anomaly": Omittable(Maybe(NUM)),
    }
)
STEER_SCHEMA = Fields(
    {
        "kind": str,
        "config": Omittable(MapOf(ANY)),
        "comparison": Omittable(TABLE_ROWS),
        "natural_text": Omittable(Maybe(str)),
        "steered_text": Omittable(Maybe(str)),
    }
)
STEER_COLUMNS = ("trace", "step", "token", "H", "K", "V")
STEERING_EVAL_SCHEMA = Fields(
    {
        "kind": str,
        "config": Omittable(MapOf(ANY)),
        "statistics": Omittable(
            Fields(
                {
                    k: Omittable(Maybe(NUM))
                    for k in ("natural_mean", "natural_sd", "steered_mean", "steered_sd", "p_value", "n")
                }
            )
        ),
        "table3": Omittable(TABLE_ROWS),
    }
)
ITEMS_COLUMNS = ("natural_score", "steered_score")
RUN_SCHEMA = Fields({"conservation": Omittable(Maybe(MapOf(Maybe(NUM))))})
"""A run's ``summary.json`` beyond what :func:`ppmech.runs.load_run` checks: the stored controls."""
STUDY_SCHEMA = MapOf(ANY)
"""``study.json``: an object (the report shows none of its fields)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PPMechError(
            f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})", "rewrite it with the ppmech command"
        ) from exc
    except UnicodeDecodeError as exc:
        raise PPMechError(f"{path} is not UTF-8 text", ACCEPTED) from exc


def detect(path: str | Path) -> str:
    """The kind of input at ``path`` (one of :data:`KINDS`), from the files it holds.

    Raises:
        PPMechError: the path is missing or is none of the kinds; an interrupted
            run or evaluation is named as such.
    """
    p = Path(path)
    if not p.exists():
        raise PPMechError(f"{p} not found", "check the path")
    if p.is_file():
        if p.suffix == ".jsonl":
            return "monitor-score"
        if p.suffix == ".json":
            data = _read_json(p)
            if isinstance(data, dict) and {"scores", "delays", "sizes"} <= set(data):
                return "monitor-benchmark"
            if isinstance(data, dict) and "claims" in data and "verdicts" in data:
                return "verify"
        raise PPMechError(f"{p} is not a report input", ACCEPTED)
    if (p / "study.json").is_file() or (p / "study.parquet").is_file():
        return "sweep"
    if (p / "claims.json").is_file():
        return "verify"
    summary = p / "summary.json"
    if summary.is_file():
        data = _read_json(summary)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "steer":
            return "steer"
        if kind == "steering-evaluation":
            return "steering-evaluation"
        return "run"
    if (p / "parts").is_dir():
        return "run"  # load_run names it an interrupted run, with the fix
    if (p / "items.csv").is_file():
        raise PPMechError(
            f"{p} is an unfinished steering evaluation (no summary.json)",
            "rerun `ppmech evaluate-steering` with --overwrite",
        )
    raise PPMechError(f"{p} is not a ppmech run or output directory (no summary.json)", ACCEPTED)


def read_run(path: Path) -> Run:
    """:func:`ppmech.runs.load_run`, and the parts of its summary the report prints checked."""
    run = load_run(path)
    fix = "re-record the run with `ppmech measure --overwrite`"
    check(run.summary, RUN_SCHEMA, path / "summary.json", fix)
    return run


def _complete_runs(root: Path) -> tuple[dict[str, Run], dict[str, str]]:
    """Complete runs under ``root`` (sorted by name) and why the others were left out."""
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    if not root.is_dir():
        return runs, skipped
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        try:
            runs[sub.name] = read_run(sub)
        except PPMechError as exc:
            skipped[sub.name] = exc.problem
    return runs, skipped


def load_sweep(path: Path) -> SweepSource:
    """A sweep's study directory: ``study.json``, ``study.parquet`` and its complete runs."""
    study = _read_json(path / "study.json") if (path / "study.json").is_file() else {}
    check(study, STUDY_SCHEMA, path / "study.json", "rerun `ppmech sweep`")
    table = pd.DataFrame()
    if (path / "study.parquet").is_file():
        try:
            table = pd.read_parquet(path / "study.parquet")
        except (OSError, pa.ArrowException) as exc:
            raise PPMechError(f"cannot read {path / 'study.parquet'}: {exc}", "rerun the sweep") from exc
    runs, skipped = _complete_runs(path / "runs")
    if not runs:
        raise PPMechError(
            f"the sweep {path} has no complete run under runs/", "let `ppmech sweep` finish, then report"
        )
    return SweepSource(path=path, name=path.name, study=study, table=table, runs=runs, skipped=skipped)


def load_verify(path: Path) -> VerifySource:
    """A verify directory: ``claims.json`` and its core runs (``<model>-pretrained``, ``<model>-random``)."""
    if path.is_file():
        path = path.parent
    claims = _read_json(path / "claims.json")
    if not isinstance(claims, dict) or "claims" not in claims:
        raise PPMechError(f"{path / 'claims.json'} holds no ledger", "rerun `ppmech verify`")
    check(claims, CLAIMS_SCHEMA, path / "claims.json", "rerun `ppmech verify`")
    runs: dict[str, Run] = {}
    for model in claims.get("meta", {}).get("models", []):
        for condition in ("pretrained", "random"):
            run_dir = path / "runs" / f"{model}-{condition}"
            if (run_dir / "summary.json").is_file():
                runs[run_dir.name] = read_run(run_dir)
    return VerifySource(path=path, name=path.name, claims=claims, runs=runs)


def load_monitor_score(path: Path) -> MonitorScoreSource:
    """JSON lines of ``ppmech monitor score --json --tokens``; each record needs its ``tokens``."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PPMechError(f"{path} is not UTF-8 text", ACCEPTED) from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PPMechError(f"{path}:{lineno} is not valid JSON ({exc.msg})", ACCEPTED) from exc
        if not isinstance(record, dict) or not isinstance(record.get("tokens"), list):
            raise PPMechError(
                f"{path}:{lineno} has no per-token scores",
                "write it with `ppmech monitor score --json --tokens`",
            )
        fix = "write it with `ppmech monitor score --json --tokens`"
        check(record, SCORE_RECORD_SCHEMA, f"{path}:{lineno}", fix)
        records.append(record)
    if not records:
        raise PPMechError(
            f"{path} holds no scored text", "write it with `ppmech monitor score --json --tokens`"
        )
    return MonitorScoreSource(path=path, name=path.name, records=records)


def load_steer(path: Path) -> SteerSource:
    fix = "rerun `ppmech steer` with --overwrite"
    summary = _read_json(path / "summary.json")
    check(summary, STEER_SCHEMA, path / "summary.json", fix)
    try:
        steps = pd.read_parquet(path / "steps.parquet")
    except (OSError, pa.ArrowException) as exc:
        raise PPMechError(f"cannot read {path / 'steps.parquet'}: {exc}", fix) from exc
    check_columns(steps.columns, STEER_COLUMNS, path / "steps.parquet", fix)
    _numeric(steps, ("step", "H", "K", "V"), path / "steps.parquet", fix)
    return SteerSource(path=path, name=path.name, summary=summary, steps=steps)


def _numeric(frame: pd.DataFrame, columns: Sequence[str], path: Path, fix: str) -> None:
    """Refuse a column of ``columns`` with a value that is neither a number nor empty (one line)."""
    for col in columns:
        if col not in frame:
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise PPMechError(
                f"{path}: column {col}, row {row + 1}, is {str(frame[col].iloc[row])[:40]!r}, not a number",
                fix,
            )


def load_steering_eval(path: Path) -> SteeringEvalSource:
    fix = "rerun `ppmech evaluate-steering` with --overwrite"
    summary = _read_json(path / "summary.json")
    check(summary, STEERING_EVAL_SCHEMA, path / "summary.json", fix)
    try:
        items = pd.read_csv(path / "items.csv")
    except pd.errors.EmptyDataError as exc:
        raise PPMechError(f"{path / 'items.csv'} is empty (no header, no rows)", fix) from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PPMechError(f"cannot read {path / 'items.csv'}: {exc}", fix) from exc
    check_columns(items.columns, ITEMS_COLUMNS, path / "items.csv", fix)
    if items.empty:
        raise PPMechError(f"{path / 'items.csv'} holds no prompt (a header and no rows)", fix)
    _numeric(items, (*ITEMS_COLUMNS, "steps"), path / "items.csv", fix)
    return SteeringEvalSource(path=path, name=path.name, summary=summary, items=items)


def load_source(path: str | Path) -> Source:
    """Recognise and read one input (see the module docstring)."""
    p = Path(path)
    kind = detect(p)
    if kind == "run":
        run = read_run(p)
        return RunSource(path=p, name=p.name, run=run)
    if kind == "sweep":
        return load_sweep(p)
    if kind == "verify":
        return load_verify(p)
    if kind == "monitor-benchmark":
        data = _read_json(p)
        check(data, BENCHMARK_SCHEMA, p, "rewrite it with `ppmech monitor benchmark --json FILE`")
        return MonitorBenchmarkSource(path=p, name=p.name, data=data)
    if kind == "monitor-score":
        return load_monitor_score(p)
    if kind == "steer":
        return load_steer(p)
    return load_steering_eval(p)


def load_sources(paths: Sequence[str | Path]) -> list[Source]:
    """Read every input; run names are made unique (``name``, ``name (2)``, ...).

    Raises:
        PPMechError: an empty list, or any input that is not readable (see :func:`detect`).
    """
    if not paths:
        raise PPMechError("no inputs to report on", ACCEPTED)
    sources = [load_source(p) for p in paths]
    seen: dict[str, int] = {}
    for source in sources:
        base = source.name or str(source.path)
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            source.name = f"{base} ({seen[base]})"
    return sources
