"""The report's "Monitor benchmark" section: detection per method and shifted set, ROC curves.

Drawn from the JSON of ``ppmech monitor benchmark --json`` (its ``scores`` table and the
per-text scores under ``text_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.errors import PPMechError
from ppmech.report.figures.common import color, with_meta


def monitor_detection(data: Mapping[str, Any]) -> go.Figure:
    """AUROC and TPR at 5% FPR of each detector on each shifted set, as two heatmaps."""
    scores = pd.DataFrame(data.get("scores", []))
    if scores.empty:
        raise PPMechError("the monitor benchmark holds no scores", "rerun `ppmech monitor benchmark --json`")
    methods = list(dict.fromkeys(scores["method"]))
    sets = list(dict.fromkeys(scores["set"]))
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, subplot_titles=["AUROC", "TPR at 5% FPR"], horizontal_spacing=0.03
    )
    for col, metric in enumerate(("auroc", "tpr_at_5fpr"), start=1):
        grid = scores.pivot(index="method", columns="set", values=metric).reindex(index=methods, columns=sets)
        z = grid.to_numpy(dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=sets,
                y=methods,
                zmin=0,
                zmax=1,
                colorscale="RdBu",
                showscale=col == 2,
                text=np.vectorize(lambda v: "—" if np.isnan(v) else f"{v:.2f}")(z),
                texttemplate="%{text}",
                hovertemplate="%{y}<br>%{x}<br>" + metric + " %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-35)
    sizes = data.get("sizes", {})
    model = data.get("model", {}).get("spec", "?")
    caption = (
        f"Detection of shifted text by each method (rows) on each shifted set (columns), model {model}; "
        "normal texts are the negatives. AUROC = P(score of shifted > score of normal) (ties ½), 0.5 "
        "= chance; "
        "TPR at 5% FPR = share of shifted texts above the score exceeded by at most 5% of normal texts. "
        f"Texts per set: {', '.join(f'{k} {v}' for k, v in sizes.items())}."
    )
    if not data.get("text_scores"):
        caption += (
            " This benchmark file predates per-text scores (`text_scores`), so its ROC curves cannot be "
            "drawn; rerun `ppmech monitor benchmark --json` for them."
        )
    return with_meta(
        fig, "Monitor benchmark: detection per method and shifted set", caption, 190 + 26 * len(methods)
    )


def monitor_roc(data: Mapping[str, Any]) -> go.Figure:
    """ROC curve of each detector on each shifted set (one panel per set), from the per-text scores."""
    from ppmech.monitor.detection import auroc, roc_curve

    by_method: Mapping[str, Mapping[str, list[float | None]]] = data.get("text_scores") or {}
    if not by_method:
        raise PPMechError(
            "the monitor benchmark holds no per-text scores",
            "rerun `ppmech monitor benchmark --json` (files from before per-text scores have none)",
        )

    def values(xs: list[float | None]) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in xs], dtype=np.float64)

    sets = [name for name in dict.fromkeys(k for m in by_method.values() for k in m) if name != "normal"]
    cols = min(3, len(sets))
    rows = math.ceil(len(sets) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=sets,
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.12,
    )
    for k, set_name in enumerate(sets):
        row, col = k // cols + 1, k % cols + 1
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line=dict(color="#999", dash="dot", width=1),
                hoverinfo="skip",
                showlegend=False,
            ),
            row=row,
            col=col,
        )
        for i, (method, by_set) in enumerate(by_method.items()):
            if set_name not in by_set or "normal" not in by_set:
                continue
            normal, shifted = values(by_set["normal"]), values(by_set[set_name])
            fpr, tpr = roc_curve(normal, shifted)
            if not len(fpr):
                continue
            area = auroc(normal, shifted)
            fig.add_trace(
                go.Scatter(
                    x=fpr,
                    y=tpr,
                    mode="lines",
                    line=dict(color=color(i), width=1.5, shape="linear"),
                    name=method,
                    legendgroup=method,
                    showlegend=k == 0,
                    hovertemplate=f"{method}<br>{set_name}, AUROC {area:.2f}<br>"
                    "FPR %{x:.2f}, TPR %{y:.2f}<extra></extra>",
                ),
                row=row,
                col=col,
            )
    fig.update_xaxes(range=[0, 1], title_text="false-positive rate (normal texts)", row=rows)
    fig.update_yaxes(range=[0, 1.02], title_text="true-positive rate", col=1)
    model = data.get("model", {}).get("spec", "?")
    caption = (
        f"ROC curves of each detector (colour) on each shifted set (panel), model {model}: each point is "
        "one threshold on the detector's per-text score, flagging texts at or above it; x = share of "
        "normal texts flagged, y = share of shifted texts flagged. Dotted: chance. Hover for the AUROC "
        "(the area under each curve, ties ½). Click a legend entry to hide a detector."
    )
    return with_meta(fig, "Monitor benchmark: ROC curves", caption, 170 + 260 * rows)
