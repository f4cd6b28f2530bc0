"""What a sweep leaves in its study directory, besides the runs.

Layout (read by other tools, e.g. the HTML report; keep it stable)::

    OUT/study.json      the study as parsed, its grid, versions, created/updated
    OUT/study.parquet   one row per run of the grid (see STUDY_COLUMNS)
    OUT/tables.md       Table 1-, 2-, 4- and 5-style tables, and the failed runs
    OUT/runs/<run>/     complete ``ppmech measure`` run directories

Every statistic comes from the runs' own ``summary.json`` (their definitions are
in :mod:`ppmech.statistics`; H = K + V in nats). Table 5 goes through
:func:`ppmech.claims.scaling.scaling_from_runs` (pure: it reads stored runs only), and
its groups are runs that agree on every PROTOCOL setting but the model
(:func:`ppmech.claims.scaling.comparison_keys`). Every file is written through
:mod:`ppmech.artifacts` (atomic: a reader sees the old file or the new one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppmech.artifacts import write_json, write_parquet, write_text
from ppmech.claims.scaling import comparison_keys, scaling_from_runs
from ppmech.errors import PPMechError
from ppmech.measure import MeasureConfig
from ppmech.provenance import json_safe, versions
from ppmech.runs import load_run
from ppmech.sweep.names import setting_tokens
from ppmech.sweep.study import Study
from ppmech.tables import fmt, markdown_table


@dataclass
class RunOutcome:
    """What happened to one run of the grid (a row of ``study.parquet``).

    Attributes:
        status: ``complete``, ``failed``, ``interrupted`` (the sweep was stopped
            before it finished) or ``pending`` (not started yet).
        reused: complete from an earlier sweep, not recorded again.
        reanalysed: reused with its statistics recomputed from its stored steps.
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
    reanalysed: bool = False
    error: str | None = None
    summary: dict[str, Any] | None = None
    node_id: str | None = None
    pids: list[int] = field(default_factory=list)
    wall_seconds: float | None = None


#: Per-run statistics copied from ``summary.json`` (see :mod:`ppmech.statistics`).
STAT_KEYS = (
    "n_trajectories",
    "n_steps",
    "n_valid",
    "n_zero_velocity",
    "global_cv",
    "mean_trajectory_cv",
    "trajectory_mean_cv",
    "mean_energy",
    "mean_K",
    "mean_V",
    "kv_ratio",
    "mean_dH",
    "mean_abs_dH",
    "drift",
)
CI_KEYS = ("global_cv", "mean_energy")
#: Metrics correlated with parameter count in the Table 5-style table ("drift" is the paper's Energy Drift).
TABLE5_METRICS = ("drift", "mean_abs_dH", "global_cv", "mean_energy")


def _config_columns() -> list[str]:
    return [f.name for f in dataclasses.fields(MeasureConfig)]


def study_columns() -> list[str]:
    """Columns of ``study.parquet``, in order."""
    return [
        "run",
        "status",
        "reused",
        "reanalysed",
        "error",
        "path",
        *_config_columns(),
        "parameters",
        "family",
        "num_layers",
        "hidden_size",
        "model_key",
        "source_hash",
        *STAT_KEYS,
        *(f"{k}_{side}" for k in CI_KEYS for side in ("low", "high")),
        "device_used",
        "device_name",
        "node_id",
        "attempts",
        "wall_seconds",
        "created",
    ]


def _model_key(model: dict[str, Any]) -> str | None:
    from ppmech.models.identity import ModelIdentity

    names = {f.name for f in dataclasses.fields(ModelIdentity)}
    try:
        return ModelIdentity(**{k: v for k, v in model.items() if k in names}).key
    except TypeError:
        return None


