"""``--track`` (the one home of the flag) and ``ppmech track``: log stored outputs to MLflow or W&B."""

from __future__ import annotations

import argparse
from typing import Any

TRACK_HELP = (
    "log the result to an experiment tracker: mlflow (./mlruns, or $MLFLOW_TRACKING_URI), mlflow:URI "
    "(a directory, file:, http(s)://), wandb or wandb:PROJECT (offline unless W&B is logged in); "
    "needs pip install 'ppmech[mlflow]' or 'ppmech[wandb]' (default: none)"
)


def add_track_arg(parser: argparse.ArgumentParser) -> None:
    """``--track``: every command whose output a tracker can hold (measure, steer, sweep, verify)."""
    parser.add_argument("--track", default=None, metavar="TRACKER", help=TRACK_HELP)


def print_tracked(tracked: Any) -> None:
    """Print what :mod:`ppmech.tracking` returned: a TrackedRun, a list of them, or ``None``."""
    for item in tracked if isinstance(tracked, list) else [tracked]:
        if item is not None:
            print(item.line())


def cmd_track(args: argparse.Namespace) -> int:
    from ppmech.errors import PPMechError
    from ppmech.tracking import log_path, parse_track

    spec = parse_track(args.track)
    if spec is None:
        raise PPMechError("no tracker given", "pass --track mlflow, --track mlflow:URI or --track wandb")
    for path in args.paths:
        print_tracked(log_path(spec, path))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "track",
        help="log stored runs, studies or ledgers to MLflow or W&B",
        description="Log what ppmech already wrote to an experiment tracker, without running anything: a "
        "run directory (measure or steer), a sweep's study directory (one parent run, one child per grid "
        "point) or a verify directory (the ledger). The same as --track on the command that wrote it.",
        epilog="example:\n  ppmech track runs/smol --track mlflow\n"
        "  ppmech track runs/study --track wandb:my-project",
    )
    p.add_argument("paths", nargs="+", help="run, study or verify directories")
    p.add_argument(
        "--track", required=True, metavar="TRACKER", help=TRACK_HELP.replace(" (default: none)", "")
    )
    p.set_defaults(func=cmd_track)
