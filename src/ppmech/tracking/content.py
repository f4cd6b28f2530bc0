"""What a tracked run holds, read from what ppmech stored: never from a live run, never a model.

One :class:`Record` per tracked run, the same for every tracker:

* **params**: the resolved config (``summary.json``'s ``config``, which ``config.toml`` repeats
  for ``--config``) and the model's identity (``identity.*``: parameters, layers, weight hash, ...).
* **metrics**: every statistic of ``summary.json`` and each CI's bounds (``global_cv_ci_low``, ...).
* **steps**: H, K and V at each step, as the median and the interquartile range (``H/q25``,
  ``H/q75``) across trajectories, over finite values only (K and H are null at step 0 and K is
  ``-inf`` at a zero velocity), in float64.
* **artifacts**: ``summary.json``, ``config.toml`` and the run's report page ``report.html``, the
  ones the run has.

A study (``ppmech sweep``) is a parent record with one child per grid point; a ledger
(``ppmech verify``) is one record with its verdict counts and measurements.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppmech.errors import PPMechError

TERMS = ("H", "K", "V")
"""The energy terms logged per step."""

QUANTILES = {"median": 0.5, "q25": 0.25, "q75": 0.75}
"""Step-metric suffix -> quantile across trajectories (q25 and q75 bound the IQR)."""

RUN_ARTIFACTS = ("summary.json", "config.toml", "report.html")
"""Files of a run directory logged as artifacts, where present."""

STUDY_ARTIFACTS = ("study.json", "study.parquet", "tables.md", "config.toml", "report.html")
LEDGER_ARTIFACTS = ("claims.json", "claims.md", "config.toml", "report.html")

_KEY = re.compile(r"[^\w./\- :]")


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys replaced by ``_``."""
    return _KEY.sub("_", name)


@dataclass
class Record:
    """One tracked run, tracker-neutral.

    Attributes:
        name: the run's display name (its directory's name).
        kind: ``measure``, ``steer``, ``study`` or ``verify``.
        path: the directory it was read from.
        params: flat ``key -> value`` (str, int, float, bool or None).
        metrics: flat ``key -> float``, all finite.
        steps: one row per step (index: step, 0-based int), columns ``"{term}/{quantile}"``;
            NaN where a step has no finite value.
        artifacts: files to upload, all existing.
        tags: ``key -> str`` (path, ppmech version, device, ...).
        failed: the grid point failed (a sweep child with no complete run); ``error`` says why.
    """

    name: str
    kind: str
    path: Path
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    failed: bool = False
    error: str | None = None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined with ``.``; lists and tuples as JSON text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _finite(value: Any) -> float | None:
    """A real number as float, or ``None`` (bools, text, None, NaN and infinities are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def statistic_metrics(statistics: Mapping[str, Any]) -> dict[str, float]:
    """``summary.json``'s statistics as metrics: each number, and each CI as ``{name}_low/_high``.

    A CI entry (``global_cv_ci: {value, low, high, n, note}``) gives ``global_cv_ci_low`` and
    ``global_cv_ci_high``; its value is the statistic itself, already logged.
    """
    out: dict[str, float] = {}
    for key, value in statistics.items():
        if isinstance(value, Mapping):
            for side in ("low", "high"):
                bound = _finite(value.get(side))
                if bound is not None:
                    out[f"{key}_{side}"] = bound
            continue
        number = _finite(value)
        if number is not None:
            out[key] = number
    return out


def step_quantiles(steps: pd.DataFrame, terms: tuple[str, ...] = TERMS) -> pd.DataFrame:
    """Median and IQR bounds of each term across trajectories at each step (float64).

    Args:
        steps: ``steps.parquet`` rows (``step`` and the ``terms`` columns).

    Returns:
        index ``step`` (int), columns ``"{term}/{median|q25|q75}"``; only finite values count,
        so a step where a term is null or infinite in every trajectory is NaN there.
    """
    frame = steps[["step", *terms]].astype({t: np.float64 for t in terms})
    frame[list(terms)] = frame[list(terms)].where(np.isfinite(frame[list(terms)]))
    grouped = frame.groupby("step", sort=True)
    columns = {f"{term}/{name}": grouped[term].quantile(q) for term in terms for name, q in QUANTILES.items()}
    out = pd.DataFrame(columns).astype(np.float64)
    out.index = out.index.astype(int)
    return out


def _config(root: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config: ``summary.json``'s ``config`` (every setting, unset ones as null),
    else ``config.toml`` (the same settings, in the file ``--config`` reads back; TOML has no
    null, so it leaves unset ones out)."""
    if isinstance(summary.get("config"), Mapping):
        return dict(summary["config"])
    path = root / "config.toml"
    if path.is_file():
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PPMechError(
                f"{path} is not valid TOML ({exc})", "rewrite it with the ppmech command"
            ) from exc
    return {}