def _row(o: RunOutcome) -> dict[str, Any]:
    summary = o.summary or {}
    stats = summary.get("statistics", {})
    model = summary.get("model", {})
    config = o.config.to_dict()
    row: dict[str, Any] = {
        "run": o.name,
        "status": o.status,
        "reused": o.reused,
        "reanalysed": o.reanalysed,
        "error": o.error,
        "path": f"runs/{o.name}" if o.status == "complete" else None,
        **config,
        "parameters": model.get("num_parameters"),
        "family": model.get("model_type"),
        "num_layers": model.get("num_layers"),
        "hidden_size": model.get("hidden_size"),
        "model_key": _model_key(model) if model else None,
        "source_hash": model.get("source_hash"),
    }
    for key in STAT_KEYS:
        row[key] = stats.get(key)
    for key in CI_KEYS:
        ci = stats.get(f"{key}_ci") or {}
        row[f"{key}_low"] = ci.get("low")
        row[f"{key}_high"] = ci.get("high")
    # `device` (a config column) is what was asked for, e.g. "auto"; this is what the run used.
    execution = summary.get("execution") or {}
    row["device_used"] = execution.get("device")
    row["device_name"] = execution.get("name")
    row["node_id"] = o.node_id
    row["attempts"] = len(o.pids) or None
    row["wall_seconds"] = o.wall_seconds
    row["created"] = summary.get("created")
    return row


def study_frame(outcomes: list[RunOutcome]) -> pd.DataFrame:
    """One row per run; integer columns are nullable (``Int64``), statistics float64 (NaN = undefined)."""
    frame = pd.DataFrame([_row(o) for o in outcomes], columns=study_columns())
    hints = typing.get_type_hints(MeasureConfig)
    ints = [k for k in _config_columns() if int in (typing.get_args(hints[k]) or (hints[k],))]
    ints = [k for k in ints if hints[k] is not bool]
    # A field that also takes a word (batch_size: a number or "auto") is stored as text.
    mixed = [k for k in ints if str in typing.get_args(hints[k])]
    ints = [k for k in ints if k not in mixed]
    for col in mixed:
        frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    for col in [*ints, "parameters", "num_layers", "hidden_size", "attempts", *STAT_KEYS[:4]]:
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    floats = [k for k in _config_columns() if float in (typing.get_args(hints[k]) or (hints[k],))]
    floats += [*STAT_KEYS[4:], *(f"{k}_{s}" for k in CI_KEYS for s in ("low", "high")), "wall_seconds"]
    for col in floats:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["reused"] = frame["reused"].astype(bool)
    frame["reanalysed"] = frame["reanalysed"].astype(bool)
    return frame


def write_study_json(out: Path, study: Study) -> None:
    """``study.json``: the study as parsed, its grid, versions; ``created`` survives reruns."""
    path = out / "study.json"
    created = None
    if path.is_file():
        try:
            created = json.loads(path.read_text()).get("created")
        except (OSError, ValueError):
            created = None
    from ppmech.sweep.cluster import ray_version

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(
        path,
        json_safe(
            {
                **study.to_dict(),
                "versions": {**versions(), "ray": ray_version()},
                "created": created or now,
                "updated": now,
            }
        ),
    )


