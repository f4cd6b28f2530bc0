"""The report's "Sweep" section: Table 5, the paper's drift and ⟨|ΔH|⟩ against model size.

Runs share a Table 5 group when they are of one family (``model_type``) and every
setting that changes what is measured agrees except the model itself
(:func:`ppmech.claims.scaling.comparison_keys`). The correlation of each group is
:func:`ppmech.claims.scaling.scaling_from_runs`, the one the ledger and the sweep
use; this module only draws it. (A sweep's runs are also overlaid in the
trajectory figure: :func:`ppmech.report.figures.runs.energy_vs_step`.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.claims.scaling import Correlation, comparison_keys, protocol_differences, scaling_from_runs
from ppmech.errors import PPMechError
from ppmech.report.figures.common import color, need_runs, padded_range, with_meta
from ppmech.runs import Run

#: Table 5's statistics: summary key, short name, panel title with its unit.
SCALED = (
    ("drift", "drift", "drift = ΣΔH / Σ|ΔH|  [dimensionless]"),
    ("mean_abs_dH", "⟨|ΔH|⟩", "⟨|ΔH|⟩  [nats]"),
)
#: Sizes a correlation needs (:func:`ppmech.claims.scaling.scaling_correlation`).
MIN_SIZES = 3


@dataclass
class ScalingGroup:
    """Runs that differ only in the model: one Table 5 line.

    Attributes:
        label: family and weights (and the settings that set it apart from a
            group of the same family and weights, if any).
        runs: run names, by parameter count.
        sizes: distinct parameter counts.
        correlations: per statistic of :data:`SCALED`, the correlation or why there is none.
    """

    label: str
    runs: list[str]
    sizes: int
    correlations: dict[str, Correlation | str] = field(default_factory=dict)


def scaling_frame(runs: Mapping[str, Run]) -> pd.DataFrame:
    """One row per run: name, model, family (``model_type``), weights, parameters, Table 5 statistics."""
    rows = []
    for name, run in runs.items():
        stats = run.summary.get("statistics", {})
        row: dict[str, Any] = {
            "run": name,
            "model": run.model.get("spec", run.config.get("model")),
            "family": str(run.model.get("model_type")),
            "weights": run.config.get("weights", run.model.get("weights")),
            "parameters": run.model.get("num_parameters"),
        }
        row.update({key: stats.get(key) for key, _, _ in SCALED})
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_groups(runs: Mapping[str, Run]) -> list[ScalingGroup]:
    """The Table 5 groups of ``runs`` with each statistic's correlation (see the module docstring)."""
    keys = comparison_keys()
    by_key: dict[tuple[str, str], list[str]] = {}
    for name, run in runs.items():
        protocol = json.dumps({k: run.config.get(k) for k in keys}, sort_keys=True, default=str)
        by_key.setdefault((str(run.model.get("model_type")), protocol), []).append(name)
    groups = []
    for (family, _), names in sorted(by_key.items()):
        names.sort(key=lambda n: float(runs[n].model.get("num_parameters") or 0))
        weights = runs[names[0]].config.get("weights", runs[names[0]].model.get("weights"))
        extra = ""
        twins = [
            ns
            for (f, _), ns in by_key.items()
            if f == family and runs[ns[0]].config.get("weights") == runs[names[0]].config.get("weights")
        ]
        if len(twins) > 1:  # the same family and weights, measured differently: name the difference
            differing = protocol_differences([runs[ns[0]].config for ns in twins])
            extra = "".join(f", {k}={runs[names[0]].config.get(k)}" for k in differing)
        label = f"{family} ({weights}{extra})"
        sizes = len({runs[n].model.get("num_parameters") for n in names})
        group = ScalingGroup(label=label, runs=names, sizes=sizes)
        for key, _, _ in SCALED:
            if sizes < MIN_SIZES:
                group.correlations[key] = f"{sizes} size{'s' * (sizes != 1)}"
                continue
            try:
                _, corr = scaling_from_runs([runs[n] for n in names], key)
                group.correlations[key] = corr
            except PPMechError as exc:
                group.correlations[key] = exc.problem
        groups.append(group)
    return groups


def _corr_text(value: Correlation | str) -> str:
    if isinstance(value, Correlation):
        return f"r = {value.r:.3f}, p = {value.p:.3g}"
    return f"no r ({value})"


