"""One self-contained HTML page: plotly.js inlined once, each figure's data inlined, no network fetch.

The page holds sections of blocks. A figure block is a ``<figure class="ppm-figure">``
with the plotly div and a ``<figcaption>``; a table block is a plain ``<table>``
whose cells carry ``data-col`` (the column name) so that tests and scripts can
read the numbers back.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ppmech.provenance import __version__
from ppmech.report.figures.common import caption_of
from ppmech.tables import fmt

PLOT_CONFIG = {"displaylogo": False, "responsive": True}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222; }
header { background: #1f3b57; color: #fff; padding: 16px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; opacity: .85; font-size: 13px; }
main { padding: 8px 32px 40px; max-width: 1280px; }
nav a { margin-right: 14px; font-size: 13px; }
section { margin-top: 28px; }
h2 { border-bottom: 2px solid #1f3b57; padding-bottom: 4px; font-size: 19px; }
figure.ppm-figure { margin: 18px 0 28px; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; }
figcaption { font-size: 13px; color: #444; margin-top: 6px; line-height: 1.4; }
.tablewrap { overflow-x: auto; margin: 10px 0 18px; }
table.ppm-table { border-collapse: collapse; font-size: 12.5px; }
table.ppm-table th, table.ppm-table td { border: 1px solid #ddd; padding: 3px 7px; vertical-align: top; }
table.ppm-table th { background: #f3f5f7; text-align: left; position: sticky; top: 0; }
table.ppm-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.verdict-supported td.verdict { background: #d4f4dd; }
tr.verdict-not-supported td.verdict { background: #f9d2d2; }
tr.verdict-inconclusive td.verdict { background: #fcefc7; }
tr.verdict-holds-only-in-these-units td.verdict { background: #fde0c2; }
tr.verdict-low-variance-without-compensation td.verdict { background: #e6dcf5; }
td.verdict { background: #e4e4e4; }
tr.status-failed td, tr.status-error td { background: #fbe3e3; }
.filter { margin: 8px 0; }
.filter input { font-size: 14px; padding: 4px 8px; width: 340px; }
.note { font-size: 13px; color: #555; }
.counts span { display: inline-block; margin-right: 10px; padding: 2px 8px; border-radius: 4px; }
"""

FILTER_JS = """
document.querySelectorAll('input.ppm-filter').forEach(function (box) {
  box.addEventListener('input', function () {
    var q = box.value.toLowerCase();
    var table = document.getElementById(box.dataset.table);
    var shown = 0;
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      var hit = tr.textContent.toLowerCase().indexOf(q) !== -1;
      tr.style.display = hit ? '' : 'none';
      if (hit) { shown += 1; }
    });
    var count = document.getElementById(box.dataset.table + '-shown');
    if (count) { count.textContent = shown + ' shown'; }
  });
});
"""


@dataclass
class Section:
    """A titled part of the page: an anchor id and its blocks of HTML, in order."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_block(fig: go.Figure, fid: str) -> str:
    """A figure with its caption; the plot is drawn by the page's single copy of plotly.js."""
    height = int(fig.layout.height or 450)
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=fid,
        default_height=f"{height}px",
        default_width="100%",
        config=PLOT_CONFIG,
    )
    return (
        f'<figure class="ppm-figure" id="{esc(fid)}-figure" data-figure="{esc(fid)}">{div}'
        f"<figcaption>{esc(caption_of(fig))}</figcaption></figure>"
    )


def table_block(
    rows: Sequence[Mapping[str, Any]],
    table_id: str,
    caption: str = "",
    row_classes: Sequence[str] | None = None,
    digits: int = 3,
    filter_box: bool = False,
) -> str:
    """A table of ``rows`` (dicts with the same keys); floats printed with :func:`ppmech.tables.fmt`."""
    if not rows:
        return f'<p class="note">{esc(caption)} (none)</p>'
    cols = list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes else ""
        cells = []
        for c in cols:
            value = row.get(c)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            klass = "num" if numeric else ""
            if c == "verdict":
                klass = "verdict"
            cells.append(f'<td class="{klass}" data-col="{esc(c)}">{esc(fmt(value, digits))}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    parts = []
    if filter_box:
        parts.append(
            f'<div class="filter"><input class="ppm-filter" type="search" data-table="{esc(table_id)}" '
            f'placeholder="filter rows (any text: id, model, verdict, claim ...)" aria-label="filter rows"> '
            f'<span class="note" id="{esc(table_id)}-shown">{len(rows)} shown</span></div>'
        )
    parts.append(
        f'<div class="tablewrap"><table class="ppm-table" id="{esc(table_id)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    if caption:
        parts.append(f'<p class="note">{esc(caption)}</p>')
    return "".join(parts)


def paragraph(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def page(title: str, sections: Iterable[Section], inputs: Sequence[str]) -> str:
    """The whole HTML document."""
    sections = list(sections)
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{"".join(s.blocks)}</section>' for s in sections
    )
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        # plotly.js, once for the whole page; the figures below only call Plotly.newPlot.
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{esc(title)}</h1><p>ppmech {esc(__version__)} · {created} · inputs: "
        f"{esc(', '.join(inputs))}</p></header><main><nav>{nav}</nav>{body}</main>"
        f"<script>{FILTER_JS}</script></body></html>\n"
    )
