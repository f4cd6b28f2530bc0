"""The extra sections of ``claims.md``: the runs (Table 1 style), the per-run null models and
controls, CV by position and the per-layer tables. Reads stored runs and measurements only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ppmech import nulls as N
from ppmech.runs import Run
from ppmech.statistics import Estimate
from ppmech.tables import markdown_table


def run_row(name: str, run: Run, purpose: str) -> dict[str, Any]:
    s = run.summary["statistics"]
    c = run.config
    return {
        "run": name,
        "purpose": purpose,
        "corpus": c["corpus"],
        "decoding": c["decoding"],
        "dtype": c["dtype"],
        "context": c["context_tokens"],
        "prompts x tokens": f"{c['prompts']} x {c['new_tokens']}",
        "global CV": s["global_cv"],
        "mean traj CV": s["mean_trajectory_cv"],
        "mean H": s["mean_energy"],
        "K/V": s["kv_ratio"],
        "mean |dH|": s["mean_abs_dH"],
        "v=0 steps": s["n_zero_velocity"],
        "record s": run.summary.get("timing", {}).get("recording_seconds_this_session"),
    }


def sections(
    items: list[tuple[str, str, Run, str]],
    tables: dict[str, pd.DataFrame],
    sizes: Any,
    quick: bool,
    measurements: dict[str, Estimate],
) -> list[tuple[str, str]]:
    """The extra sections of ``claims.md``.

    Args:
        items: per run ``(run name, "model/condition" measurement prefix, run, purpose)``.
        tables: extra tables keyed ``"{run name}/{table}"``.
        sizes: the verify sizes (:class:`ppmech.claims.verify.plan.Sizes`).
        quick: quick mode (the verdicts are not meaningful).
        measurements: every measurement, keyed ``model/condition/metric``.
    """
    runs_frame = pd.DataFrame([run_row(name, run, purpose) for name, _, run, purpose in items])
    unit_free = unit_free_frame([key for _, key, _, _ in items], measurements)
    if len(unit_free):
        runs_frame = runs_frame.merge(unit_free, left_on="run", right_on="_run", how="left").drop(
            columns="_run"
        )
    out = [
        (
            "Runs (Table 1 style; point estimates from each run's summary.json)",
            markdown_table(runs_frame) + "\n\nAnalysis sizes: §C.5 interpolation on the first "
            f"{sizes.interp_trajectories} trajectories × {sizes.interp_pairs} random consecutive pairs each; "
            f"Euler–Lagrange on the first {sizes.el_trajectories} trajectories (all steps); per-layer on the "
            f"first {sizes.layer_trajectories} trajectories. Open-question runs use fewer prompts than the "
            "core runs (see the table); context length and precision run on SmolLM2 only. 'Precision' is "
            "bfloat16 versus float32 *compute* of the same dequantised Q4 weights — the embedded models ship "
            "in one quantisation only. Unit-free columns (unchanged by h → c·h): 1 − R, the share of "
            "Var(K) + Var(V) that the pairing of K with V removes from Var(H) (0: no compensation); "
            "CV / null CV, the global CV of H over its mean with V shuffled within trajectories "
            "(= std H / null std H; below 1: flatter than the same K and V unpaired)."
            + (" QUICK MODE: tiny runs, verdicts are not meaningful." if quick else ""),
        )
    ]
    nulls = null_frame([key for _, key, _, _ in items], measurements)
    if len(nulls):
        out.append(
            (
                "Null models and confounder controls, per run",
                markdown_table(nulls)
                + "\n\nR: Var(H)/(Var(K)+Var(V)) pooled [95% CI]; 1 − R: its unit-free complement; "
                "corr(K,V): Pearson, pooled; null R, null CV: mean of R and of the global CV of H with V "
                f"permuted within trajectories ({sizes.n_perm} permutations) [2.5–97.5%]; p: one-sided "
                "permutation p; CV / null CV: unit-free; CV at c: global CV of H with h → c·h; "
                "13% holds for c >: the paper's threshold holds for every c above this; R², held out: "
                "of K on the produced token, the input token, the step, token + step, and all three; "
                "R', p': on K with all three effects removed (cross-fitted); curvature: mean angle "
                "between consecutive velocities (°). Null models: "
                + "; ".join(f"{m.name} ({m.alters})" for m in N.registry())
                + ".",
            )
        )
    for name, table in tables.items():
        if name.endswith("/cv_by_position"):
            out.append((f"CV of H by position: {name.split('/')[0]}", markdown_table(table)))
    for name, table in tables.items():
        if name.endswith("/layers"):
            out.append((f"Per-layer mechanics (logit lens): {name.split('/')[0]}", markdown_table(table)))
    return out


def _cell(est: Estimate | None, ci: bool) -> str:
    if est is None or not np.isfinite(est.value):
        return "—"
    if ci and est.has_ci:
        return f"{est.value:.3g} [{est.low:.3g}, {est.high:.3g}]"
    return f"{est.value:.3g}"


def unit_free_frame(keys: list[str], measurements: dict[str, Estimate]) -> pd.DataFrame:
    """Per run (``_run`` is the run name ``model-condition``): 1 − R and CV / null CV, as text cells."""
    rows = []
    for key in keys:
        if f"{key}/null_one_minus_R" not in measurements:
            continue
        rows.append(
            {
                "_run": key.replace("/", "-"),
                "1 − R": _cell(measurements.get(f"{key}/null_one_minus_R"), True),
                "CV / null CV": _cell(measurements.get(f"{key}/null_cv_ratio"), True),
            }
        )
    return pd.DataFrame(rows)


def null_frame(keys: list[str], measurements: dict[str, Estimate]) -> pd.DataFrame:
    """The null models and controls of every ``model/condition`` in ``keys`` that has them, as text cells.

    Columns: every registered null model's (:func:`ppmech.nulls.columns`), then the curvature.
    """
    columns = [(c.header, c.key, c.ci) for c in N.columns()] + [("curvature (°)", "curvature_deg", True)]
    rows = []
    for key in keys:
        if f"{key}/null_R" not in measurements:
            continue
        row = {"run": key}
        for header, metric, ci in columns:
            row[header] = _cell(measurements.get(f"{key}/{metric}"), ci)
        rows.append(row)
    return pd.DataFrame(rows)