def read_previous(out: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier ``study.parquet``, by run name (empty if none or unreadable)."""
    path = out / "study.parquet"
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
    except Exception:  # an unreadable earlier table only loses node ids and wall times
        return {}
    return {str(r["run"]): r for r in frame.to_dict("records")}


def carry_forward(o: RunOutcome, row: dict[str, Any] | None) -> None:
    """Keep the node id and wall time a reused run was recorded with (same run: same ``created``)."""
    if not row or o.summary is None or row.get("created") != o.summary.get("created"):
        return
    node = row.get("node_id")
    o.node_id = None if node is None or (isinstance(node, float) and math.isnan(node)) else str(node)
    wall = row.get("wall_seconds")
    o.wall_seconds = None if wall is None or pd.isna(wall) else float(wall)
    attempts = row.get("attempts")
    if attempts is not None and not pd.isna(attempts):
        o.pids = [0] * int(attempts)  # pids of an earlier sweep mean nothing now; keep the count


# --------------------------------------------------------------------------- tables


def _params(n: Any) -> str:
    if n is None or pd.isna(n):
        return "—"
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _ci(low: Any, high: Any, digits: int = 3) -> str:
    if pd.isna(low) or pd.isna(high):
        return "—"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _done(frame: pd.DataFrame) -> pd.DataFrame:
    done = frame[frame["status"] == "complete"]
    order = {"pretrained": 0, "random": 1}
    return done.iloc[np.argsort([order.get(w, 2) for w in done["weights"]], kind="stable")]


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 1 style: global CV, mean trajectory CV and mean H per run, with medians (as in the paper)."""
    done = _done(frame)
    rows = [
        {
            "run": r["run"],
            "weights": r["weights"],
            "params": _params(r["parameters"]),
            "global CV": r["global_cv"],
            "global CV 95% CI": _ci(r["global_cv_low"], r["global_cv_high"]),
            "avg traj CV": r["mean_trajectory_cv"],
            "mean H": r["mean_energy"],
            "mean H 95% CI": _ci(r["mean_energy_low"], r["mean_energy_high"], 2),
        }
        for r in done.to_dict("records")
    ]
    groups = [("all", done)] + [(w, done[done["weights"] == w]) for w in ("pretrained", "random")]
    for label, part in groups:
        if len(part) and (label == "all" or len(part) < len(done)):
            rows.append(
                {
                    "run": f"Median ({label})",
                    "weights": "",
                    "params": "",
                    "global CV": float(part["global_cv"].median()),
                    "global CV 95% CI": "",
                    "avg traj CV": float(part["mean_trajectory_cv"].median()),
                    "mean H": float(part["mean_energy"].median()),
                    "mean H 95% CI": "",
                }
            )
    columns = [
        "run",
        "weights",
        "params",
        "global CV",
        "global CV 95% CI",
        "avg traj CV",
        "mean H",
        "mean H 95% CI",
    ]
    out = pd.DataFrame(rows, columns=columns)
    for col in ("global CV", "avg traj CV", "mean H"):
        out[col] = out[col].astype("float64")
    return out


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 2 style: the K/V ratio by weights (mean and median over runs), with mean K and V."""
    done = _done(frame)
    rows = []
    for weights, part in done.groupby("weights", sort=False):
        rows.append(
            {
                "weights": weights,
                "runs": len(part),
                "mean K/V": float(part["kv_ratio"].mean()),
                "median K/V": float(part["kv_ratio"].median()),
                "mean K": float(part["mean_K"].mean()),
                "mean V": float(part["mean_V"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=["weights", "runs", "mean K/V", "median K/V", "mean K", "mean V"])


def table4(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 4 style: local conservation of H, median over runs by weights."""
    done = _done(frame)
    rows = []
    for weights, part in done.groupby("weights", sort=False):
        rows.append(
            {
                "weights": weights,
                "runs": len(part),
                "median <dH>": float(part["mean_dH"].median()),
                "median <|dH|>": float(part["mean_abs_dH"].median()),
                "median drift": float(part["drift"].median()),
            }
        )
    return pd.DataFrame(rows, columns=["weights", "runs", "median <dH>", "median <|dH|>", "median drift"])


def protocol_label(config: MeasureConfig) -> str:
    """The settings of a run besides its model and weights, as in its name (``paper`` if all default)."""
    return "-".join(setting_tokens(config)) or "paper"


def family_groups(frame: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Complete runs grouped by family (``model_type``) and every setting but the model.

    Returns:
        ``(description, runs)`` pairs; the description has ``family``, ``weights``,
        ``protocol`` (as in run names) and ``sizes`` (parameter counts).
    """
    done = frame[(frame["status"] == "complete") & frame["family"].notna()]
    keys = list(comparison_keys())
    if not len(done):
        return []
    grouping = pd.Series(
        # .get: a study.parquet written before a setting existed has no column for it.
        ["\x00".join(str(r.get(k)) for k in ["family", *keys]) for r in done.to_dict("records")],
        index=done.index,
    )
    groups = []
    for _, part in done.groupby(grouping, sort=False):
        first = part.iloc[0]
        config = MeasureConfig(**{k: _py(first[k]) for k in _config_columns() if k in first})
        description = {
            "family": first["family"],
            "weights": first["weights"],
            "protocol": protocol_label(config),
            "sizes": ", ".join(_params(p) for p in sorted(part["parameters"].dropna().unique())),
        }
        groups.append((description, part))
    return groups


def table5(out: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Table 5 style: Pearson r of each metric with parameter count, per family and protocol.

    A group is the complete runs of one family (``model_type``) whose settings
    differ only in the model (:func:`family_groups`). Groups with 3 or more sizes
    get a correlation (through :func:`ppmech.claims.scaling.scaling_from_runs`); groups
    with 2 sizes are listed with a note (r = ±1 trivially, no p-value).
    """
    rows: list[dict[str, Any]] = []
    for base, part in family_groups(frame):
        n_sizes = part["parameters"].nunique()
        if n_sizes < 2:
            continue
        if n_sizes < 3:
            rows.append(
                {
                    **base,
                    "metric": "—",
                    "n": len(part),
                    "r": None,
                    "p": None,
                    "note": "needs ≥ 3 sizes (2 sizes give r = ±1, no p-value)",
                }
            )
            continue
        runs = [load_run(out / str(path)) for path in part["path"]]
        for metric in TABLE5_METRICS:
            try:
                _, corr = scaling_from_runs(runs, metric)
            except PPMechError as exc:
                rows.append(
                    {**base, "metric": metric, "n": len(part), "r": None, "p": None, "note": exc.problem}
                )
                continue
            rows.append({**base, "metric": metric, "n": corr.n, "r": corr.r, "p": corr.p, "note": ""})
    columns = ["family", "weights", "protocol", "sizes", "metric", "n", "r", "p", "note"]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("r", "p"):
        table[col] = table[col].astype("float64")
    return table


def _py(value: Any) -> Any:
    """A parquet/pandas scalar back to the Python value a MeasureConfig field holds."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    bad = frame[frame["status"] != "complete"]
    return pd.DataFrame({"run": bad["run"], "status": bad["status"], "error": bad["error"].fillna("")})


def counts_line(frame: pd.DataFrame) -> str:
    n = len(frame)
    complete = int((frame["status"] == "complete").sum())
    reused = int((frame["reused"] & (frame["status"] == "complete")).sum())
    reanalysed = int((frame["reanalysed"] & (frame["status"] == "complete")).sum())
    failed = int((frame["status"] == "failed").sum())
    other = n - complete - failed
    again = f"{reanalysed} re-analysed from stored steps, " if reanalysed else ""
    text = (
        f"{n} runs: {complete} complete ({reused} reused, {again}{complete - reused} recorded now), "
        f"{failed} failed"
    )
    return text + (f", {other} not finished (interrupted)" if other else "")


def render_markdown(study: Study, frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> str:
    lines = [
        f"# Study {study.name}",
        "",
        f"Source: `{study.source}`"
        + (f" with {', '.join(f'`--set {o}`' for o in study.overrides)}" if study.overrides else "")
        + f". {counts_line(frame)}.",
        "",
        "H = K + V in nats per step (K = ln ½‖h_t − h_{t−1}‖², V = −ln p(x_t)); CVs are std/mean over "
        "valid steps; 95% CIs are trajectory bootstraps. Each run's settings are in `study.parquet` "
        "and its `runs/<run>/summary.json`.",
        "",
        "## Table 1 style: conservation per run",
        "",
        markdown_table(tables["table1"]),
        "",
        "## Table 2 style: K/V by weights (over runs)",
        "",
        markdown_table(tables["table2"]),
        "",
        "## Table 4 style: local conservation of H (median over runs)",
        "",
        markdown_table(tables["table4"], digits=4),
        "",
        "## Table 5 style: correlation with parameter count within a family",
        "",
    ]
    if len(tables["table5"]):
        lines += [
            "Pearson r (two-sided p) of each run statistic against parameter count, over runs of one "
            "family (`model_type`) that differ only in the model. `drift` is the paper's Energy Drift "
            "(ΣΔH/Σ|ΔH|); the paper's 'Efficiency' is undefined there.",
            "",
            markdown_table(tables["table5"], digits=4),
        ]
    else:
        lines.append("No family has two or more sizes measured with the same settings.")
    if len(tables["failures"]):
        lines += ["", "## Runs not complete", "", markdown_table(tables["failures"])]
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path, study: Study, outcomes: list[RunOutcome], final: bool = True
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Write ``study.parquet`` (always) and ``tables.md`` (when ``final``)."""
    frame = study_frame(outcomes)
    write_parquet(out / "study.parquet", frame)
    if not final:
        return frame, {}
    tables = {
        "table1": table1(frame),
        "table2": table2(frame),
        "table4": table4(frame),
        "table5": table5(out, frame),
        "failures": failures(frame),
    }
    write_text(out / "tables.md", render_markdown(study, frame, tables))
    return frame, tables


__all__ = ["fmt", "study_columns", "study_frame", "table1", "table2", "table4", "table5", "write_outputs"]
