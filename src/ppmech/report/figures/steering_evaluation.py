"""The report's "Steering evaluation" section: Table 3 as paired judge scores per prompt.

Drawn from a ``ppmech evaluate-steering`` directory (``summary.json`` and ``items.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ppmech.report.figures.common import color, with_meta


def table3_pairs(summary: Mapping[str, Any], items: pd.DataFrame) -> go.Figure:
    """Table 3 as paired points: each prompt's judge score of the natural and of the steered top-k list."""
    pairs = items[["natural_score", "steered_score"]].astype("float64")
    moved = items["steps"] > 0 if "steps" in items else pd.Series(True, index=items.index)
    complete = pairs.notna().all(axis=1)
    fig = go.Figure()
    xs: list[Any] = []
    ys: list[Any] = []
    for _, row in pairs[complete].iterrows():
        xs += ["natural", "steered", None]
        ys += [row["natural_score"], row["steered_score"], None]
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", line=dict(color="#bbb", width=1), name="one prompt", hoverinfo="skip"
        )
    )
    for label, mask, c in (
        ("moved by steering", moved, color(1)),
        ("already at η (not moved)", ~moved, color(0)),
    ):
        part = pairs[complete & mask]
        if not len(part):
            continue
        fig.add_trace(
            go.Scatter(
                x=["natural"] * len(part) + ["steered"] * len(part),
                y=np.concatenate([part["natural_score"].to_numpy(), part["steered_score"].to_numpy()]),
                mode="markers",
                marker=dict(size=8, color=c, opacity=0.7),
                name=label,
                hovertemplate="%{x}: score %{y}<extra></extra>",
            )
        )
    stats = summary.get("statistics", {})
    means = [stats.get("natural_mean"), stats.get("steered_mean")]
    sds = [stats.get("natural_sd"), stats.get("steered_sd")]
    if all(m is not None for m in means):
        fig.add_trace(
            go.Scatter(
                x=["natural", "steered"],
                y=means,
                mode="markers+lines",
                name="mean ± sd",
                marker=dict(size=16, symbol="diamond", color="#111"),
                line=dict(color="#111", width=3),
                error_y=dict(type="data", array=[s or 0 for s in sds], color="#111", thickness=2, width=10),
            )
        )
    fig.update_yaxes(title_text="judge score (1–10)")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=["natural", "steered"])
    cfg = summary.get("config", {})
    judge = summary.get("judge", {})
    judge_name = judge.get("name", judge.get("kind", "?")) if isinstance(judge, dict) else str(judge)
    p = stats.get("p_value")
    caption = (
        f"Each prompt's judge score (1–10) of the natural and of the steered top-{cfg.get('top_k', 10)} "
        "next-token list, joined by a grey line (Table 3 of the paper); model "
        f"{cfg.get('model', '?')}, judge "
        f"{judge_name}, N = {stats.get('n', int(complete.sum()))} pairs. Black: means ± sd."
        + (f" Paired test p = {p:.3g}." if isinstance(p, float) else "")
    )
    return with_meta(fig, "Table 3: natural against steered, per prompt", caption, 460)
