"""The report's figures as plotly :class:`~plotly.graph_objects.Figure` objects (usable in notebooks).

Every function reads loaded outputs (see :mod:`ppmech.report.sources`) and
returns a figure whose ``layout.meta["caption"]`` says what is plotted and in
what units. Nothing here recomputes a statistic that a run stores: the Table-1
numbers come from each run's ``summary.json``; the per-step and per-trajectory
pictures are drawn from ``steps.parquet``.

Units: ``V_t = -ln p(x_t)`` is in nats. ``K_t = ln(½‖h_t − h_{t−1}‖²)`` is the log of
a squared hidden-state distance (the hidden state's own units, so its level depends
on the model's scale), and ``H_t = K_t + V_t`` carries both. Step 0 has no
velocity, so its K and H are undefined; zero-velocity steps (``K = −inf``) are
left out of every picture of K and H, as they are of the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ppmech.errors import PPMechError
from ppmech.runs import Run
from ppmech.statistics import cv

PALETTE = qualitative.Plotly
TERM_LABEL = {
    "H": "H<sub>t</sub> = K<sub>t</sub> + V<sub>t</sub>",
    "K": "K<sub>t</sub> = ln(½‖h<sub>t</sub> − h<sub>t−1</sub>‖²)",
    "V": "V<sub>t</sub> = −ln p(x<sub>t</sub>) [nats]",
}
TERM_UNITS = {
    "H": "H = K + V (log squared hidden-state distance + nats)",
    "K": "K = ln(½‖h_t − h_{t−1}‖²) (log of squared hidden-state distance)",
    "V": "V = −ln p(x_t) (nats)",
}
BASE_LAYOUT: dict[str, Any] = dict(
    template="plotly_white",
    margin=dict(l=60, r=20, t=60, b=50),
    legend=dict(yanchor="top", y=1, xanchor="left", x=1.01),
    font=dict(size=12),
)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _with_meta(fig: go.Figure, title: str, caption: str, height: int) -> go.Figure:
    fig.update_layout(**BASE_LAYOUT)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", y=0.99, yanchor="top"), height=height)
    fig.update_layout(meta={"caption": caption})
    return fig


def caption_of(fig: go.Figure) -> str:
    """The caption stored in ``layout.meta`` (empty if none)."""
    meta = fig.layout.meta
    return str(meta.get("caption", "")) if isinstance(meta, dict) else ""


# --------------------------------------------------------------------------- per-step data


def terms(steps: pd.DataFrame) -> pd.DataFrame:
    """``trajectory``, ``step``, ``token`` and K, V, H in float64 (null read as NaN), in step order."""
    out = steps.sort_values(["trajectory", "step"], kind="stable").reset_index(drop=True)
    frame = pd.DataFrame({"trajectory": out["trajectory"].to_numpy(), "step": out["step"].to_numpy()})
    if "token" in out:
        frame["token"] = out["token"].astype(str).to_numpy()
    for name in ("K", "V", "H"):
        frame[name] = out[name].astype("float64").to_numpy(na_value=np.nan)
    return frame


def step_quantiles(steps: pd.DataFrame, term: str) -> pd.DataFrame:
    """Per step: median and interquartile range of ``term`` over trajectories (finite values only).

    Returns:
        ``step``, ``median``, ``q25``, ``q75``, ``n`` (trajectories with a finite value).
    """
    t = terms(steps)
    t = t[np.isfinite(t[term])]
    grouped = t.groupby("step")[term]
    return pd.DataFrame(
        {
            "median": grouped.median(),
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
            "n": grouped.size(),
        }
    ).reset_index()


def per_trajectory(steps: pd.DataFrame) -> pd.DataFrame:
    """Per trajectory over its valid steps (finite H): ``n_valid``, ``mean_H`` and ``cv_H``.

    ``cv_H = std(H_i) / mean(H_i)`` (ddof 0) is NaN where the statistics leave it
    out (fewer than 2 valid steps, or a zero mean), so the mean of the finite
    ``cv_H`` is the run's ``mean_trajectory_cv``.
    """
    rows = []
    for traj, part in terms(steps).groupby("trajectory", sort=True):
        h = part["H"].to_numpy()
        h = h[np.isfinite(h)]
        mean = float(h.mean()) if h.size else math.nan
        rows.append(
            {
                "trajectory": int(traj),
                "n_valid": int(h.size),
                "mean_H": mean,
                "cv_H": cv(h) if h.size >= 2 and mean != 0 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["trajectory", "n_valid", "mean_H", "cv_H"])


# --------------------------------------------------------------------------- runs


def _need_runs(runs: Mapping[str, Run]) -> None:
    if not runs:
        raise PPMechError("this figure needs at least one run", "pass a run directory")


def energy_vs_step(runs: Mapping[str, Run]) -> go.Figure:
    """H_t, K_t and V_t against step: the median over trajectories with its interquartile band, per run."""
    _need_runs(runs)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
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
                    hovertemplate=f"{name}<br>step %{{x}}<br>median {term} %{{y:.3f}}"
                    "<br>IQR [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>n = %{customdata[2]}"
                    "<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_xaxes(title_text="generated step t", row=3, col=1)
    for row, term in enumerate("HKV", start=1):
        fig.update_yaxes(title_text=term, row=row, col=1)
    caption = (
        "Median over trajectories (line) and interquartile range (band) of each term at each generated step, "
        "one colour per run. "
        + "; ".join(TERM_UNITS.values())
        + ". Step 0 has no velocity, so K and H start "
        "at step 1; zero-velocity steps are left out."
    )
    return _with_meta(fig, "Energy terms along the trajectory", caption, 760)


def _constant_h_levels(h: np.ndarray, count: int = 5) -> list[float]:
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
    _need_runs(runs)
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
                "<br>V %{x:.3f} nats<br>K %{y:.3f}<br>H %{customdata[2]:.3f}<extra></extra>",
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
        for level in _constant_h_levels(h):
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
    fig.update_xaxes(title_text="V = −ln p(x_t)  [nats]")
    fig.update_yaxes(title_text="K = ln(½‖h_t − h_{t−1}‖²)")
    caption = (
        "Phase portrait: each point is one generated step with a velocity (step ≥ 1, finite K), "
        "V = −ln p(x_t) in nats against K = ln(½‖h_t − h_{t−1}‖²) in log squared hidden-state units. "
        "Dashed lines are levels of constant H = K + V: a conserved H keeps the points on one such line, "
        "K and V trading off along it." + (" Subsampled: " + "; ".join(notes) + "." if notes else "")
    )
    return _with_meta(fig, "Phase portrait: K against V", caption, 520)


def distributions(runs: Mapping[str, Run]) -> go.Figure:
    """Histograms of pooled H, of the per-trajectory CV of H and of the per-trajectory mean H."""
    _need_runs(runs)
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
    fig.update_xaxes(title_text="H", row=1, col=1)
    fig.update_xaxes(title_text="std(H_i) / mean(H_i)", row=1, col=2)
    fig.update_xaxes(title_text="mean(H_i)", row=1, col=3)
    fig.update_yaxes(title_text="density", row=1, col=1)
    caption = (
        "Left: H = K + V pooled over every valid step (log squared hidden-state distance + nats). "
        "Middle: the coefficient of variation std/mean (ddof 0, dimensionless) of H within each trajectory; "
        "its mean is the run's 'mean trajectory CV'. Right: each trajectory's mean H; the spread of these "
        "means over their mean is the 'trajectory-mean CV'. Densities, one colour per run."
    )
    return _with_meta(fig, "Distributions of H", caption, 420)


COMPARED = (
    ("global_cv", "global CV of H", "global_cv_ci"),
    ("mean_trajectory_cv", "mean trajectory CV", None),
    ("mean_energy", "mean H", "mean_energy_ci"),
    ("kv_ratio", "mean K / mean V", None),
)


def comparison(runs: Mapping[str, Run]) -> go.Figure:
    """The Table-1 comparison as a dot plot: each run's statistics from ``summary.json``, with 95% CIs."""
    _need_runs(runs)
    fig = make_subplots(
        rows=1,
        cols=len(COMPARED),
        shared_yaxes=True,
        subplot_titles=[c[1] for c in COMPARED],
        horizontal_spacing=0.04,
    )
    names = list(runs)
    for i, (name, run) in enumerate(runs.items()):
        stats = run.summary.get("statistics", {})
        for col, (key, label, ci_key) in enumerate(COMPARED, start=1):
            value = stats.get(key)
            if value is None:
                continue
            ci = stats.get(ci_key) if ci_key else None
            error: dict[str, Any] = dict(visible=False)
            hover = f"{name}<br>{label} %{{x:.4f}}"
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
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], type="category")
    caption = (
        "Each run's headline statistics as stored in its summary.json (Table 1 of the paper): global CV of H "
        "(std/mean over all valid steps pooled), mean of the per-trajectory CVs, mean H, and mean K "
        "/ mean V; "
        "all dimensionless except mean H (log squared hidden-state distance + nats). Bars: 95% percentile "
        "bootstrap CIs over trajectories, where the run computed them. A lower CV means a flatter H."
    )
    return _with_meta(fig, "Table 1: conservation statistics per run", caption, 160 + 36 * len(names))


