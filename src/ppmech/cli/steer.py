"""``ppmech steer`` and ``ppmech evaluate-steering``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppmech.artifacts import check_output_dir, check_output_file, output_path, write_output_file
from ppmech.cli.config import add_config_file_flag, config_from_args
from ppmech.cli.measure import add_model_args
from ppmech.cli.track import add_track_arg, print_tracked
from ppmech.settings import help_of
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


def steer_config(args: argparse.Namespace) -> Any:
    """The :class:`~ppmech.steering.run.SteerConfig` of parsed ``steer`` flags (and ``--config``)."""
    from ppmech.steering.run import SteerConfig

    # A target given as a flag replaces whichever target a --config file holds.
    given = [name for name in ("target_text", "target_ids") if name in args]
    overrides = {"target_ids" if name == "target_text" else "target_text": None for name in given}
    return config_from_args(SteerConfig, args, **overrides)


def cmd_steer(args: argparse.Namespace) -> int:
    from ppmech.steering.run import run_steer
    from ppmech.tracking import log_run, parse_track

    track = parse_track(args.track)  # checked before the model loads
    config = steer_config(args)
    out = output_path(args.out, f"runs/steer-{Path(config.model).name}")
    check_output_dir(out, kind="steer", replace=args.overwrite)  # the output rule, before the model loads
    result = run_steer(config, out, overwrite=args.overwrite)
    where = "final norm (paper)" if config.layer is None else f"residual after block {config.layer}"
    print(f"prompt:   {_one_line(config.prompt)}")
    print(f"natural:  {_one_line(result.natural_text)}")
    print(f"steered:  {_one_line(result.steered_text)}")
    print(f"steering at: {where}; η = {config.eta}, K = {config.max_steps}")
    print(text_table(result.comparison, title="\nEnergy comparison (K, V, H in nats; steps with a velocity)"))
    print(f"\nwrote {out}: {', '.join(result.files)}")
    print_tracked(log_run(track, out))
    return 0


def _eval_config(args: argparse.Namespace) -> Any:
    from ppmech.steering.evaluation import SteeringEvalConfig

    # Only a given --no-baselines overrides: a --config file may set baselines itself.
    overrides = {"baselines": False} if args.no_baselines else {}
    return config_from_args(SteeringEvalConfig, args, **overrides)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ppmech.steering.evaluation import evaluate_steering

    config = _eval_config(args)
    out = output_path(args.out, f"runs/steering-eval-{Path(config.model).name}-{config.judge}")
    # The output rule (ppmech.artifacts): both outputs are checked before the model loads.
    check_output_dir(out, kind="steering-evaluation", replace=args.overwrite)
    if args.markdown is not None:
        check_output_file(args.markdown, kind="markdown", replace=args.overwrite, flag="--markdown")
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
    failures = s.get("judge_failures", {})
    if failures.get("missing"):
        reasons = ", ".join(f"{why} ×{n}" for why, n in failures["reasons"].items())
        reply = " ".join(str(failures["first_reply"]).split())[:120]
        print(
            f"judge: {failures['missing']} of {failures['ratings']} ratings missing ({reasons}); "
            f"first reply without a rating: {reply!r}"
        )
    if len(result.baselines):
        print(text_table(result.baselines, title="\nBaselines at the same target probability (same states)"))
    if args.markdown is not None:
        text = markdown_table(result.table, digits=2)
        if len(result.baselines):
            text += "\n\n" + markdown_table(result.baselines)
        write_output_file(
            args.markdown, text + "\n", kind="markdown", replace=args.overwrite, flag="--markdown"
        )
        print(f"\nwrote {args.markdown}")
    print(f"\nwrote {out}: {', '.join(result.files)}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "steer",
        help="generate with Jacobian steering next to a natural generation",
        config="ppmech.steering.run:SteerConfig",
        description="Generate from a prompt twice, naturally and with minimal-action Jacobian steering "
        "toward target tokens (Algorithm 1: move h_t until the target has probability eta), and "
        "compare K, V and H of the two traces; writes steps.parquet and summary.json.",
        epilog='example:\n  ppmech steer --prompt "The capital of France is" --target-text "a small village"',
        build=_steer_flags,
    )
    p.set_defaults(func=cmd_steer)
    _register_evaluate(sub)


def _steer_flags(p: argparse.ArgumentParser) -> None:
    """``steer``'s flags: one per :class:`~ppmech.steering.run.SteerConfig` field, then its own."""
    from ppmech.cli.config import add_config_file_flag, add_config_flags
    from ppmech.steering.run import SteerConfig

    add_config_flags(p, SteerConfig, skip=("target_text", "target_ids", "layer"))
    # One target or the other (a --config file may hold either: a flag replaces the file's).
    target = p.add_mutually_exclusive_group()
    add_config_flags(target, SteerConfig, only=("target_text",))
    # Parsed from the forms a shell makes easy: "5,-,7" and "final".
    target.add_argument(
        "--target-ids",
        type=_schedule,
        default=argparse.SUPPRESS,
        help=help_of(SteerConfig, "target_ids") + " (default: none; give it or --target-text)",
    )
    p.add_argument("--layer", type=_layer, default=argparse.SUPPRESS, help=help_of(SteerConfig, "layer"))
    add_config_file_flag(p)
    p.add_argument("--out", default=None, help="output directory (default runs/steer-<model>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a steer output ppmech wrote at --out (once the new one is complete)",
    )
    add_track_arg(p)


