"""``--png DIR``: each report figure drawn again by matplotlib and saved as a PNG.

plotly's own static export needs a Chrome build; matplotlib needs nothing beyond
pip. :func:`to_matplotlib` redraws a plotly figure from its traces: the trace
kinds the report uses (scatter lines, markers, text, filled bands, error bars;
histograms; heatmaps with cell text), its subplot grid (from the axis domains),
axis titles and scales, annotations and the legend. Any other trace kind is an
error rather than a silently missing plot.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from plotly.colors import get_colorscale, hex_to_rgb, unlabel_rgb

from ppmech.report.figures import caption_of

WIDTH_PX = 1200
DPI = 100
DASHES = {"dash": "--", "dot": ":", "dashdot": "-.", "solid": "-", None: "-"}
SYMBOLS = {"circle": "o", "x": "x", "diamond": "D", "circle-open": "o", "square": "s", None: "o"}


def plain(text: Any) -> str:
    """Plotly's HTML-ish text as plain text (``<sub>t</sub>`` becomes ``_t``)."""
    s = re.sub(r"<sub>(.*?)</sub>", r"_\1", str(text or ""))
    s = re.sub(r"<sup>(.*?)</sup>", r"^\1", s)
    s = re.sub(r"<br\s*/?>", " ", s)
    return re.sub(r"<[^>]+>", "", s)


def _axis_key(ref: str | None, letter: str) -> str:
    ref = ref or letter
    return f"{letter}axis{ref[1:]}"


def _layout_axis(fig: go.Figure, key: str) -> Any:
    # plotly's Layout has no .get()
    return fig.layout[key] if key in fig.layout else None  # noqa: SIM401


def _domain(axis: Any) -> tuple[float, float]:
    if axis is None or axis.domain is None:
        return 0.0, 1.0
    return float(axis.domain[0]), float(axis.domain[1])


