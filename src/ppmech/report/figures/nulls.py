"""The "Runs" section's null-model figure and table: is the conservation more than its parts?

For each run: the pooled compensation ratio ``R = Var(H) / (Var(K) + Var(V))`` (below 1
when K and V move against each other) against its pairing-shuffle band, the global CV
of H against the CV the same K and V give unpaired (the shuffle-null CV), ``corr(K, V)``,
and the CV of H with ``h`` rescaled by ``c``.

The numbers are every registered null model's estimates (:func:`ppmech.nulls.registry`):
read from the run's ``summary.json`` where the run stored them (``nulls``), otherwise
computed here from ``steps.parquet`` by :func:`ppmech.nulls.run_nulls` (pure statistics
of stored steps: no model runs). The table's columns are the registry's, so a new null
model appears here without an edit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ppmech import nulls
from ppmech.errors import PPMechError
from ppmech.report.figures.common import color, kv_parts, need_runs, padded_range, with_meta
from ppmech.runs import Run
from ppmech.tables import fmt

#: Permutations and bootstrap replicates of the report's nulls when a run stores none
#: (fewer than verify's 1000: the smallest p is 1/201; a report stays quick).
REPORT_PERMUTATIONS = 200
REPORT_BOOT = 200
#: Scales of h drawn in the scale-null panel (log-spaced, the ledger's four among them).
REPORT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0)

#: An estimate as stored in JSON: ``value``, ``low``, ``high`` (None where undefined), ``n``, ``note``.
Estimates = dict[str, dict[str, Any]]


def _stored(run: Run) -> Estimates | None:
    """The null-model estimates the run's summary.json stores (``nulls``), if any."""
    stored = run.summary.get("nulls", run.summary.get("statistics", {}).get("nulls"))
    if isinstance(stored, dict) and isinstance(stored.get("null_R"), dict):
        return stored
    return None


def null_estimates(
    run: Run, n_perm: int = REPORT_PERMUTATIONS, n_boot: int = REPORT_BOOT, seed: int = 0
) -> tuple[Estimates, str]:
    """Every registered null model's estimates for ``run``, and where they came from.

    Returns:
        ``({key: estimate dict}, source)``; a null model that cannot be computed on this run
        (too few trajectories, a column an older run lacks) is left out and named in ``source``.
    """
    stored = _stored(run)
    if stored is not None:
        return stored, "summary.json"
    out: Estimates = {}
    missing = []
    for model in nulls.registry():
        try:
            result = model.compute(run.steps, n_boot=n_boot, seed=seed, n_perm=n_perm)
        except PPMechError as exc:  # e.g. too few trajectories for a null
            missing.append(f"{model.name}: {exc.problem}")
            continue
        except KeyError as exc:  # a run recorded before the column this null needs
            missing.append(f"{model.name}: steps.parquet has no column {exc}")
            continue
        out.update({k: e.to_dict() for k, e in result.estimates.items()})
    source = f"steps.parquet ({n_perm} permutations, {n_boot} bootstrap replicates, seed {seed})"
    return out, source + "".join(f"; no {m}" for m in missing)


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def controls(estimates: Estimates, observed_cv: float | None) -> dict[str, float] | None:
    """What the figure draws: R and its shuffle band, the CV and its shuffle band, corr(K, V).

    ``observed_cv`` is the run's global CV of H (summary.json). None without estimates.
    """
    if "null_R" not in estimates or "null_shuffle_null_R" not in estimates:
        return None
    band_r, band_cv = estimates["null_shuffle_null_R"], estimates["null_shuffle_null_cv"]
    return {
        "R": _num(estimates["null_R"]["value"]),
        "R_null_low": _num(band_r["low"]),
        "R_null_high": _num(band_r["high"]),
        "R_null": _num(band_r["value"]),
        "R_p": _num(estimates["null_shuffle_p"]["value"]),
        # The run's own global CV; the scale null's c = 1 row is the same number for a run without one.
        "cv": _num(
            observed_cv if observed_cv is not None else estimates.get("null_scale_cv_c1", {}).get("value")
        ),
        "cv_null": _num(band_cv["value"]),
        "cv_null_low": _num(band_cv["low"]),
        "cv_null_high": _num(band_cv["high"]),
        "corr_KV": _num(estimates["null_corr_KV"]["value"]),
    }


def _cell(est: dict[str, Any] | None, ci: bool) -> Any:
    if est is None or est.get("value") is None:
        return None
    if ci and est.get("low") is not None and est.get("high") is not None:
        return f"{fmt(est['value'], 3)} [{fmt(est['low'], 3)}, {fmt(est['high'], 3)}]"
    return est["value"]


def controls_rows(per_run: Mapping[str, tuple[Estimates, str]]) -> list[dict[str, Any]]:
    """One table row per run, one column per registered null-model column (with its CI where it has one)."""
    columns = nulls.columns()
    rows: list[dict[str, Any]] = []
    for name, (estimates, source) in per_run.items():
        row: dict[str, Any] = {"run": name}
        row.update({c.header: _cell(estimates.get(c.key), c.ci) for c in columns})
        row["from"] = source
        rows.append(row)
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
    computed: Mapping[str, tuple[Estimates, str]] | None = None,
) -> go.Figure:
    """Beyond the paper: R and the CV of H against their shuffle nulls, and the CV of H by scale.

    ``computed``: each run's :func:`null_estimates`, where the caller already has them.
    """
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
        if computed is not None and name in computed:
            estimates = computed[name][0]
        else:
            estimates = null_estimates(run, n_perm, seed=seed)[0]
        c = controls(estimates, run.summary.get("statistics", {}).get("global_cv"))
        if c is None:
            skipped.append(name)
            continue
        fig.add_trace(_band(c["R_null"], c["R_null_low"], c["R_null_high"], name, not shown_null, "R"), 1, 1)
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
        table = nulls.scale_table(kv_parts(run.steps), REPORT_SCALES)
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
            y=[nulls.PAPER_CV_THRESHOLD] * 2,
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