def _register_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate-steering",
        help="the paper's Table 3: judge natural vs steered top-10 lists",
        config="ppmech.steering.evaluation:SteeringEvalConfig",
        description="The paper's steering-quality evaluation (Table 3): steer each prompt's last state "
        "toward a target token, and have a judge rate the natural and the steered top-k next-token "
        "lists from 1 to 10; writes items.csv, baselines.csv and summary.json.",
        epilog="example:\n  ppmech evaluate-steering --prompts 20 --judge reference-lm --out runs/table3",
    )
    add_config_file_flag(p)
    add_model_args(p)
    d = argparse.SUPPRESS  # defaults: SteeringEvalConfig's (shown by --help)
    p.add_argument("--corpus", default=d, help="prompt source: wiki-en, wiki-es, wiki-fr or a path")
    p.add_argument("--text-field", default=d, help="text field of JSONL records and dataset rows")
    p.add_argument("--prompts", type=int, default=d, help="number of prompts (the paper: 50)")
    p.add_argument("--context-tokens", type=int, default=d, help="prompt length in tokens")
    p.add_argument("--top-k", type=int, default=d, help="length of the rated next-token lists")
    p.add_argument("--eta", type=float, default=d, help="target probability threshold η in (0, 1)")
    p.add_argument("--max-steps", type=int, default=d, help="K, gradient steps per state")
    p.add_argument(
        "--targets",
        choices=["ground-truth", "sampled"],
        default=argparse.SUPPRESS,
        help="steer toward the article's next token (paper) or a token sampled from the model",
    )
    p.add_argument(
        "--judge",
        choices=["reference-lm", "embedding", "openai"],
        default=argparse.SUPPRESS,
        help="who rates the lists: a reference LM (offline), a sentence-embedding proxy (offline), "
        "or an OpenAI-compatible chat model",
    )
    p.add_argument(
        "--judge-model",
        default=argparse.SUPPRESS,
        help="reference-lm: the reference model (default: the other embedded model); openai: the model name",
    )
    p.add_argument(
        "--judge-url",
        default=argparse.SUPPRESS,
        help="openai: base URL, e.g. http://127.0.0.1:8000/v1 (default: none; required for openai)",
    )
    p.add_argument("--judge-key-env", default=argparse.SUPPRESS, help="openai: env variable holding the key")
    p.add_argument(
        "--judge-cache",
        default=argparse.SUPPRESS,
        help="openai: directory caching the replies (default: no cache)",
    )
    p.add_argument(
        "--judge-retries", type=int, default=argparse.SUPPRESS, help="openai: retries on 429/5xx/unreachable"
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines table")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown to this file")
    p.add_argument(
        "--out", default=None, help="output directory (default runs/steering-eval-<model>-<judge>)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an evaluation ppmech wrote at --out (once the new one is complete) and a "
        "--markdown file ppmech wrote; nothing ppmech did not write is replaced",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