def scaling_rows(groups: list[ScalingGroup]) -> list[dict[str, Any]]:
    """One table row per group: its runs, sizes, and r and p of each Table 5 statistic."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {"group": g.label, "sizes": g.sizes, "runs": ", ".join(g.runs)}
        for key, _, _ in SCALED:
            value = g.correlations[key]
            row[f"{key} r"] = value.r if isinstance(value, Correlation) else None
            row[f"{key} p"] = value.p if isinstance(value, Correlation) else None
        if g.sizes < MIN_SIZES:
            row["note"] = f"needs {MIN_SIZES} sizes for r"
        else:
            row["note"] = "; ".join(v for v in g.correlations.values() if isinstance(v, str))
        rows.append(row)
    return rows


def scaling(runs: Mapping[str, Run], groups: list[ScalingGroup] | None = None) -> go.Figure:
    """Table 5: drift and ⟨|ΔH|⟩ against parameter count, one line per group, r and p in the legend."""
    need_runs(runs)
    frame = scaling_frame(runs).set_index("run")
    if frame["parameters"].isna().all():
        raise PPMechError("these runs record no parameter count", "re-record them with this ppmech")
    groups = scaling_groups(runs) if groups is None else groups
    fig = make_subplots(
        rows=1, cols=len(SCALED), subplot_titles=[title for _, _, title in SCALED], horizontal_spacing=0.1
    )
    extent: dict[str, list[float | None]] = {key: [] for key, _, _ in SCALED}
    for i, g in enumerate(groups):
        part = frame.loc[g.runs]
        pretrained = str(part["weights"].iloc[0]) == "pretrained"
        rs = [
            f"{short}: {_corr_text(g.correlations[k])}"
            for k, short, _ in SCALED
            if isinstance(g.correlations[k], Correlation)
        ]
        name = f"{g.label}, {g.sizes} size{'s' * (g.sizes != 1)}" + (f" ({'; '.join(rs)})" if rs else "")
        for col, (key, short, _) in enumerate(SCALED, start=1):
            y = part[key].to_numpy(dtype=float)
            extent[key] += list(y)
            fig.add_trace(
                go.Scatter(
                    x=part["parameters"].to_numpy(dtype=float),
                    y=y,
                    mode="lines+markers",
                    marker=dict(size=9, color=color(i), symbol="circle" if pretrained else "x"),
                    line=dict(color=color(i), dash="solid" if pretrained else "dot"),
                    name=name,
                    legendgroup=g.label,
                    showlegend=col == 1,
                    text=list(part.index),
                    hovertemplate="%{text}<br>%{x:.3s} parameters<br>"
                    + short
                    + " %{y:.4f}<br>"
                    + _corr_text(g.correlations[key])
                    + "<extra></extra>",
                ),
                row=1,
                col=col,
            )
    params = frame["parameters"].to_numpy(dtype=float)
    for col, (key, _, _) in enumerate(SCALED, start=1):
        fig.update_xaxes(
            type="log", title_text="parameters", range=padded_range(params, log=True), row=1, col=col
        )
        fig.update_yaxes(range=padded_range(extent[key]), row=1, col=col)
    few = [g for g in groups if g.sizes < MIN_SIZES]
    caption = (
        "Table 5 of the paper: each run's drift ΣΔH/Σ|ΔH| (dimensionless, from −1 to 1: the share of H's "
        "step changes that add up rather than cancel) and mean step change ⟨|ΔH|⟩ (nats), from its "
        "summary.json, against its parameter count (log scale). One line per group of runs that differ only "
        "in the model (same family and every measuring setting; solid: pretrained, dotted: random); the "
        "legend gives each group's Pearson r and two-sided p per statistic, and the table below its runs."
    )
    if few:
        caption += (
            f" A correlation needs at least {MIN_SIZES} model sizes; these groups have fewer, so they are "
            "drawn without r: " + ", ".join(f"{g.label} ({g.sizes})" for g in few) + "."
        )
    with_meta(fig, "Table 5: drift and ⟨|ΔH|⟩ against model size", caption, 480 + 24 * len(groups))
    # The legend names carry r and p: below the panels, where they have the page's width.
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0))
    return fig
