"""The "Runs" section's null-model figure and table: is the conservation more than its parts?

For each run: the pooled compensation ratio ``R = Var(H) / (Var(K) + Var(V))`` (below 1
when K and V move against each other) against its pairing-shuffle band, the global CV
of H against the CV the same K and V give unpaired (the shuffle-null CV), ``corr(K, V)``,
and the CV of H with ``h`` rescaled by ``c``.

The numbers are read from the run's ``summary.json`` where the run stored them;
otherwise they are computed here from ``steps.parquet`` by :mod:`ppmech.nulls` (pure
statistics of stored steps: no model runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech.errors import PPMechError
from ppmech.report.figures.common import color, kv_parts, need_runs, padded_range, with_meta
from ppmech.runs import Run

#: Permutations of the report's pairing-shuffle null when a run stores none (the smallest p is 1/201).
REPORT_PERMUTATIONS = 200
#: Scales of h drawn in the scale-null panel (log-spaced, the ledger's four among them).
REPORT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0)
#: The paper's CV threshold (Table 1's "CV < 13%"), drawn as a reference line.
PAPER_CV_THRESHOLD = 0.13


def _pooled_corr(parts: list[np.ndarray]) -> float:
    from ppmech.nulls import valid_pairs

    rows = np.concatenate(valid_pairs(parts)) if parts else np.empty((0, 2))
    if len(rows) < 2 or rows[:, 0].std() == 0 or rows[:, 1].std() == 0:
        return math.nan
    return float(np.corrcoef(rows[:, 0], rows[:, 1])[0, 1])


def _stored(run: Run) -> dict[str, Any] | None:
    """The controls the run's summary.json stores (``statistics.controls``), if it has them."""
    stored = run.summary.get("statistics", {}).get("controls")
    return stored if isinstance(stored, dict) and stored.get("R") is not None else None


def controls(run: Run, n_perm: int = REPORT_PERMUTATIONS, seed: int = 0) -> dict[str, Any] | None:
    """R with its shuffle band and p, the global CV with the shuffle-null CV, and corr(K, V).

    Returns:
        ``R``, ``R_null_low``, ``R_null_high``, ``R_p``, ``cv``, ``cv_null``, ``cv_null_low``,
        ``cv_null_high``, ``corr_KV``, ``permutations``, ``source`` (where the numbers came
        from); None when the run has too few trajectories for a null.
    """
    stored = _stored(run)
    if stored is not None:
        return {**stored, "source": "summary.json"}
    from ppmech.nulls import pairing_shuffle

    parts = kv_parts(run.steps)
    try:
        tests = pairing_shuffle(parts, n_perm=n_perm, seed=seed)
    except PPMechError:  # too few trajectories for a null
        return None
    r, cv = tests["R"], tests["global_cv"]
    return {
        "R": r.observed,
        "R_null_low": r.null_low,
        "R_null_high": r.null_high,
        "R_p": r.p_value,
        "cv": cv.observed,
        "cv_null": cv.null_mean,
        "cv_null_low": cv.null_low,
        "cv_null_high": cv.null_high,
        "corr_KV": _pooled_corr(parts),
        "permutations": n_perm,
        "source": f"steps.parquet ({n_perm} permutations, seed {seed})",
    }


