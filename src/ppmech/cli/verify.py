"""``ppmech verify`` (the claims ledger) and ``ppmech analyze`` (per-run analyses)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ppmech.cli.config import config_from_args
from ppmech.cli.measure import add_device_arg, device_name
from ppmech.cli.track import add_track_arg, print_tracked
from ppmech.errors import PPMechError
from ppmech.provenance import json_safe
from ppmech.tables import fmt, markdown_table, text_table

if TYPE_CHECKING:
    from ppmech.claims.verify import VerifyConfig


def verify_config(args: argparse.Namespace) -> VerifyConfig:
    """The :class:`~ppmech.claims.verify.VerifyConfig` of parsed ``verify`` flags (omitted: its defaults)."""
    from ppmech.artifacts import output_path
    from ppmech.claims.verify import VerifyConfig

    overrides: dict[str, Any] = {}
    if "out" in args:
        overrides["out"] = str(output_path(args.out, VerifyConfig.out))
    if "models" in args:
        overrides["models"] = tuple(args.models)
    if args.no_extras:
        overrides["extras"] = False
    return config_from_args(VerifyConfig, args, **overrides)


def cmd_verify(args: argparse.Namespace) -> int:
    from ppmech.claims.verify import summary_frame, verify
    from ppmech.tracking import log_ledger, parse_track

    track = parse_track(args.track)  # checked before the runs: a bad --track costs no recording
    config = verify_config(args)
    argv = sys.argv[1:]
    command = (
        "ppmech " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["verify"] else "ppmech verify"
    )
    result = verify(config, progress=not args.no_progress, command=command.strip())
    print(text_table(summary_frame(result), title="\nClaims ledger"))
    from ppmech.claims.rules import VERDICTS

    counts = result.ledger["verdict"].value_counts().to_dict() if len(result.ledger) else {}
    shown = [v for v in VERDICTS if counts.get(v) or v in VERDICTS[:3]]
    print("\n" + ", ".join(f"{counts.get(v, 0)} {v}" for v in shown) + f"; {result.wall_seconds:.0f} s")
    print(f"wrote {result.out / 'claims.md'} and {result.out / 'claims.json'}")
    print_tracked(log_ledger(track, result.out))
    return 0


def _est_rows(run_name: str, est: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for k, e in est.items():
        rows.append(
            {
                "run": run_name,
                "measure": k,
                "value": e.value,
                "CI low": e.low,
                "CI high": e.high,
                "n": e.n,
            }
        )
    return rows


def cmd_analyze(args: argparse.Namespace) -> int:
    from ppmech.artifacts import check_output_file, write_output_file
    from ppmech.claims import analyses as A
    from ppmech.claims.verify import (
        Sizes,
        curvature_analysis,
        hidden_analyses,
        layer_analysis,
        model_for_run,
        null_analyses,
        scaling_from_runs,
        steps_analyses,
    )
    from ppmech.errors import check_seed
    from ppmech.runs import load_run

    check_seed(args.seed)
    if args.device is not None and not (args.hidden or args.layers):
        # Accepting it would suggest the analyses ran there; without --hidden/--layers they read
        # the stored steps and load no model.
        raise PPMechError(
            f"--device {args.device} is used only by --hidden and --layers, which load the model; "
            "the other analyses read the stored steps",
            "drop --device, or add --hidden or --layers",
        )
    # The output rule (ppmech.artifacts): --json and --markdown are checked before any analysis.
    outputs = {"json": args.json, "markdown": args.markdown}
    for kind, path in outputs.items():
        if path is not None:
            check_output_file(path, kind=kind, replace=args.overwrite, flag=f"--{kind}")
    for flag, value, least in (
        ("--n-boot", args.n_boot, 0),
        ("--trajectories", args.trajectories, 1),
        ("--pairs", args.pairs, 1),
        ("--layers", args.layers, 0),
        ("--window", args.window, 0),
        ("--n-perm", args.n_perm, 1),
    ):
        if value < least:
            raise PPMechError(f"{flag} must be at least {least} (got {value})", "see `ppmech analyze --help`")
    runs = [load_run(d) for d in args.runs]
    if args.correlate:
        frame, corr = scaling_from_runs(runs, args.correlate)
        print(text_table(frame))
        print(f"\nPearson r = {corr.r:.4f}, p = {corr.p:.4g} (n = {corr.n} runs)")
        if args.json is not None:
            write_output_file(
                args.json,
                json_safe(
                    {
                        "metric": args.correlate,
                        "r": corr.r,
                        "p": corr.p,
                        "n": corr.n,
                        "runs": frame.to_dict("records"),
                    }
                ),
                kind="json",
                replace=args.overwrite,
                flag="--json",
            )
            print(f"\nwrote {args.json}")
        return 0

    sizes = Sizes(
        interp_trajectories=args.trajectories,
        el_trajectories=args.trajectories,
        interp_pairs=args.pairs,
    )
    rows: list[dict[str, Any]] = []
    out_json: dict[str, Any] = {}
    for run in runs:
        name = str(run.path)
        est = steps_analyses(run, args.n_boot, args.seed)
        scale = None
        if not args.no_nulls:
            nulls, scale = null_analyses(run, args.n_boot, args.seed, args.n_perm)
            est.update(nulls)
            print(f"\n{name}: {conservation_line(nulls)}")
            if (run.path / "hidden").is_dir():
                est.update(curvature_analysis(run, args.n_boot, args.seed))
        layers = None
        if args.hidden or args.layers:
            lm = model_for_run(run, args.device or "auto")
            if args.hidden:
                est.update(hidden_analyses(run, lm, sizes, args.n_boot, args.seed))
            if args.layers:
                layers = layer_analysis(run, lm, args.layers)
        rows += _est_rows(name, est)
        out_json[name] = {"estimates": {k: v.to_dict() for k, v in est.items()}}
        if scale is not None:
            print(text_table(scale, title=f"\nScale null (h → c·h): {name}"))
            out_json[name]["scale"] = json.loads(scale.to_json(orient="records"))
        if layers is not None:
            print(text_table(layers, title=f"\nPer-layer mechanics (logit lens): {name}"))
            out_json[name]["layers"] = json.loads(layers.to_json(orient="records"))
        if args.window:
            h = [p[:, 0] for p in A.split_by_trajectory(run.steps, ["H"])]
            windows = A.cv_by_position(h, args.window, args.n_boot, args.seed)
            print(text_table(windows, title=f"\nCV of H by position: {name}"))
            out_json[name]["cv_by_position"] = json.loads(windows.to_json(orient="records"))
    frame = pd.DataFrame(rows)
    frame["value"] = frame["value"].astype(np.float64)
    print(text_table(frame, digits=4, title="\nAnalyses (95% trajectory-bootstrap CIs)"))
    if args.json is not None:
        write_output_file(args.json, json_safe(out_json), kind="json", replace=args.overwrite, flag="--json")
        print(f"\nwrote {args.json}")
    if args.markdown is not None:
        text = markdown_table(frame, digits=4) + "\n"
        write_output_file(args.markdown, text, kind="markdown", replace=args.overwrite, flag="--markdown")
        print(f"wrote {args.markdown}")
    return 0


def conservation_line(est: dict[str, Any]) -> str:
    """R with its pairing-shuffle band, the shuffle-null CV, corr(K, V) and the unit-free measures."""

    def f(key: str, ci: bool = True) -> str:
        e = est.get(key)
        if e is None or not np.isfinite(e.value):
            return "—"
        return f"{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]" if ci and e.has_ci else f"{e.value:.3g}"

    band = est.get("null_shuffle_null_R")
    band_text = f"[{band.low:.3g}, {band.high:.3g}]" if band is not None and band.has_ci else "—"
    return (
        f"R = {f('null_R')} (shuffle band {band_text}, p = {f('null_shuffle_p', False)}); "
        f"shuffle-null CV {f('null_shuffle_null_cv')}; corr(K, V) {f('null_corr_KV')}; "
        f"1 − R {f('null_one_minus_R')}; CV / null CV {f('null_cv_ratio')}"
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="test every claim of the paper and write the claims ledger",
        config="ppmech.claims.verify:VerifyConfig",
        description="Record (or reuse) the runs every claim of the paper needs on the embedded models, "
        "test each claim, and write the ledger (claims.md, claims.json) with a verdict per claim.",
        epilog="example:\n  ppmech verify --quick --out runs/verify-quick",
    )
    d = argparse.SUPPRESS  # defaults: VerifyConfig's (shown by --help, see ppmech.cli.HelpFormatter)
    p.add_argument("--out", default=d, help="output directory (runs are reused from here)")
    p.add_argument("--models", nargs="+", default=d, help="embedded models")
    p.add_argument(
        "--quick", action="store_true", default=d, help="tiny runs: a smoke test, verdicts not meaningful"
    )
    p.add_argument("--no-extras", action="store_true", help="skip the open-question runs")
    p.add_argument(
        "--sweep",
        default=d,
        metavar="DIR",
        help="a `ppmech sweep` study directory: families with 3+ sizes give Table 5 a measured verdict "
        "(default: none)",
    )
    p.add_argument("--n-boot", type=int, default=d, help="bootstrap replicates for every CI (at least 40)")
    p.add_argument("--seed", type=int, default=d, help="seed of prompts and bootstrap (0 to 2**32-1)")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_track_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "analyze",
        help="the claim-testing analyses on existing run directories",
        description="Run the claim-testing analyses (CVs, K-V coupling, drift, and with --hidden the "
        "interpolation and Euler-Lagrange tests) on run directories, with trajectory-bootstrap CIs.",
        epilog="example:\n  ppmech analyze runs/smol-pretrained --window 10 --json analyses.json",
    )
    p.add_argument("runs", nargs="+", help="run directories written by `ppmech measure`")
    p.add_argument("--hidden", action="store_true", help="§C.5 and Euler–Lagrange (needs --save-hidden runs)")
    p.add_argument(
        "--layers", type=int, default=0, metavar="N", help="per-layer mechanics on N trajectories (0: off)"
    )
    p.add_argument(
        "--window", type=int, default=0, metavar="STEPS", help="CV of H by position, per window (0: off)"
    )
    p.add_argument("--trajectories", type=int, default=20, help="trajectories for --hidden analyses")
    p.add_argument("--pairs", type=int, default=20, help="interpolation pairs per trajectory")
    p.add_argument(
        "--device",
        type=device_name,
        default=None,
        help="where --hidden and --layers run the model: auto (CUDA when available), cpu, cuda, cuda:N or "
        "mps (default: auto; refused without them: the other analyses load no model)",
    )
    p.add_argument(
        "--correlate",
        default=None,
        metavar="METRIC",
        help="Pearson r of a summary statistic (e.g. drift) with parameter count across runs of one family "
        "(default: off)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the CIs")
    p.add_argument("--n-perm", type=int, default=1000, help="permutations of the pairing-shuffle null")
    p.add_argument(
        "--no-nulls",
        action="store_true",
        help="skip the null models and confounder controls (null_*, curvature_deg)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0 to 2**32-1)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --json/--markdown files ppmech wrote; a file ppmech did not write is never replaced",
    )
    p.set_defaults(func=cmd_analyze)


__all__ = ["fmt", "register"]