def _present(root: Path, names: tuple[str, ...]) -> list[Path]:
    return [root / n for n in names if (root / n).is_file()]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PPMechError(f"{path} is not valid JSON", "rewrite it with the ppmech command") from exc


def _common_tags(root: Path, summary: Mapping[str, Any], kind: str) -> dict[str, str]:
    tags = {"ppmech.kind": kind, "ppmech.path": str(root.resolve())}
    version = (summary.get("versions") or {}).get("ppmech")
    if version:
        tags["ppmech.version"] = str(version)
    for key in ("device", "name", "decode"):
        value = (summary.get("execution") or {}).get(key)
        if value is not None:
            tags[f"ppmech.execution.{key}"] = str(value)
    if summary.get("created"):
        tags["ppmech.created"] = str(summary["created"])
    return tags


def _identity(summary: Mapping[str, Any]) -> dict[str, Any]:
    model = dict(summary.get("model") or {})
    model.pop("source", None)  # a cache path on the recording machine, not an identity
    return flatten(model, "identity.")


def run_record(path: str | Path) -> Record:
    """The record of a ``measure`` run directory, or of a ``steer`` output.

    A measure run is read through :func:`ppmech.runs.load_run`, which checks every data file
    against ``summary.json``. A steer output's steps are logged per trace (``natural/H/median``,
    ``steered/H/median``, ...) and its energy comparison as metrics.

    Raises:
        PPMechError: not a complete run (the reader's own one-line message).
    """
    root = Path(path)
    summary_path = root / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else None
    if isinstance(summary, dict) and summary.get("kind") == "steer":
        return _steer_record(root, summary)
    from ppmech.runs import load_run

    run = load_run(root)
    return Record(
        name=root.resolve().name,
        kind="measure",
        path=root,
        params=flatten(_config(root, run.summary)) | _identity(run.summary),
        metrics=statistic_metrics(run.summary.get("statistics") or {}),
        steps=step_quantiles(run.steps),
        artifacts=_present(root, RUN_ARTIFACTS),
        tags=_common_tags(root, run.summary, "measure"),
    )


def _steer_record(root: Path, summary: dict[str, Any]) -> Record:
    from ppmech import artifacts

    fix = "rerun `ppmech steer` with --overwrite"
    described = (summary.get("files") or {}).get("steps.parquet")
    if isinstance(described, dict):
        artifacts.verify_file(root, "steps.parquet", described, fix)
    try:
        steps = pd.read_parquet(root / "steps.parquet")
    except Exception as exc:  # pyarrow's and the OS's errors alike: one line
        raise PPMechError(f"cannot read {root / 'steps.parquet'}: {exc}", fix) from exc
    per_trace = [
        step_quantiles(group).add_prefix(f"{trace}/") for trace, group in steps.groupby("trace", sort=True)
    ]
    metrics: dict[str, float] = {}
    for row in summary.get("comparison") or []:
        trace = str(row.get("trace", "trace"))
        for key, value in row.items():
            number = _finite(value)
            if number is not None:
                metrics[f"{trace}/{_steer_metric_name(key)}"] = number
    return Record(
        name=root.resolve().name,
        kind="steer",
        path=root,
        params=flatten(_config(root, summary)) | _identity(summary),
        metrics=metrics,
        steps=pd.concat(per_trace, axis=1) if per_trace else pd.DataFrame(),
        artifacts=_present(root, RUN_ARTIFACTS),
        tags=_common_tags(root, summary, "steer"),
    )


_STEER_WORDS = {"|dH|": "abs_dH", "‖δh‖": "delta_h_norm", "CV(E)": "cv_E", "η": "eta"}


def _steer_metric_name(column: str) -> str:
    """A column of the steer energy comparison as a plain metric name (``mean |dH|`` -> ``mean_abs_dH``)."""
    for word, plain in _STEER_WORDS.items():
        column = column.replace(word, plain)
    return metric_key(column.replace(" ", "_"))


