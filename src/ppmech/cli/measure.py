"""``ppmech measure``, ``ppmech models`` and ``ppmech compare``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppmech.cli.config import config_from_args
from ppmech.errors import PPMechError
from ppmech.tables import compare_frame, fmt, markdown_table, text_table


def add_model_args(parser: argparse.ArgumentParser, revision: bool = False) -> None:
    """The model flags (:class:`~ppmech.settings.ModelSpec`'s fields) and ``--seed``, for commands whose
    config does not (yet) inherit ``ModelSpec``; ``revision`` adds ``--revision`` (only for a config
    that has the field: a flag its config lacks would be silently dropped).

    Like every flag that sets a config field, they default to ``SUPPRESS``: an omitted flag is
    absent from the namespace and the config dataclass supplies its default (written once, there).
    """
    from ppmech.cli.config import add_config_flags
    from ppmech.settings import ModelSpec

    add_config_flags(parser, ModelSpec, skip=("device",) if revision else ("device", "revision"))
    parser.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        help="seed (0 to 2**32-1) of the prompt choice, random init, sampling",
    )
    add_device_arg(parser)


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``: shared by every command that runs a model (a config field: SUPPRESS by default)."""
    from ppmech.settings import ModelSpec, help_of

    parser.add_argument(
        "--device",
        type=device_name,
        default=argparse.SUPPRESS if default is None else default,
        help=help_of(ModelSpec, "device"),
    )


def device_name(value: str) -> str:
    """A device name; blank is refused (it would otherwise silently mean ``auto``)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("--device is empty: give auto, cpu, cuda, cuda:N or mps")
    return value


def _batch_size(value: str) -> int | str:
    """``auto`` or a whole number (the config checks that it is at least 1)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number, not {value!r}") from exc


def _measure_config(args: argparse.Namespace) -> Any:
    from ppmech.measure import MeasureConfig

    return config_from_args(MeasureConfig, args)


def cmd_measure(args: argparse.Namespace) -> int:
    from ppmech.artifacts import output_path
    from ppmech.cli.track import print_tracked
    from ppmech.measure import measure
    from ppmech.tables import run_row
    from ppmech.tracking import log_run, parse_track

    track = parse_track(args.track)  # checked before the run: a bad --track costs no recording
    config = _measure_config(args)
    out = output_path(args.out, f"runs/{Path(config.model).name}-{config.weights}-{config.decoding}")
    result = measure(config, out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    row = run_row(result.summary)
    import pandas as pd

    table = pd.DataFrame({"statistic": list(row), "value": [fmt(v) for v in row.values()]})
    print(text_table(table, title=f"\nEnergy statistics ({result.path})"))
    print(f"\nwrote {result.path}: {', '.join(result.files)}")
    print_tracked(log_run(track, result.path))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppmech.models.loading import EMBEDDED_MODELS

    rows = []
    for model in EMBEDDED_MODELS.values():
        try:
            model.locate()
            installed = "yes"
        except PPMechError:
            installed = f"no ({model.package})"
        rows.append(
            {
                "name": model.name,
                "parameters": model.parameters,
                "installed": installed,
                "description": model.description,
                "hub original": model.hub_id,
            }
        )
    print(text_table(pd.DataFrame(rows)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ppmech.artifacts import check_output_file, write_output_file
    from ppmech.runs import load_run

    # The output rule (ppmech.artifacts): the path is checked before any run is read.
    if args.markdown is not None:
        check_output_file(args.markdown, kind="markdown", replace=args.overwrite, flag="--markdown")
    runs = [load_run(d) for d in args.runs]
    frame = compare_frame([r.summary for r in runs])
    print(text_table(frame))
    if args.markdown is not None:
        write_output_file(
            args.markdown,
            markdown_table(frame) + "\n",
            kind="markdown",
            replace=args.overwrite,
            flag="--markdown",
        )
        print(f"\nwrote {args.markdown}")
    return 0


MEASURE_DESCRIPTION = """\
Record trajectories of a causal LM from corpus prompts and measure, per generated
token, K = ln(1/2 |h_t - h_(t-1)|^2), V = -ln p(x_t) and H = K + V; writes a run
directory (steps.parquet, trajectories.parquet, summary.json) and prints the
energy statistics.

Decoding: greedy takes the most probable token at every step, and sample draws it
from the model's distribution (--temperature, --top-k, --top-p apply to sample
only). teacher feeds the document's own next --new-tokens tokens after the prompt
and scores them, so each prompt's document needs --context-tokens + --new-tokens
tokens.

Safety: --overwrite replaces only a run ppmech wrote, and only once the new one is
complete; one process at a time writes a run directory; an interrupted run is
continued with --resume."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "measure",
        help="record trajectories and measure the energy statistics",
        config="ppmech.measure:MeasureConfig",
        description=MEASURE_DESCRIPTION,
        epilog="example:\n  ppmech measure --model smollm2-135m --prompts 20 --new-tokens 50 --out runs/smol",
        build=_measure_flags,
    )
    p.set_defaults(func=cmd_measure)
    _register_others(sub)


def _measure_flags(p: argparse.ArgumentParser) -> None:
    """``measure``'s flags: one per :class:`~ppmech.measure.MeasureConfig` field, then its own."""
    from ppmech.cli.config import add_config_file_flag, add_config_flags
    from ppmech.cli.track import add_track_arg
    from ppmech.measure import MeasureConfig

    add_config_flags(p, MeasureConfig)
    add_config_file_flag(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<weights>-<decoding>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run ppmech wrote at --out (the old one stays until the new one is complete)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_track_arg(p)


def _register_others(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list the embedded models",
        description="List the embedded models, whether each is installed, and where it came from.",
        epilog="example:\n  ppmech models",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "compare",
        help="Table-1-style comparison of run directories",
        description="Print the energy statistics of run directories side by side (each run is checked "
        "against the sizes and SHA-256 hashes its summary.json records).",
        epilog="example:\n  ppmech compare runs/smol-pretrained runs/smol-random --markdown table1.md",
    )
    p.add_argument("runs", nargs="+", help="run directories written by `ppmech measure`")
    p.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --markdown if ppmech wrote it; a file ppmech did not write is never replaced",
    )
    p.set_defaults(func=cmd_compare)
