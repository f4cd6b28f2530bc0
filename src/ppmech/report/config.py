"""``ReportConfig``: the settings of ``ppmech report``, declared once (flags, ``--config`` files).

Keys of a report's TOML file are these field names (``paths``, ``out``, ``png``,
``trajectory``, ``term``, ``title``, ``overwrite``); flags given on the command line
override the file (:func:`ppmech.cli.config.config_from_args`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ppmech.settings import Role, setting


@dataclass(frozen=True)
class ReportConfig:
    """What ``ppmech report`` reads, draws and writes."""

    paths: tuple[str, ...] = setting(
        (),
        role=Role.PROTOCOL,
        help="run, sweep, verify, steer or evaluate-steering directories; monitor benchmark --json files; "
        "monitor score --json --tokens output (.jsonl)",
        cli=False,  # the command's positional arguments
    )
    out: str = setting("report.html", role=Role.BOOKKEEPING, help="the HTML file to write")
    png: str | None = setting(
        None,
        role=Role.BOOKKEEPING,
        help="also write every figure as a PNG into DIR (needs ppmech[png] and Chromium)",
        metavar="DIR",
    )
    trajectory: int = setting(0, role=Role.ANALYSIS, help="trajectory whose tokens are shown")
    term: str = setting("H", role=Role.ANALYSIS, help="what shades the tokens", choices=("H", "K", "V"))
    title: str = setting("ppmech report", role=Role.BOOKKEEPING, help="page title")
    overwrite: bool = setting(
        False,
        role=Role.BOOKKEEPING,
        help="replace --out (and --png's images) if ppmech wrote them; a file ppmech did not write is "
        "never replaced",
    )