def study_records(path: str | Path) -> tuple[Record, list[Record]]:
    """A ``ppmech sweep`` study directory: the parent record and one child per grid point.

    The grid is ``study.parquet`` (every run, with its status); a complete run is read from
    ``runs/<name>/`` by :func:`run_record`, a failed or unfinished one is a child marked failed,
    with its error and the config the study gave it. Without ``study.parquet`` (an older or
    interrupted study) every run directory under ``runs/`` with a ``summary.json`` is a child.

    Raises:
        PPMechError: not a study directory, or a complete run whose files are damaged.
    """
    root = Path(path)
    if not (root / "study.json").is_file() and not (root / "study.parquet").is_file():
        raise PPMechError(f"{root} is not a ppmech sweep study (no study.json)", "pass a study directory")
    study = _read_json(root / "study.json") if (root / "study.json").is_file() else {}
    name = str(study.get("name") or root.resolve().name)
    children: list[Record] = []
    if (root / "study.parquet").is_file():
        table = pd.read_parquet(root / "study.parquet")
        for row in table.to_dict("records"):
            stored = row.get("path")
            run_dir = root / (stored if isinstance(stored, str) and stored else f"runs/{row['run']}")
            if row.get("status") == "complete":
                children.append(run_record(run_dir))
                continue
            config_keys = [k for k in row if k not in ("run", "status", "reused", "error", "path")]
            children.append(
                Record(
                    name=str(row["run"]),
                    kind="measure",
                    path=run_dir,
                    params={k: _plain(row[k]) for k in config_keys if _plain(row[k]) is not None},
                    tags={"ppmech.kind": "measure", "ppmech.status": str(row.get("status"))},
                    failed=True,
                    error=str(row.get("error") or row.get("status")),
                )
            )
    else:
        runs = root / "runs"
        for sub in sorted(runs.iterdir() if runs.is_dir() else []):
            if (sub / "summary.json").is_file():
                children.append(run_record(sub))
    complete = sum(not c.failed for c in children)
    parent = Record(
        name=name,
        kind="study",
        path=root,
        params=flatten({k: v for k, v in study.items() if k not in ("runs", "grid", "versions")}),
        metrics={"runs": float(len(children)), "runs_complete": float(complete)},
        artifacts=_present(root, STUDY_ARTIFACTS),
        tags=_common_tags(root, study, "study"),
    )
    return parent, children


def _plain(value: Any) -> Any:
    """A study.parquet cell as a plain Python value (numpy scalars, pandas NA -> None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def ledger_record(path: str | Path) -> Record:
    """A ``ppmech verify`` ledger (its directory or ``claims.json``).

    Metrics: the verdict counts (``verdicts/supported``, ``verdicts/not_supported``,
    ``verdicts/inconclusive``), each claim's measured value (``claims/{id}/{model}``) and each
    measurement with its CI (``measurements/{name}``, ``..._low``, ``..._high``). Tags: each
    claim's verdict (``verdict/{id}/{model}``). Params: the ledger's settings (``meta``).

    Raises:
        PPMechError: no ``claims.json``, or one that holds no ledger.
    """
    root = Path(path)
    if root.is_file():
        root = root.parent
    claims_path = root / "claims.json"
    if not claims_path.is_file():
        raise PPMechError(f"{root} holds no claims ledger (claims.json)", "pass a `ppmech verify` directory")
    ledger = _read_json(claims_path)
    if not isinstance(ledger, dict) or not isinstance(ledger.get("claims"), list):
        raise PPMechError(f"{claims_path} holds no ledger", "rerun `ppmech verify`")
    meta = dict(ledger.get("meta") or {})
    metrics = {f"verdicts/{k.replace(' ', '_')}": float(v) for k, v in (ledger.get("verdicts") or {}).items()}
    tags = _common_tags(root, meta, "verify")
    for claim in ledger["claims"]:
        label = metric_key(f"{claim.get('id')}/{claim.get('model')}")
        tags[f"verdict/{label}"] = str(claim.get("verdict"))
        value = _finite(claim.get("value"))
        if value is not None:
            metrics[f"claims/{label}"] = value
    for name, est in (ledger.get("measurements") or {}).items():
        key = metric_key(f"measurements/{name}")
        for suffix, field_name in (("", "value"), ("_low", "low"), ("_high", "high")):
            number = _finite(est.get(field_name)) if isinstance(est, dict) else None
            if number is not None:
                metrics[key + suffix] = number
    params = flatten({k: v for k, v in meta.items() if k not in ("runs", "versions", "created", "command")})
    if meta.get("command"):
        tags["ppmech.command"] = str(meta["command"])
    return Record(
        name=root.resolve().name,
        kind="verify",
        path=root,
        params=params,
        metrics=metrics,
        artifacts=_present(root, LEDGER_ARTIFACTS),
        tags=tags,
    )
