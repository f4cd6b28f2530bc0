"""Figures and a self-contained HTML report over ppmech's outputs (``ppmech report``).

For notebooks, every figure is a plotly ``Figure``::

    from ppmech.runs import load_run
    from ppmech.report import figures
    run = load_run("runs/demo")
    figures.energy_vs_step({"demo": run}).show()

and :func:`build_report` writes the whole page (see :mod:`ppmech.report.build`).
"""

from __future__ import annotations

from ppmech.report import figures
from ppmech.report.build import ReportResult, build_figures, build_report
from ppmech.report.sources import detect, load_source, load_sources

__all__ = [
    "ReportResult",
    "build_figures",
    "build_report",
    "detect",
    "figures",
    "load_source",
    "load_sources",
]
