"""``ppmech sweep``: run a study (a grid of ``measure`` runs) on Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ppmech.cli.track import add_track_arg, print_tracked
from ppmech.errors import PPMechError
from ppmech.tables import text_table


def _study(args: argparse.Namespace) -> Any:
    from ppmech.sweep import load_study, preset_study

    if (args.study is None) == (args.preset is None):
        raise PPMechError(
            "give a study file or --preset, not both" if args.study else "no study given",
            "run `ppmech sweep STUDY.toml --out DIR` or `ppmech sweep --preset paper-table1 --out DIR`",
        )
    if args.preset:
        return preset_study(args.preset, args.set)
    return load_study(args.study, args.set)


def cmd_sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppmech.sweep import SweepOptions, sweep
    from ppmech.sweep.outputs import counts_line
    from ppmech.sweep.reuse import plan

    for flag, value in (("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus)):
        if value is not None and value < (1 if flag == "--num-cpus" else 0):
            raise PPMechError(f"{flag} must be at least {1 if flag == '--num-cpus' else 0}", "fix the value")
    if not args.join_timeout > 0:
        raise PPMechError(
            f"--join-timeout must be more than 0 seconds (got {args.join_timeout:g})", "use e.g. 30"
        )
    if args.address and (args.num_cpus is not None or args.num_gpus is not None):
        raise PPMechError(
            "--num-cpus/--num-gpus size a local Ray instance, not a cluster joined with --address",
            "drop them; the cluster's own resources are used",
        )
    if not args.out.strip():
        raise PPMechError("--out is empty", "give --out a study directory")
    study = _study(args)
    out = Path(args.out)
    if args.dry_run:
        states = plan(study, out) if out.is_dir() else {}
        frame = pd.DataFrame(
            [
                {
                    "run": r.name,
                    "model": r.config.model,
                    "weights": r.config.weights,
                    "state": states[r.name].state if r.name in states else "missing",
                    "note": states[r.name].reason if r.name in states else "",
                }
                for r in study.runs
            ]
        )
        print(text_table(frame, title=f"Study {study.name}: {len(study.runs)} runs (dry run)"))
        return 0
    from ppmech.tracking import log_study, parse_track

    track = parse_track(args.track)  # checked before Ray starts: a bad --track costs no runs
    options = SweepOptions(
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        work_dir=args.work_dir,
        replace=args.replace,
        progress=not args.no_progress,
        join_timeout=args.join_timeout,
    )
    try:
        result = sweep(study, out, options)
    except KeyboardInterrupt:
        print(
            f"ppmech: sweep interrupted; finished runs are in {out / 'runs'} and {out / 'study.parquet'}; "
            "run the same command again to do the rest",
            file=sys.stderr,
        )
        return 130
    t = result.tables
    # Tables 1, 2, 4 and 5, as in tables.md (docs/sweep.md).
    print(text_table(t["table1"], title=f"\nStudy {study.name}: Table 1 style (H = K + V)"))
    if len(t["table2"]):
        print(text_table(t["table2"], title="\nTable 2 style: K/V by weights"))
    if len(t["table4"]):
        print(text_table(t["table4"], digits=4, title="\nTable 4 style: local conservation of H"))
    if len(t["table5"]):
        print(text_table(t["table5"], digits=4, title="\nTable 5 style: correlation with parameter count"))
    else:
        print("\nTable 5 style: no family has two or more sizes measured with the same settings")
    if len(t["failures"]):
        print(text_table(t["failures"], title="\nRuns not complete"))
    print(f"\n{counts_line(result.frame)}; {result.wall_seconds:.0f} s")
    print(f"wrote {out / 'study.parquet'}, {out / 'tables.md'} and {out / 'runs'}/")
    print_tracked(log_study(track, out))  # one parent run, one child per grid point
    return 1 if result.failed else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        epilog="example:\n  ppmech sweep examples/embedded-study.toml --out runs/study",
        help="run a study (models x weights x settings) on Ray",
        description="Run every measure run of a study on Ray (a local instance, or a cluster with "
        "--address) and write OUT/runs/<run>/, OUT/study.parquet and OUT/tables.md. Finished runs "
        "are reused; rerun the same command to resume. Exit status 1 if any run failed. "
        "Schema: docs/sweep.md.",
    )
    p.add_argument("study", nargs="?", default=None, help="the study file (TOML)")
    p.add_argument(
        "--preset", default=None, help="a built-in study instead of a file: paper-table1 (default: none)"
    )
    p.add_argument("--out", required=True, help="study directory (created if missing)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key in TOML syntax, e.g. --set prompts=10 --set resources.gpus=0.5",
    )
    p.add_argument(
        "--address",
        default=None,
        help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray instance (default: all)")
    p.add_argument("--work-dir", default=None, help="scratch directory on each worker (default: system temp)")
    p.add_argument(
        "--join-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up joining the cluster of --address after this long",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="re-record runs made with other protocol settings (never deletes files ppmech did not write)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and which are done; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_track_arg(p)
    p.set_defaults(func=cmd_sweep)
