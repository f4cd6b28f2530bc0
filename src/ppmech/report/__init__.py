"""Figures and a self-contained HTML report over ppmech's outputs (``ppmech report``).

For notebooks, every figure is a plotly ``Figure``::

    from ppmech.runs import load_run
    from ppmech.report import figures
    run = load_run("runs/demo")
    figures.energy_vs_step({"demo": run}).show()

and :func:`build_report` writes the whole page (see :mod:`ppmech.report.build`). The
names load on first use, so that the CLI can read :class:`ReportConfig` without plotly.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ReportConfig": "ppmech.report.config",
    "ReportResult": "ppmech.report.build",
    "build_figures": "ppmech.report.build",
    "build_report": "ppmech.report.build",
    "detect": "ppmech.report.sources",
    "load_source": "ppmech.report.sources",
    "load_sources": "ppmech.report.sources",
}

__all__ = [
    "ReportConfig",
    "ReportResult",
    "build_figures",
    "build_report",
    "detect",
    "figures",
    "load_source",
    "load_sources",
]


def __getattr__(name: str) -> Any:
    if name == "figures":
        return importlib.import_module("ppmech.report.figures")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ppmech.report' has no attribute {name!r}")