#: Permutations of the report's pairing-shuffle null (fewer than verify's 1000: the smallest p is 1/201).
REPORT_PERMUTATIONS = 200
#: Scales of h drawn in the scale-null panel (log-spaced, the ledger's four among them).
REPORT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0)


def kv_parts(steps: pd.DataFrame) -> list[np.ndarray]:
    """Per trajectory ``[n_i, 2]`` float64 (``K``, ``V``) in step order (nulls as NaN)."""
    t = terms(steps)
    cuts = np.flatnonzero(np.diff(t["trajectory"].to_numpy())) + 1
    return list(np.split(t[["K", "V"]].to_numpy(dtype=np.float64), cuts))


def null_models(runs: Mapping[str, Run], n_perm: int = REPORT_PERMUTATIONS, seed: int = 0) -> go.Figure:
    """Beyond the paper: each run's compensation ratio against its shuffle null, and CV(H) by scale."""
    from ppmech.nulls import pairing_shuffle, scale_table

    _need_runs(runs)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            "compensation ratio R = Var(H) / (Var(K) + Var(V))",
            "global CV of H with h rescaled by c",
        ],
        horizontal_spacing=0.12,
    )
    names = list(runs)
    skipped = []
    for i, (name, run) in enumerate(runs.items()):
        parts = kv_parts(run.steps)
        try:
            test = pairing_shuffle(parts, n_perm=n_perm, seed=seed)["R"]
        except PPMechError:  # too few trajectories for a null
            skipped.append(name)
            continue
        fig.add_trace(
            go.Scatter(
                x=[test.null_mean],
                y=[name],
                mode="markers",
                marker=dict(symbol="line-ns", size=14, color="#888", line=dict(width=2, color="#888")),
                error_x=dict(
                    type="data",
                    symmetric=False,
                    array=[test.null_high - test.null_mean],
                    arrayminus=[test.null_mean - test.null_low],
                    color="#aaa",
                    thickness=8,
                    width=0,
                ),
                name="shuffle null (95% band)",
                legendgroup="null",
                showlegend=i == 0,
                hovertemplate=f"{name}<br>null R mean %{{x:.3f}}, 95% [{test.null_low:.3f}, "
                f"{test.null_high:.3f}]<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[test.observed],
                y=[name],
                mode="markers",
                marker=dict(size=11, color=color(i)),
                name=name,
                legendgroup=name,
                hovertemplate=f"{name}<br>observed R %{{x:.3f}}<br>p = {test.p_value:.3g}, effect "
                f"{test.effect_size:.1f} null sd<extra></extra>",
            ),
            row=1,
            col=1,
        )
        table = scale_table(parts, REPORT_SCALES)
        fig.add_trace(
            go.Scatter(
                x=table["c"],
                y=table["global_cv"],
                mode="lines+markers",
                line=dict(color=color(i)),
                name=name,
                legendgroup=name,
                showlegend=False,
                hovertemplate=f"{name}<br>c = %{{x:g}}<br>CV %{{y:.4f}}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    # Reference lines as traces (not layout shapes), so the PNG redraw keeps them too.
    reference = dict(mode="lines", line=dict(color="#666", dash="dot", width=1), showlegend=False)
    if names:
        fig.add_trace(
            go.Scatter(x=[1.0, 1.0], y=[names[0], names[-1]], hoverinfo="skip", **reference), row=1, col=1
        )
    fig.add_trace(
        go.Scatter(
            x=[REPORT_SCALES[0], REPORT_SCALES[-1]],
            y=[0.13, 0.13],
            hovertemplate="the paper's 13% threshold<extra></extra>",
            **reference,
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], type="category", row=1, col=1)
    fig.update_xaxes(title_text="R (dimensionless; < 1: K and V compensate)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="c (h → c·h)", row=1, col=2)
    fig.update_yaxes(title_text="global CV of H", rangemode="tozero", row=1, col=2)
    caption = (
        "Beyond the paper (`ppmech.nulls`). Left: each run's pooled compensation ratio R (dot; scale-free, "
        "< 1 when K and V move against each other) and the 95% band of R with V permuted against K within "
        f"each trajectory ({n_perm} permutations, seed {seed}: the same values, the pairing gone). A dot "
        "left of its band means H is flatter than the same K and V unpaired; hover for the one-sided p and "
        "the effect in null standard deviations. Right: the global CV of H when h is rescaled by c, which "
        "adds 2 ln c to K and H and changes nothing else; the dotted line is the paper's 13% threshold, so "
        "where a curve crosses it the verdict depends on the units of h."
    )
    if skipped:
        caption += f" Too few trajectories for a null: {', '.join(skipped)}."
    return _with_meta(
        fig, "Null models: is the conservation more than its parts?", caption, 200 + 40 * len(names)
    )


#: The statistics drawn against parameter count: the same as the Table 1 comparison.
SCALED = COMPARED


def scaling_frame(runs: Mapping[str, Run]) -> pd.DataFrame:
    """One row per run: name, family (``model_type``), weights, parameters, the compared statistics."""
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
        for key, _, ci_key in SCALED:
            row[key] = stats.get(key)
            ci = stats.get(ci_key) if ci_key else None
            row[f"{key}_low"] = ci.get("low") if ci else None
            row[f"{key}_high"] = ci.get("high") if ci else None
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_correlations(runs: Mapping[str, Run], metric: str = "global_cv") -> dict[str, str]:
    """Table 5's Pearson r of ``metric`` with parameter count per family and weights, or why there is none."""
    from ppmech.claims.verify import scaling_from_runs

    frame = scaling_frame(runs)
    out: dict[str, str] = {}
    for (family, weights), part in frame.groupby(["family", "weights"], sort=True):
        label = f"{family} ({weights})"
        try:
            _, corr = scaling_from_runs([runs[n] for n in part["run"]], metric)
            out[label] = f"r = {corr.r:.3f}, p = {corr.p:.3g}, n = {corr.n}"
        except PPMechError as exc:
            out[label] = f"no correlation: {exc.problem}"
    return out


def scaling(runs: Mapping[str, Run]) -> go.Figure:
    """Table 5 picture: each statistic against parameter count, one line per family and weights."""
    _need_runs(runs)
    frame = scaling_frame(runs)
    if frame["parameters"].isna().all():
        raise PPMechError("these runs record no parameter count", "re-record them with this ppmech")
    fig = make_subplots(
        rows=1, cols=len(SCALED), subplot_titles=[s[1] for s in SCALED], horizontal_spacing=0.06
    )
    for i, ((family, weights), part) in enumerate(frame.groupby(["family", "weights"], sort=True)):
        part = part.sort_values("parameters")
        label = f"{family} ({weights})"
        for col, (key, title, ci_key) in enumerate(SCALED, start=1):
            error: dict[str, Any] = dict(visible=False)
            if ci_key and part[f"{key}_low"].notna().all():
                error = dict(
                    type="data",
                    symmetric=False,
                    array=(part[f"{key}_high"] - part[key]).to_numpy(dtype=float),
                    arrayminus=(part[key] - part[f"{key}_low"]).to_numpy(dtype=float),
                    color=color(i),
                )
            fig.add_trace(
                go.Scatter(
                    x=part["parameters"].to_numpy(dtype=float),
                    y=part[key].to_numpy(dtype=float),
                    mode="lines+markers",
                    marker=dict(size=9, color=color(i), symbol="circle" if weights == "pretrained" else "x"),
                    line=dict(color=color(i), dash="solid" if weights == "pretrained" else "dot"),
                    error_y=error,
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    text=part["run"].tolist(),
                    hovertemplate="%{text}<br>%{x:.3s} parameters<br>" + title + " %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(type="log", title_text="parameters", row=1, col=col)
    corr = scaling_correlations(runs)
    caption = (
        "Each run's statistics (from its summary.json) against its parameter count (log scale), one line per "
        "model family (transformers model_type) and weights (solid: pretrained, dotted: random). Bars: 95% "
        "bootstrap CIs where the run has them. Table 5, Pearson r of the global CV with parameter count: "
        + "; ".join(f"{k}: {v}" for k, v in corr.items())
        + "."
    )
    return _with_meta(fig, "Table 5: statistics against model size", caption, 420)


def _token_label(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"


def trajectory_tokens(run: Run, trajectory: int = 0, term: str = "H", width: int = 16) -> go.Figure:
    """The generated tokens of one trajectory in reading order, each cell shaded by ``term``; hover: "
    "H, K, V, p."""
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
        text[y, x] = _token_label(str(r.get("token", "")))
        custom[y, x] = [int(r["step"]), r["H"], r["K"], r["V"], math.exp(-r["V"])]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11),
            customdata=custom,
            colorscale="Viridis",
            colorbar=dict(title=dict(text=term)),
            hovertemplate="step %{customdata[0]}: %{text}<br>H %{customdata[1]:.3f}<br>K %{customdata[2]:.3f}"
            "<br>V %{customdata[3]:.3f} nats (p = %{customdata[4]:.3g})<extra></extra>",
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
        f"The {n} generated tokens of trajectory {trajectory} in reading order ({width} per row; · is "
        "a space, "
        f"⏎ a newline), each shaded by {TERM_UNITS[term]}. Blank cells: undefined (step 0 has no "
        "velocity) or "
        "zero velocity. Hover for H, K, V and p(x_t)."
        + (f" Prompt (last 160 characters): “…{shown}”" if shown else "")
    )
    return _with_meta(
        fig, f"Trajectory {trajectory}, tokens shaded by {term}", caption, max(220, 110 + 34 * rows)
    )


# --------------------------------------------------------------------------- monitor


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
    return _with_meta(
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
    return _with_meta(fig, "Monitor benchmark: ROC curves", caption, 170 + 260 * rows)


def monitor_trace(record: Mapping[str, Any]) -> go.Figure:
    """One text's per-token z-score of H and its CUSUM statistic, the first alarm marked."""
    tokens = pd.DataFrame(record.get("tokens", []))
    if tokens.empty or "cusum" not in tokens:
        raise PPMechError("the monitor record has no per-token scores", "score with `--json --tokens`")
    idx = tokens["index"].to_numpy() if "index" in tokens else np.arange(len(tokens))
    labels = [_token_label(str(t)) for t in tokens.get("token", [""] * len(tokens))]
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
    return _with_meta(fig, f"Monitor: {source}", caption, 460)


# --------------------------------------------------------------------------- steering


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
        labels = [_token_label(str(t)) for t in part["token"]]
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
                    hovertemplate=f"{trace}<br>step %{{x}}: %{{text}}<br>{term} %{{y:.3f}}<extra></extra>",
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
        fig.update_yaxes(title_text=term, row=row, col=1)
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
    return _with_meta(fig, "Steering: natural against steered energy", caption, 700)


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
    return _with_meta(fig, "Table 3: natural against steered, per prompt", caption, 460)
