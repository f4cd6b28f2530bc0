"""``ppmech steer`` and ``ppmech evaluate-steering``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppmech.cli.config import config_from_args
from ppmech.cli.measure import add_model_args
from ppmech.tables import markdown_table, text_table


def _layer(value: str) -> int | None:
    if value in ("final", "None", "none", ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--layer must be 'final' or a block index, not {value!r}") from exc


def _schedule(value: str) -> tuple[int, ...]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    out = []
    for item in items:
        if item == "-":
            out.append(-1)
            continue
        try:
            out.append(int(item))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--target-ids takes comma-separated ids, not {item!r}") from exc
    if not out:
        raise argparse.ArgumentTypeError("--target-ids is empty")
    return tuple(out)


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def cmd_steer(args: argparse.Namespace) -> int:
    from ppmech.steering.run import SteerConfig, run_steer

    config = config_from_args(SteerConfig, args)
    out = Path(args.out or f"runs/steer-{Path(config.model).name}")
    result = run_steer(config, out, overwrite=args.overwrite)
    where = "final norm (paper)" if config.layer is None else f"residual after block {config.layer}"
    print(f"prompt:   {_one_line(config.prompt)}")
    print(f"natural:  {_one_line(result.natural_text)}")
    print(f"steered:  {_one_line(result.steered_text)}")
    print(f"steering at: {where}; η = {config.eta}, K = {config.max_steps}")
    print(text_table(result.comparison, title="\nEnergy comparison (K, V, H in nats; steps with a velocity)"))
    print(f"\nwrote {out}/steps.parquet, summary.json")
    return 0


def _eval_config(args: argparse.Namespace) -> Any:
    from ppmech.steering.evaluation import SteeringEvalConfig

    return config_from_args(SteeringEvalConfig, args, baselines=not args.no_baselines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ppmech.steering.evaluation import evaluate_steering

    config = _eval_config(args)
    out = Path(args.out or f"runs/steering-eval-{Path(config.model).name}-{config.judge}")
    result = evaluate_steering(config, out, overwrite=args.overwrite, progress=not args.no_progress)
    print(text_table(result.table, digits=2, title=f"\nTable 3 ({config.judge} judge, η = {config.eta})"))
    s = result.statistics
    print(
        f"\nsteered {s['n_steered']} of {s['n_items']} states "
        f"({s['n_items'] - s['n_steered']} already at η); "
        f"{s['n_reached']} reached η; mean gradient steps {s['mean_steps']:.2f}; "
        f"missing score pairs excluded: {s['n_missing_pairs']}"
    )
    m = s["moved_only"]
    print(
        f"moved states only (N = {m['n_pairs']}): natural {m['natural_mean']:.2f} ± {m['natural_sd']:.2f}, "
        f"steered {m['steered_mean']:.2f} ± {m['steered_sd']:.2f}, p = {m['p_value']:.3g}, "
        f"d_z = {m['cohens_dz']:.2f}"
    )
    if len(result.baselines):
        print(text_table(result.baselines, title="\nBaselines at the same target probability (same states)"))
    if args.markdown:
        text = markdown_table(result.table, digits=2)
        if len(result.baselines):
            text += "\n\n" + markdown_table(result.baselines)
        Path(args.markdown).write_text(text + "\n")
        print(f"\nwrote {args.markdown}")
    print(f"\nwrote {out}/items.csv, baselines.csv, summary.json")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("steer", help="generate with Jacobian steering next to a natural generation")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="prompt text")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target-text",
        help="steer toward this text, token by token "
        "(a space is prepended when both sides are word characters)",
        default=argparse.SUPPRESS,
    )
    target.add_argument(
        "--target-ids",
        type=_schedule,
        help="token schedule: comma-separated target id per step, '-' or -1 leaves a step alone",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--new-tokens", type=int, default=argparse.SUPPRESS, help="steps to generate (default: targets + 5)"
    )
    p.add_argument(
        "--eta", type=float, default=argparse.SUPPRESS, help="target probability threshold η in (0, 1)"
    )
    p.add_argument("--max-steps", type=int, default=argparse.SUPPRESS, help="K, gradient steps per token")
    p.add_argument(
        "--layer",
        type=_layer,
        default=argparse.SUPPRESS,
        help="'final' (default, the paper: h_t after the final norm) or a block index L: steer the "
        "residual after block L, which enters the KV cache (beyond the paper)",
    )
    p.add_argument("--decoding", choices=["greedy", "sample"], default=argparse.SUPPRESS)
    p.add_argument("--temperature", type=float, default=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="output directory (default runs/steer-<model>)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("evaluate-steering", help="the paper's Table 3: judge natural vs steered top-10 lists")
    add_model_args(p)
    p.add_argument("--corpus", default=argparse.SUPPRESS)
    p.add_argument("--text-field", default=argparse.SUPPRESS)
    p.add_argument("--prompts", type=int, default=argparse.SUPPRESS)
    p.add_argument("--context-tokens", type=int, default=argparse.SUPPRESS)
    p.add_argument("--top-k", type=int, default=argparse.SUPPRESS)
    p.add_argument("--eta", type=float, default=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, default=argparse.SUPPRESS)
    p.add_argument(
        "--targets",
        choices=["ground-truth", "sampled"],
        default=argparse.SUPPRESS,
        help="steer toward the article's next token (paper) or a token sampled from the model",
    )
    p.add_argument("--judge", choices=["reference-lm", "embedding", "openai"], default=argparse.SUPPRESS)
    p.add_argument(
        "--judge-model",
        default=argparse.SUPPRESS,
        help="reference-lm: the reference model (default: the other embedded model); openai: the model name",
    )
    p.add_argument(
        "--judge-url", default=argparse.SUPPRESS, help="openai: base URL, e.g. http://127.0.0.1:8000/v1"
    )
    p.add_argument("--judge-key-env", default=argparse.SUPPRESS, help="openai: env variable holding the key")
    p.add_argument("--judge-cache", default=argparse.SUPPRESS, help="openai: directory caching the replies")
    p.add_argument(
        "--judge-retries", type=int, default=argparse.SUPPRESS, help="openai: retries on 429/5xx/unreachable"
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines table")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)