def _segments(x: list[Any], y: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    """Split at ``None`` (plotly's line breaks) into runs of points."""
    out: list[tuple[list[Any], list[Any]]] = []
    cx: list[Any] = []
    cy: list[Any] = []
    for a, b in zip(x, y, strict=False):
        if a is None or b is None:
            if cx:
                out.append((cx, cy))
            cx, cy = [], []
        else:
            cx.append(a)
            cy.append(b)
    if cx:
        out.append((cx, cy))
    return out


def _values(data: Any) -> list[Any]:
    if data is None:
        return []
    return [None if (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(data, dtype=object)]


def _scatter(ax: Axes, tr: Any) -> Any:
    x, y = _values(tr.x), _values(tr.y)
    if not x and y:
        x = list(range(len(y)))
    col = (tr.line.color if tr.line and tr.line.color else None) or (
        tr.marker.color if tr.marker and isinstance(tr.marker.color, str) else None
    )
    alpha = tr.opacity if tr.opacity is not None else 1.0
    mode = tr.mode or "lines"
    handle: Any = None
    if tr.fill == "toself":
        for sx, sy in _segments(x, y):
            handle = ax.fill(sx, sy, color=tr.fillcolor or col, alpha=alpha, linewidth=0)[0]
        return handle
    for sx, sy in _segments(x, y):
        if "lines" in mode:
            width = tr.line.width if tr.line and tr.line.width is not None else 2
            handle = ax.plot(
                sx, sy, color=col, linestyle=DASHES.get(tr.line.dash, "-"), linewidth=width * 0.75
            )[0]
        if "markers" in mode:
            symbol = tr.marker.symbol if tr.marker else None
            size = tr.marker.size if tr.marker and isinstance(tr.marker.size, int | float) else 6
            mopacity = tr.marker.opacity if tr.marker and tr.marker.opacity is not None else alpha
            marker = SYMBOLS.get(symbol, "o")
            style: dict[str, Any] = {}
            if isinstance(symbol, str) and symbol.endswith("-open"):
                style = {"facecolors": "none", "edgecolors": col}
            elif col is not None:
                style = {"color": col}
            handle = ax.scatter(
                sx, sy, s=float(size) ** 2 * 0.6, marker=marker, alpha=mopacity, zorder=3, **style
            )
        if "text" in mode and tr.text is not None:
            labels = [tr.text] * len(sx) if isinstance(tr.text, str) else list(tr.text)
            for a, b, label in zip(sx, sy, labels, strict=False):
                ax.annotate(
                    plain(label), (a, b), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8
                )
    for err, axis in ((tr.error_x, "x"), (tr.error_y, "y")):
        if err is None or err.visible is False or err.array is None:
            continue
        hi = np.asarray(err.array, dtype=float)
        lo = np.asarray(err.arrayminus, dtype=float) if err.arrayminus is not None else hi
        points = [(a, b) for a, b in zip(x, y, strict=False) if a is not None and b is not None]
        if not points:
            continue
        px, py = zip(*points, strict=True)
        bars = np.vstack([lo, hi])
        ax.errorbar(
            list(px),
            list(py),
            xerr=bars if axis == "x" else None,
            yerr=bars if axis == "y" else None,
            fmt="none",
            ecolor=err.color or col,
            capsize=3,
        )
    return handle


def _histogram(ax: Axes, tr: Any) -> Any:
    x = np.asarray(tr.x, dtype=float)
    bins: Any = "auto"
    if tr.xbins is not None and tr.xbins.size:
        bins = np.arange(tr.xbins.start, tr.xbins.end + tr.xbins.size, tr.xbins.size)
    col = tr.marker.color if tr.marker else None
    patches: Any
    _, _, patches = ax.hist(
        x, bins=bins, density=tr.histnorm == "probability density", color=col, alpha=tr.opacity or 1.0
    )
    return patches[0] if len(patches) else None


def _colormap(scale: Any) -> LinearSegmentedColormap:
    """plotly's colorscale (``[(position, colour), ...]``) as the same matplotlib colormap."""
    if isinstance(scale, str):
        scale = get_colorscale(scale)
    if not scale:
        scale = get_colorscale("Viridis")
    stops = []
    for position, colour in scale:
        rgb = hex_to_rgb(colour) if str(colour).startswith("#") else unlabel_rgb(colour)
        stops.append((float(position), tuple(float(v) / 255 for v in rgb[:3])))
    return LinearSegmentedColormap.from_list("plotly", stops)


def _heatmap(ax: Axes, tr: Any, reversed_y: bool, fig: Figure) -> None:
    z = np.asarray(tr.z, dtype=float)
    cmap = _colormap(tr.colorscale)
    image = ax.imshow(
        np.ma.masked_invalid(z),
        aspect="auto",
        cmap=cmap,
        vmin=tr.zmin,
        vmax=tr.zmax,
        origin="upper" if reversed_y else "lower",
        interpolation="nearest",
    )
    if tr.text is not None and tr.texttemplate:
        text = np.asarray(tr.text, dtype=object)
        for (r, c), label in np.ndenumerate(text):
            if label is None or label == "":
                continue
            value = z[r, c]
            dark = False
            if np.isfinite(value):
                red, green, blue, _ = cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                c, r, plain(label), ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )
    if tr.x is not None:
        ax.set_xticks(range(len(tr.x)), [plain(v) for v in tr.x], rotation=35, ha="right")
    if tr.y is not None:
        ax.set_yticks(range(len(tr.y)), [plain(v) for v in tr.y])
    if tr.showscale is not False:
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)


