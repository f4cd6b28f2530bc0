"""``ppmech report``: figures and one self-contained HTML page over ppmech's outputs."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from ppmech.cli.config import config_from_args
    from ppmech.report import build_report
    from ppmech.report.config import ReportConfig

    # Paths on the command line replace the file's list; none given: the file's (or none).
    given = {"paths": tuple(args.cli_paths)} if args.cli_paths else {}
    config = config_from_args(ReportConfig, args, **given)
    result = build_report(
        config.paths,
        config.out,
        png_dir=config.png,
        trajectory=config.trajectory,
        term=config.term,
        title=config.title,
        overwrite=config.overwrite,
    )
    print(f"{len(result.figures)} figures from {len(result.sources)} inputs")
    if result.pngs:
        print(f"wrote {len(result.pngs)} PNGs to {config.png}")
    print(f"wrote {result.out} ({result.size_bytes / 1e6:.1f} MB, self-contained)")
    return 0


def register(sub: Any) -> None:
    from ppmech.cli.config import add_config_file_flag, add_config_flags
    from ppmech.report.config import ReportConfig
    from ppmech.settings import help_of

    p = sub.add_parser(
        "report",
        epilog="example:\n  ppmech report runs/demo --out runs/demo/report.html",
        help="figures and a self-contained HTML report over runs, sweeps, verify, monitor, steering",
    )
    p.add_argument("cli_paths", nargs="*", metavar="PATH", help=help_of(ReportConfig, "paths"))
    add_config_file_flag(p)
    add_config_flags(p, ReportConfig)
    p.set_defaults(func=cmd_report)
