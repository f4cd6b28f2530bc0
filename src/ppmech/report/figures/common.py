"""What every figure module shares: units and labels, the layout, captions, and per-step frames.

Units: ``V_t = −ln p(x_t)`` is in nats. ``K_t = ln(½‖h_t − h_{t−1}‖²)`` is a log, so it
is in nats too, of a squared distance measured in the hidden state's own units (its
level therefore shifts by ``2 ln c`` when ``h`` is rescaled by ``c``). ``H_t = K_t + V_t``
is in nats. Step 0 has no velocity, so its K and H are undefined; zero-velocity
steps (``K = −inf``) are left out of every picture of K and H, as they are of the
statistics.

Plotly draws its own text (titles, axes, hover) from a small HTML subset, so labels
use ``<sub>``; captions are plain text on the page, so they use Unicode subscripts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ppmech.errors import PPMechError
from ppmech.runs import Run
from ppmech.statistics import cv

PALETTE = qualitative.Plotly

#: Subplot titles (plotly text): each term's definition and unit.
TERM_LABEL = {
    "H": "H<sub>t</sub> = K<sub>t</sub> + V<sub>t</sub>  [nats]",
    "K": "K<sub>t</sub> = ln(½‖h<sub>t</sub> − h<sub>t−1</sub>‖²)  [nats; h in hidden-state units]",
    "V": "V<sub>t</sub> = −ln p(x<sub>t</sub>)  [nats]",
}
#: Axis titles (plotly text): the term and its unit.
TERM_AXIS = {"H": "H [nats]", "K": "K [nats]", "V": "V [nats]"}
#: The same in captions (plain text).
TERM_UNITS = {
    "H": "H = K + V in nats",
    "K": "K = ln(½‖hₜ − hₜ₋₁‖²) in nats, of a squared distance in the hidden state's own units",
    "V": "V = −ln p(xₜ) in nats",
}
BASE_LAYOUT: dict[str, Any] = dict(
    template="plotly_white",
    margin=dict(l=70, r=20, t=60, b=55),
    legend=dict(yanchor="top", y=1, xanchor="left", x=1.01),
    font=dict(size=12),
)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def with_meta(fig: go.Figure, title: str, caption: str, height: int) -> go.Figure:
    """The shared layout, the title, the height in px and the caption (``layout.meta["caption"]``)."""
    fig.update_layout(**BASE_LAYOUT)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", y=0.99, yanchor="top"), height=height)
    fig.update_layout(meta={"caption": caption})
    return fig


def caption_of(fig: go.Figure) -> str:
    """The caption stored in ``layout.meta`` (empty if none)."""
    meta = fig.layout.meta
    return str(meta.get("caption", "")) if isinstance(meta, dict) else ""


def need_runs(runs: Mapping[str, Run]) -> None:
    if not runs:
        raise PPMechError("this figure needs at least one run", "pass a run directory")


def token_label(token: str) -> str:
    """A token as one visible cell: a space as ·, a newline as ⏎, a tab as ⇥, empty as ∅."""
    return token.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"


def padded_range(values: Iterable[float | None], log: bool = False) -> list[float] | None:
    """An axis range around ``values`` with a margin, or None to let plotly choose.

    Plotly's own range for a single value (or identical ones) is a fixed width
    around it (−0.5 to 1 for one point at 0.11). Here the margin is 15% of the
    spread, and at least 10% of the value's size when the spread is nil. For a log
    axis the range is in log10 units, as plotly wants it.
    """
    x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    if log:
        x = np.log10(x[x > 0])
    if not x.size:
        return None
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo
    pad = 0.15 * span if span > 0 else max(0.1 * abs(lo), 0.3 if log else 1e-3)
    return [lo - pad, hi + pad]


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


def kv_parts(steps: pd.DataFrame) -> list[np.ndarray]:
    """Per trajectory ``[n_i, 2]`` float64 (``K``, ``V``) in step order (nulls as NaN)."""
    t = terms(steps)
    cuts = np.flatnonzero(np.diff(t["trajectory"].to_numpy())) + 1
    return list(np.split(t[["K", "V"]].to_numpy(dtype=np.float64), cuts))