def to_matplotlib(fig: go.Figure) -> Figure:
    """Redraw ``fig`` with matplotlib (see the module docstring)."""
    height_px = int(fig.layout.height or 450) + 40
    out = plt.figure(figsize=(WIDTH_PX / DPI, height_px / DPI), dpi=DPI)
    # Room on the left for the longest category label (run names, detector names).
    longest = max(
        (
            len(v)
            for tr in fig.data
            if tr.type in ("scatter", "heatmap")
            for v in (tr.y if tr.y is not None else [])
            if isinstance(v, str)
        ),
        default=0,
    )
    left = min(0.3, max(0.08, 0.02 + 0.0065 * longest))
    right, bottom, top = 0.80, 70 / height_px, 1 - 70 / height_px
    axes: dict[tuple[str, str], Axes] = {}
    handles: dict[str, Any] = {}

    def axes_for(tr: Any) -> tuple[Axes, Any, Any]:
        xk, yk = _axis_key(tr.xaxis, "x"), _axis_key(tr.yaxis, "y")
        xa, ya = _layout_axis(fig, xk), _layout_axis(fig, yk)
        if (xk, yk) not in axes:
            x0, x1 = _domain(xa)
            y0, y1 = _domain(ya)
            rect = (
                left + x0 * (right - left),
                bottom + y0 * (top - bottom),
                (x1 - x0) * (right - left) * 0.96,
                (y1 - y0) * (top - bottom) * 0.9,
            )
            axes[(xk, yk)] = out.add_axes(rect)
        return axes[(xk, yk)], xa, ya

    for tr in fig.data:
        if tr.type not in ("scatter", "histogram", "heatmap"):
            raise TypeError(f"to_matplotlib cannot draw a {tr.type} trace")
        ax, xa, ya = axes_for(tr)
        reversed_y = ya is not None and ya.autorange == "reversed"
        if tr.type == "scatter":
            handle = _scatter(ax, tr)
        elif tr.type == "histogram":
            handle = _histogram(ax, tr)
        else:
            _heatmap(ax, tr, reversed_y, out)
            handle = None
        if handle is not None and tr.name and tr.showlegend is not False and tr.name not in handles:
            handles[plain(tr.name)] = handle

    for (xk, yk), ax in axes.items():
        xa, ya = _layout_axis(fig, xk), _layout_axis(fig, yk)
        for axis, setter, scale in ((xa, ax.set_xlabel, ax.set_xscale), (ya, ax.set_ylabel, ax.set_yscale)):
            if axis is None:
                continue
            if axis.title and axis.title.text:
                setter(plain(axis.title.text))
            if axis.type == "log":
                scale("log")
        if ya is not None and ya.autorange == "reversed" and not any(im for im in ax.images):
            ax.invert_yaxis()
        if xa is not None and xa.showticklabels is False:
            ax.set_xticks([])
        if ya is not None and ya.showticklabels is False:
            ax.set_yticks([])
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=8)

    for ann in fig.layout.annotations or []:
        if ann.xref == "paper" and ann.yref == "paper":
            out.text(
                left + ann.x * (right - left),
                bottom + ann.y * (top - bottom),
                plain(ann.text),
                ha="center",
                va="bottom",
                fontsize=10,
            )
        else:
            key = (_axis_key(ann.xref, "x"), _axis_key(ann.yref, "y"))
            if key in axes:
                axes[key].annotate(plain(ann.text), (ann.x, ann.y), fontsize=7, color="#555")
    title = fig.layout.title.text if fig.layout.title else None
    if title:
        out.suptitle(plain(title), x=0.01, ha="left", y=1 - 12 / height_px, va="top", fontsize=13)
    if handles:
        out.legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(right + 0.01, top),
            fontsize=8,
            frameon=False,
        )
    return out


def write_pngs(figures: dict[str, go.Figure], directory: Path) -> list[Path]:
    """Write ``<id>.png`` for each figure (with its caption in the PNG's metadata); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fid, fig in figures.items():
        drawn = to_matplotlib(fig)
        path = directory / f"{fid}.png"
        tmp = directory / f".{fid}.png.tmp"
        try:
            drawn.savefig(tmp, format="png", metadata={"Description": caption_of(fig)})
            tmp.replace(path)
        finally:
            plt.close(drawn)
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths
