"""Plain-text and markdown tables for the terminal and the README."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd


def fmt(value: Any, digits: int = 3) -> str:
    """Format a cell: floats to ``digits`` decimals, missing as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def text_table(frame: pd.DataFrame, digits: int = 3, title: str | None = None) -> str:
    """A fixed-width table with a header rule, right-aligned numbers."""
    headers = [str(c) for c in frame.columns]
    rows = [[fmt(v, digits) for v in row] for row in frame.itertuples(index=False)]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table."""
    headers = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def with_ci(value: float | None, ci: dict[str, float] | None, digits: int = 3) -> str:
    """``value [low, high]``."""
    if ci is None or ci.get("low") is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(ci['low'], digits)}, {fmt(ci['high'], digits)}]"


def run_row(summary: dict[str, Any]) -> dict[str, Any]:
    """One Table-1-style row from a run's ``summary.json``."""
    s = summary["statistics"]
    cfg = summary["config"]
    return {
        "model": cfg["model"],
        "weights": cfg["weights"],
        "decoding": cfg["decoding"],
        "N": s["n_trajectories"],
        "global CV [95% CI]": with_ci(s["global_cv"], s.get("global_cv_ci")),
        "mean traj CV": s["mean_trajectory_cv"],
        "traj-mean CV": s["trajectory_mean_cv"],
        "mean H [95% CI]": with_ci(s["mean_energy"], s.get("mean_energy_ci"), 2),
        "mean K": s["mean_K"],
        "mean V": s["mean_V"],
        "K/V": s["kv_ratio"],
        "<dH>": s["mean_dH"],
        "<|dH|>": s["mean_abs_dH"],
        "drift": s["drift"],
        "v=0 steps": s["n_zero_velocity"],
    }


def compare_frame(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Table 1 / Table 4 style comparison of several runs."""
    return pd.DataFrame([run_row(s) for s in summaries])
