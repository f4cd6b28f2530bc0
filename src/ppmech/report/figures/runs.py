"""The report's "Runs" section: the energy terms of each run, read from its ``steps.parquet``.

Also drawn for a sweep's runs (:mod:`ppmech.report.figures.sweep` reuses
:func:`energy_vs_step` to overlay them). Nothing here recomputes a statistic that a
run stores; the Table 1 numbers come from ``summary.json`` (:func:`comparison`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.errors import PPMechError
from ppmech.report.figures.common import (
    TERM_AXIS,
    TERM_LABEL,
    TERM_UNITS,
    color,
    need_runs,
    padded_range,
    per_trajectory,
    step_quantiles,
    terms,
    token_label,
    with_meta,
)
from ppmech.runs import Run


def energy_vs_step(runs: Mapping[str, Run]) -> go.Figure:
    """H_t, K_t and V_t against step: the median over trajectories with its interquartile band, per run."""
    need_runs(runs)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=[TERM_LABEL[t] for t in "HKV"],
    )
    for i, (name, run) in enumerate(runs.items()):
        c = color(i)
        for row, term in enumerate("HKV", start=1):
            q = step_quantiles(run.steps, term)
            x = q["step"].to_numpy()
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([q["q75"].to_numpy(), q["q25"].to_numpy()[::-1]]),
                    mode="lines",
                    fill="toself",
                    fillcolor=c,
                    opacity=0.2,
                    line=dict(width=0, color=c),
                    hoverinfo="skip",
                    legendgroup=name,
                    showlegend=False,
                    name=f"{name} IQR",
                ),
                row=row,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=q["median"].to_numpy(),
                    mode="lines",
                    line=dict(color=c, width=2),
                    name=name,
                    legendgroup=name,
                    showlegend=row == 1,
                    customdata=np.stack([q["q25"], q["q75"], q["n"]], axis=-1),
                    hovertemplate=f"{name}<br>step %{{x}}<br>median {term} %{{y:.3f}} nats"
                    "<br>IQR [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>n = %{customdata[2]}"
                    "<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="generated step t", row=3, col=1)
    for row, term in enumerate("HKV", start=1):
        fig.update_yaxes(title_text=TERM_AXIS[term], row=row, col=1)
    caption = (
        "Median over trajectories (line) and interquartile range (band) of each term at each generated step, "
        "one colour per run. "
        + "; ".join(TERM_UNITS.values())
        + ". Step 0 has no velocity, so K and H start at step 1; zero-velocity steps are left out."
    )
    return with_meta(fig, "Energy terms along the trajectory", caption, 760)


def constant_h_levels(h: np.ndarray, count: int = 5) -> list[float]:
    """Round H levels spread over the middle of the data, for lines of constant H."""
    lo, hi = np.quantile(h, [0.05, 0.95])
    if not np.isfinite(lo) or hi <= lo:
        return [float(np.round(np.median(h), 1))]
    step = (hi - lo) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(step))
    nice = min((1, 2, 2.5, 5, 10), key=lambda m: abs(m * magnitude - step)) * magnitude
    start = math.ceil(lo / nice) * nice
    return [float(round(start + k * nice, 6)) for k in range(count + 1) if start + k * nice <= hi + 1e-9]


def phase_portrait(runs: Mapping[str, Run], max_points: int = 20_000, seed: int = 0) -> go.Figure:
    """K against V at every valid step (one colour per run), with dashed lines of constant H = K + V."""
    need_runs(runs)
    fig = go.Figure()
    all_v, all_k, all_h = [], [], []
    notes = []
    rng = np.random.default_rng(seed)
    for i, (name, run) in enumerate(runs.items()):
        t = terms(run.steps)
        t = t[np.isfinite(t["H"])]
        if len(t) > max_points:
            t = t.iloc[np.sort(rng.choice(len(t), max_points, replace=False))]
            notes.append(f"{name}: {max_points:,} of its valid steps, drawn at random (seed {seed})")
        all_v.append(t["V"].to_numpy())
        all_k.append(t["K"].to_numpy())
        all_h.append(t["H"].to_numpy())
        fig.add_trace(
            go.Scatter(
                x=t["V"].to_numpy(),
                y=t["K"].to_numpy(),
                mode="markers",
                marker=dict(size=4, color=color(i), opacity=0.45),
                name=name,
                customdata=np.stack([t["trajectory"], t["step"], t["H"]], axis=-1),
                hovertemplate=f"{name}<br>trajectory %{{customdata[0]}}, step %{{customdata[1]}}"
                "<br>V %{x:.3f} nats<br>K %{y:.3f} nats<br>H %{customdata[2]:.3f} nats<extra></extra>",
            )
        )
    v = np.concatenate(all_v)
    k = np.concatenate(all_k)
    h = np.concatenate(all_h)
    if v.size:
        v_lo, v_hi = float(v.min()), float(v.max())
        k_lo, k_hi = float(k.min()), float(k.max())
        xs: list[float | None] = []
        ys: list[float | None] = []
        for level in constant_h_levels(h):
            # K = level - V, clipped to the data's K range so the lines do not stretch the axes.
            a = max(v_lo, level - k_hi)
            b = min(v_hi, level - k_lo)
            if b <= a:
                continue
            xs += [a, b, None]
            ys += [level - a, level - b, None]
            # Labelled at the middle of the segment: the ends pile up on the axes' edges.
            mid = (a + b) / 2
            fig.add_annotation(
                x=mid,
                y=level - mid,
                text=f"H = {level:g}",
                showarrow=False,
                xanchor="left",
                yanchor="bottom",
                font=dict(size=10, color="#444"),
                bgcolor="rgba(255,255,255,0.6)",
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color="#777", dash="dash", width=1),
                name="constant H",
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title_text="V = −ln p(x<sub>t</sub>)  [nats]")
    fig.update_yaxes(title_text="K = ln(½‖h<sub>t</sub> − h<sub>t−1</sub>‖²)  [nats]")
    caption = (
        "Phase portrait: each point is one generated step with a velocity (step ≥ 1, finite K); "
        f"{TERM_UNITS['V']} against {TERM_UNITS['K']}. "
        "Dashed lines are levels of constant H = K + V (nats): a conserved H keeps the points on one such "
        "line, K and V trading off along it." + (" Subsampled: " + "; ".join(notes) + "." if notes else "")
    )
    return with_meta(fig, "Phase portrait: K against V", caption, 520)


def distributions(runs: Mapping[str, Run]) -> go.Figure:
    """Histograms of pooled H, of the per-trajectory CV of H and of the per-trajectory mean H."""
    need_runs(runs)
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=[
            "H at every valid step",
            "CV of H within each trajectory",
            "mean H of each trajectory",
        ],
        horizontal_spacing=0.07,
    )
    panels: dict[str, list[np.ndarray]] = {}
    for name, run in runs.items():
        h = terms(run.steps)["H"].to_numpy()
        per = per_trajectory(run.steps)
        panels[name] = [h[np.isfinite(h)], per["cv_H"].dropna().to_numpy(), per["mean_H"].dropna().to_numpy()]
    for col in range(3):
        # One set of bins per panel, shared by the runs, so that their densities compare.
        pooled = np.concatenate([values[col] for values in panels.values()])
        if not pooled.size:
            continue
        edges = np.histogram_bin_edges(pooled, bins=40 if col == 0 else 20)
        size = float(edges[1] - edges[0]) or 1.0
        for i, (name, values) in enumerate(panels.items()):
            fig.add_trace(
                go.Histogram(
                    x=values[col],
                    histnorm="probability density",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 0,
                    marker=dict(color=color(i)),
                    opacity=0.55,
                    xbins=dict(start=float(edges[0]), end=float(edges[-1]) + size * 1e-9, size=size),
                ),
                row=1,
                col=col + 1,
            )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="H [nats]", row=1, col=1)
    fig.update_xaxes(title_text="std(H<sub>i</sub>) / mean(H<sub>i</sub>)  [dimensionless]", row=1, col=2)
    fig.update_xaxes(title_text="mean(H<sub>i</sub>)  [nats]", row=1, col=3)
    fig.update_yaxes(title_text="density [1 / x unit]", row=1, col=1)
    caption = (
        "Left: H = K + V (nats) pooled over every valid step. "
        "Middle: the coefficient of variation std/mean (ddof 0, dimensionless) of H within each trajectory; "
        "its mean is the run's 'mean trajectory CV'. Right: each trajectory's mean H (nats); the spread of "
        "these means over their mean is the 'trajectory-mean CV'. Probability densities (per unit of the "
        "x axis), one colour per run."
    )
    return with_meta(fig, "Distributions of H", caption, 420)


#: The Table 1 statistics compared across runs: summary key, label (with unit), CI key.
COMPARED = (
    ("global_cv", "global CV of H", "global_cv_ci"),
    ("mean_trajectory_cv", "mean trajectory CV", None),
    ("mean_energy", "mean H [nats]", "mean_energy_ci"),
    ("kv_ratio", "mean K / mean V", None),
)


def comparison(runs: Mapping[str, Run]) -> go.Figure:
    """The Table-1 comparison as a dot plot: each run's statistics from ``summary.json``, with 95% CIs."""
    need_runs(runs)
    fig = make_subplots(
        rows=1,
        cols=len(COMPARED),
        shared_yaxes=True,
        subplot_titles=[c[1] for c in COMPARED],
        horizontal_spacing=0.04,
    )
    names = list(runs)
    extent: dict[str, list[float | None]] = {key: [] for key, _, _ in COMPARED}
    for i, (name, run) in enumerate(runs.items()):
        stats = run.summary.get("statistics", {})
        for col, (key, label, ci_key) in enumerate(COMPARED, start=1):
            value = stats.get(key)
            if value is None:
                continue
            ci = stats.get(ci_key) if ci_key else None
            error: dict[str, Any] = dict(visible=False)
            hover = f"{name}<br>{label} %{{x:.4f}}"
            extent[key].append(value)
            if ci and ci.get("low") is not None:
                error = dict(
                    type="data",
                    symmetric=False,
                    array=[ci["high"] - value],
                    arrayminus=[value - ci["low"]],
                    color=color(i),
                    thickness=2,
                    width=6,
                )
                hover += f"<br>95% CI [{ci['low']:.4f}, {ci['high']:.4f}]"
                extent[key] += [ci["low"], ci["high"]]
            fig.add_trace(
                go.Scatter(
                    x=[value],
                    y=[name],
                    mode="markers",
                    marker=dict(size=11, color=color(i)),
                    error_x=error,
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    hovertemplate=hover + "<extra></extra>",
                ),
                row=1,
                col=col,
            )
    for col, (key, _, _) in enumerate(COMPARED, start=1):
        fig.update_xaxes(range=padded_range(extent[key]), row=1, col=col)
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], type="category")
    caption = (
        "Each run's headline statistics as stored in its summary.json (Table 1 of the paper): global CV of "
        "H (std/mean over all valid steps pooled), mean of the per-trajectory CVs, mean H, and mean K / "
        "mean V; all dimensionless except mean H (nats). Bars: 95% percentile bootstrap CIs over "
        "trajectories, where the run computed them. A lower CV means a flatter H."
    )
    return with_meta(fig, "Table 1: conservation statistics per run", caption, 200 + 36 * len(names))


