"""The report's "Steering" section: natural against steered H, K and V of one prompt.

Drawn from a ``ppmech steer`` directory (``summary.json`` and ``steps.parquet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.report.figures.common import TERM_AXIS, TERM_LABEL, TERM_UNITS, color, token_label, with_meta


def steering_traces(summary: Mapping[str, Any], steps: pd.DataFrame) -> go.Figure:
    """H_t, K_t and V_t of the natural and the steered generation of one prompt, steered steps marked."""
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=[TERM_LABEL[t] for t in "HKV"],
    )
    for i, (trace, part) in enumerate(steps.groupby("trace", sort=False)):
        part = part.sort_values("step")
        labels = [token_label(str(t)) for t in part["token"]]
        for row, term in enumerate("HKV", start=1):
            y = part[term].astype("float64").to_numpy(na_value=np.nan)
            y = np.where(np.isfinite(y), y, np.nan)
            fig.add_trace(
                go.Scatter(
                    x=part["step"].to_numpy(),
                    y=y,
                    mode="lines+markers",
                    name=str(trace),
                    legendgroup=str(trace),
                    showlegend=row == 1,
                    marker=dict(size=6, color=color(i)),
                    line=dict(color=color(i)),
                    text=labels,
                    hovertemplate=f"{trace}<br>step %{{x}}: %{{text}}<br>{term} %{{y:.3f}} nats"
                    "<extra></extra>",
                ),
                row=row,
                col=1,
            )
            if "target_id" in part:
                steered = part[part["target_id"] >= 0]
                if len(steered) and trace != "natural":
                    ys = steered[term].astype("float64").to_numpy(na_value=np.nan)
                    fig.add_trace(
                        go.Scatter(
                            x=steered["step"].to_numpy(),
                            y=np.where(np.isfinite(ys), ys, np.nan),
                            mode="markers",
                            marker=dict(size=12, symbol="circle-open", color="#d62728", line=dict(width=2)),
                            name="steered step",
                            legendgroup="steered step",
                            showlegend=row == 1,
                            hoverinfo="skip",
                        ),
                        row=row,
                        col=1,
                    )
    fig.update_xaxes(title_text="generated step t", row=3, col=1)
    for row, term in enumerate("HKV", start=1):
        fig.update_yaxes(title_text=TERM_AXIS[term], row=row, col=1)
    cfg = summary.get("config", {})
    caption = (
        f"Natural and steered generation from one prompt (“{str(cfg.get('prompt', ''))[:120]}”), model "
        f"{cfg.get('model', '?')}, η = {cfg.get('eta', '?')}, K = {cfg.get('max_steps', '?')} "
        "gradient steps. "
        + "; ".join(TERM_UNITS.values())
        + ". Open red circles: steps where the steered run had a target token. Natural: “"
        + str(summary.get("natural_text", ""))[:200]
        + "”. Steered: “"
        + str(summary.get("steered_text", ""))[:200]
        + "”."
    )
    return with_meta(fig, "Steering: natural against steered energy", caption, 700)
