"""``ppmech report``: figures and one self-contained HTML page over ppmech's outputs."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from ppmech.report import build_report

    result = build_report(
        args.paths,
        args.out,
        png_dir=args.png,
        trajectory=args.trajectory,
        term=args.term,
        title=args.title,
        overwrite=args.overwrite,
    )
    print(f"{len(result.figures)} figures from {len(result.sources)} inputs")
    if result.pngs:
        print(f"wrote {len(result.pngs)} PNGs to {args.png}")
    print(f"wrote {result.out} ({result.size_bytes / 1e6:.1f} MB, self-contained)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        epilog="example:\n  ppmech report runs/demo --out runs/demo/report.html",
        help="figures and a self-contained HTML report over runs, sweeps, verify, monitor, steering",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="run, sweep, verify, steer or evaluate-steering directories; monitor benchmark --json files; "
        "monitor score --json --tokens output (.jsonl)",
    )
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out (and --png's images) if ppmech wrote them; a file ppmech did not write is "
        "never replaced",
    )
    p.add_argument("--png", default=None, metavar="DIR", help="also write every figure as a PNG into DIR")
    p.add_argument("--trajectory", type=int, default=0, help="trajectory whose tokens are shown (default 0)")
    p.add_argument("--term", choices=["H", "K", "V"], default="H", help="what shades the tokens (default H)")
    p.add_argument("--title", default="ppmech report", help="page title")
    p.set_defaults(func=cmd_report)
