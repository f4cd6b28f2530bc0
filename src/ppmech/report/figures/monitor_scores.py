"""The report's "Monitor scores" section: one text's per-token z(H) and CUSUM statistic.

Drawn from ``ppmech monitor score --json --tokens`` (one JSON record per text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.errors import PPMechError
from ppmech.report.figures.common import color, token_label, with_meta


def monitor_trace(record: Mapping[str, Any]) -> go.Figure:
    """One text's per-token z-score of H and its CUSUM statistic, the first alarm marked."""
    tokens = pd.DataFrame(record.get("tokens", []))
    if tokens.empty or "cusum" not in tokens:
        raise PPMechError("the monitor record has no per-token scores", "score with `--json --tokens`")
    idx = tokens["index"].to_numpy() if "index" in tokens else np.arange(len(tokens))
    labels = [token_label(str(t)) for t in tokens.get("token", [""] * len(tokens))]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=["z-score of H per token (calibrated)", "CUSUM statistic on z(H)"],
    )
    z = tokens["z_H"].astype("float64").to_numpy(na_value=np.nan)
    fig.add_trace(
        go.Scatter(
            x=idx,
            y=z,
            mode="lines+markers",
            name="z(H)",
            marker=dict(size=5, color=color(0)),
            line=dict(color=color(0)),
            text=labels,
            hovertemplate="token %{x}: %{text}<br>z(H) %{y:.2f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    cus = tokens["cusum"].astype("float64").to_numpy(na_value=np.nan)
    fig.add_trace(
        go.Scatter(
            x=idx,
            y=cus,
            mode="lines",
            name="CUSUM",
            line=dict(color=color(1), width=2),
            text=labels,
            hovertemplate="token %{x}: %{text}<br>CUSUM %{y:.2f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    alarm_at = record.get("alarm_at")
    if alarm_at is not None and 0 <= int(alarm_at) < len(tokens):
        a = int(alarm_at)
        fig.add_trace(
            go.Scatter(
                x=[idx[a]],
                y=[cus[a]],
                mode="markers+text",
                name="first alarm",
                marker=dict(symbol="x", size=14, color="#d62728"),
                text=["alarm"],
                textposition="top center",
                hovertemplate=f"first alarm at token {a}: {labels[a]}<extra></extra>",
            ),
            row=2,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[idx[a], idx[a]],
                y=[float(np.nanmin(z)), float(np.nanmax(z))],
                mode="lines",
                line=dict(color="#d62728", dash="dot"),
                showlegend=False,
                hoverinfo="skip",
                name="alarm",
            ),
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="token index (scored tokens)", row=2, col=1)
    fig.update_yaxes(title_text="z(H) [std]", row=1, col=1)
    fig.update_yaxes(title_text="CUSUM [std]", row=2, col=1)
    source = record.get("source", "text")
    verdict = (
        f"first alarm at token {alarm_at}"
        if alarm_at is not None
        else "no alarm (the CUSUM stayed below its threshold)"
    )
    caption = (
        f"{source}: z(H) = (H_t − calibration mean) / calibration std per scored token, and the "
        "one-sided CUSUM "
        f"on z(H) (both in standard deviations); {verdict}. The alarm fires where the CUSUM first "
        "exceeds the "
        f"calibration's threshold. Sequence: mean H {record.get('mean_H', float('nan')):.3f}, anomaly "
        f"{record.get('anomaly', float('nan')):.3f}, flagged {record.get('flagged')}."
    )
    return with_meta(fig, f"Monitor: {source}", caption, 460)