def controls_rows(all_controls: Mapping[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """One table row per run: R and its band, the CV and the shuffle-null CV, corr(K, V)."""
    rows: list[dict[str, Any]] = []
    for name, c in all_controls.items():
        if c is None:
            rows.append({"run": name, "R": "too few trajectories for a null"})
            continue
        rows.append(
            {
                "run": name,
                "R": c["R"],
                "R shuffle band": f"[{c['R_null_low']:.3f}, {c['R_null_high']:.3f}]",
                "p (R)": c["R_p"],
                "corr(K, V)": c["corr_KV"],
                "global CV": c["cv"],
                "shuffle-null CV": c["cv_null"],
                "CV / null CV": c["cv"] / c["cv_null"] if c["cv_null"] else math.nan,
                "from": c["source"],
            }
        )
    return rows


def _band(x: float, low: float, high: float, y: str, show: bool, label: str) -> go.Scatter:
    return go.Scatter(
        x=[x],
        y=[y],
        mode="markers",
        marker=dict(symbol="line-ns", size=14, color="#888", line=dict(width=2, color="#888")),
        error_x=dict(
            type="data", symmetric=False, array=[high - x], arrayminus=[x - low], color="#bbb", thickness=8
        ),
        name="shuffle null (95% band)",
        legendgroup="null",
        showlegend=show,
        hovertemplate=f"{y}<br>{label} null mean %{{x:.3f}}, 95% [{low:.3f}, {high:.3f}]<extra></extra>",
    )


def null_models(
    runs: Mapping[str, Run],
    n_perm: int = REPORT_PERMUTATIONS,
    seed: int = 0,
    computed: Mapping[str, dict[str, Any] | None] | None = None,
) -> go.Figure:
    """Beyond the paper: R and the CV of H against their shuffle nulls, and the CV of H by scale.

    ``computed``: each run's :func:`controls`, where the caller already has them.
    """
    from ppmech.nulls import scale_table

    need_runs(runs)
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=[
            "compensation ratio R = Var(H) / (Var(K) + Var(V))",
            "global CV of H: observed and unpaired",
            "global CV of H with h rescaled by c",
        ],
        horizontal_spacing=0.09,
    )
    names = list(runs)
    skipped = []
    extent: dict[int, list[float | None]] = {1: [1.0], 2: []}
    shown_null = False
    for i, (name, run) in enumerate(runs.items()):
        c = computed[name] if computed is not None and name in computed else controls(run, n_perm, seed)
        if c is None:
            skipped.append(name)
            continue
        fig.add_trace(_band(c["R"], c["R_null_low"], c["R_null_high"], name, not shown_null, "R"), 1, 1)
        fig.add_trace(_band(c["cv_null"], c["cv_null_low"], c["cv_null_high"], name, False, "CV of H"), 1, 2)
        shown_null = True
        extent[1] += [c["R"], c["R_null_low"], c["R_null_high"]]
        extent[2] += [c["cv"], c["cv_null_low"], c["cv_null_high"]]
        for col, key in ((1, "R"), (2, "cv")):
            fig.add_trace(
                go.Scatter(
                    x=[c[key]],
                    y=[name],
                    mode="markers",
                    marker=dict(size=11, color=color(i)),
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    hovertemplate=f"{name}<br>observed {'R' if key == 'R' else 'CV'} %{{x:.3f}}"
                    f"<br>corr(K, V) {c['corr_KV']:.3f}"
                    + (f"<br>p = {c['R_p']:.3g}" if key == "R" else "")
                    + "<extra></extra>",
                ),
                row=1,
                col=col,
            )
        table = scale_table(kv_parts(run.steps), REPORT_SCALES)
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
            col=3,
        )
    reference = dict(mode="lines", line=dict(color="#666", dash="dot", width=1), showlegend=False)
    if names:
        fig.add_trace(
            go.Scatter(x=[1.0, 1.0], y=[names[0], names[-1]], hoverinfo="skip", **reference), row=1, col=1
        )
    fig.add_trace(
        go.Scatter(
            x=[REPORT_SCALES[0], REPORT_SCALES[-1]],
            y=[PAPER_CV_THRESHOLD] * 2,
            hovertemplate="the paper's 13% threshold<extra></extra>",
            **reference,
        ),
        row=1,
        col=3,
    )
    for col in (1, 2):
        fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], type="category", row=1, col=col)
        fig.update_xaxes(range=padded_range(extent[col]), row=1, col=col)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    fig.update_xaxes(title_text="R [dimensionless; < 1: K and V compensate]", row=1, col=1)
    fig.update_xaxes(title_text="std(H) / mean(H) [dimensionless]", row=1, col=2)
    fig.update_xaxes(type="log", title_text="c (h → c·h) [dimensionless]", row=1, col=3)
    fig.update_yaxes(title_text="global CV of H", rangemode="tozero", row=1, col=3)
    caption = (
        "Beyond the paper (`ppmech.nulls`). Left: each run's pooled compensation ratio R (dot; scale-free, "
        "< 1 when K and V move against each other) and the 95% band of R with V permuted against K within "
        "each trajectory (the same values, the pairing gone). A dot left of its band means H is flatter "
        "than the same K and V unpaired; hover for the one-sided p and corr(K, V). Middle: the global CV of "
        "H (dot) against the shuffle-null CV (band): the CV the same K and V give with no compensation. "
        "Right: the global CV of H when h is rescaled by c, which adds 2 ln c to K and H and changes "
        "nothing else; the dotted line is the paper's 13% threshold, so where a curve crosses it the "
        "verdict depends on the units of h. The table below gives the numbers."
    )
    if skipped:
        caption += f" Too few trajectories for a null: {', '.join(skipped)}."
    return with_meta(
        fig, "Null models: is the conservation more than its parts?", caption, 220 + 40 * len(names)
    )
