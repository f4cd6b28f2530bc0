"""``ppmech measure``, ``ppmech models`` and ``ppmech compare``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppmech.cli.config import config_from_args
from ppmech.errors import PPMechError
from ppmech.tables import compare_frame, fmt, markdown_table, text_table


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--dtype``, ``--seed``: shared by every command that loads a model.

    Like every flag that sets a config field, they default to ``SUPPRESS``: an omitted flag is
    absent from the namespace and the config dataclass supplies its default (written once, there;
    importing the dataclasses here would make ``ppmech --help`` import torch).
    """
    parser.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="embedded name (see `ppmech models`), .gguf path, local directory or hub id",
    )
    parser.add_argument("--weights", choices=["pretrained", "random"], default=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=argparse.SUPPRESS)
    parser.add_argument(
        "--seed", type=int, default=argparse.SUPPRESS, help="prompt choice, random init, sampling"
    )
    parser.add_argument("--trust-remote-code", action="store_true", default=argparse.SUPPRESS)


def _measure_config(args: argparse.Namespace) -> Any:
    from ppmech.measure import MeasureConfig

    return config_from_args(MeasureConfig, args)


def cmd_measure(args: argparse.Namespace) -> int:
    from ppmech.measure import measure
    from ppmech.tables import run_row

    config = _measure_config(args)
    out = Path(args.out or f"runs/{Path(config.model).name}-{config.weights}-{config.decoding}")
    result = measure(config, out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    row = run_row(result.summary)
    import pandas as pd

    table = pd.DataFrame({"statistic": list(row), "value": [fmt(v) for v in row.values()]})
    print(text_table(table, title=f"\nEnergy statistics ({result.path})"))
    print(f"\nwrote {result.path}/trajectories.parquet, steps.parquet, summary.json")
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
    from ppmech.runs import load_run

    runs = [load_run(d) for d in args.runs]
    frame = compare_frame([r.summary for r in runs])
    print(text_table(frame))
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(frame) + "\n")
        print(f"\nwrote {args.markdown}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("measure", help="record trajectories and measure the energy statistics")
    add_model_args(p)
    p.add_argument("--corpus", default=argparse.SUPPRESS, help="wiki-en, wiki-es, wiki-fr, or a path")
    p.add_argument("--text-field", default=argparse.SUPPRESS, help="text field of JSONL/datasets")
    p.add_argument("--prompts", type=int, default=argparse.SUPPRESS)
    p.add_argument("--context-tokens", type=int, default=argparse.SUPPRESS)
    p.add_argument("--new-tokens", type=int, default=argparse.SUPPRESS)
    p.add_argument("--decoding", choices=["greedy", "sample", "teacher"], default=argparse.SUPPRESS)
    p.add_argument("--temperature", type=float, default=argparse.SUPPRESS)
    p.add_argument("--top-k", type=int, default=argparse.SUPPRESS)
    p.add_argument("--top-p", type=float, default=argparse.SUPPRESS)
    p.add_argument("--stop-at-eos", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    p.add_argument(
        "--save-hidden", action="store_true", default=argparse.SUPPRESS, help="also store h_t (hidden/*.npy)"
    )
    p.add_argument("--n-boot", type=int, default=argparse.SUPPRESS, help="bootstrap replicates for CIs")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<weights>-<decoding>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("models", help="list the embedded models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("compare", help="Table-1-style comparison of run directories")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--markdown", default=None, help="also write the table as markdown")
    p.set_defaults(func=cmd_compare)