def trajectory_tokens(run: Run, trajectory: int = 0, term: str = "H", width: int = 16) -> go.Figure:
    """The generated tokens of one trajectory in reading order, each cell shaded by ``term``.

    Hover shows H, K, V and p(x_t).
    """
    if term not in ("H", "K", "V"):
        raise PPMechError(f"--term must be H, K or V (got {term!r})", "use --term H")
    t = terms(run.steps)
    available = sorted(int(x) for x in t["trajectory"].unique())
    if trajectory not in available:
        raise PPMechError(
            f"run {run.path} has no trajectory {trajectory}",
            f"use --trajectory between {available[0]} and {available[-1]}",
        )
    part = t[t["trajectory"] == trajectory].reset_index(drop=True)
    n = len(part)
    rows = max(1, math.ceil(n / width))
    shape = (rows, width)
    z = np.full(shape, np.nan)
    text = np.full(shape, "", dtype=object)
    custom = np.full((*shape, 5), np.nan, dtype=object)
    for i, r in part.iterrows():
        y, x = divmod(int(i), width)
        value = r[term]
        z[y, x] = value if np.isfinite(value) else np.nan
        text[y, x] = token_label(str(r.get("token", "")))
        custom[y, x] = [int(r["step"]), r["H"], r["K"], r["V"], math.exp(-r["V"])]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11),
            customdata=custom,
            colorscale="Viridis",
            colorbar=dict(title=dict(text=TERM_AXIS[term])),
            hovertemplate="step %{customdata[0]}: %{text}<br>H %{customdata[1]:.3f} nats"
            "<br>K %{customdata[2]:.3f} nats<br>V %{customdata[3]:.3f} nats (p = %{customdata[4]:.3g})"
            "<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    fig.update_yaxes(autorange="reversed", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    source = run.trajectories
    prompt = ""
    if "trajectory" in source and "prompt_text" in source:
        match = source[source["trajectory"] == trajectory]
        if len(match):
            prompt = str(match["prompt_text"].iloc[0])
    shown = prompt[-160:].replace("\n", " ")
    caption = (
        f"The {n} generated tokens of trajectory {trajectory} in reading order ({width} per row; · is a "
        f"space, ⏎ a newline), each shaded by {TERM_UNITS[term]}. Blank cells: undefined (step 0 has no "
        "velocity) or zero velocity. Hover for H, K, V and p(xₜ)."
        + (f" Prompt (last 160 characters): “…{shown}”" if shown else "")
    )
    return with_meta(
        fig, f"Trajectory {trajectory}, tokens shaded by {term}", caption, max(220, 110 + 34 * rows)
    )
