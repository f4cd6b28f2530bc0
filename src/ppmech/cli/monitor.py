"""``ppmech monitor calibrate | score | benchmark``: the energy monitor (issue #5)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppmech.cli.config import config_from_args
from ppmech.cli.measure import _batch_size, add_device_arg
from ppmech.errors import PPMechError
from ppmech.provenance import json_safe
from ppmech.tables import markdown_table, text_table


def _read_raw(source: str) -> tuple[str, str]:
    """``(name, raw text)`` of a file or ``-`` (stdin)."""
    if source == "-":
        return "stdin", sys.stdin.read()
    path = Path(source)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PPMechError(f"input file {path} not found", "check the path, or pass - for stdin") from exc
    except UnicodeDecodeError as exc:
        raise PPMechError(f"{path} is not valid UTF-8 (byte {exc.start})", "convert it to UTF-8") from exc
    except OSError as exc:
        raise PPMechError(f"cannot read {path}: {exc.strerror}", "check the path") from exc
    return path.name, raw


def _looks_like_jsonl(raw: str) -> bool:
    """JSONL when the first non-blank line is a JSON object (the rest may still hold bad lines)."""
    first = next((line for line in raw.splitlines() if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _jsonl_texts(raw: str, name: str, text_field: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Texts of JSONL records, and ``(line, why)`` for each line skipped (one bad record never
    aborts the others)."""
    from ppmech.corpus import jsonl_records

    texts, skipped = [], []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            for _, _, text in jsonl_records(line, where, text_field):
                texts.append((where, text))
        except PPMechError as exc:
            # The record's own message names the line (jsonl_records numbers this one line 1).
            skipped.append((where, exc.for_cli({"text_field": "--text-field"}).replace(f"{where}:1", where)))
    return texts, skipped


def _read_texts(
    source: str, text_field: str, whole: bool, fmt: str = "auto"
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(name, text)`` pairs from a file or ``-``, and ``(name, why)`` for records skipped.

    Formats: ``text`` (blank-line separated blocks, named by the line they start on, or by their
    index on stdin), ``jsonl`` (one JSON object per line, named by line), or ``auto``: JSONL for a
    ``.jsonl`` file or when the first non-blank line is a JSON object, else text.
    """
    name, raw = _read_raw(source)
    if not raw.strip():
        raise PPMechError(f"the input ({name}) is empty", "give the monitor some text to score")
    if whole:
        return [(name, raw.strip())], []
    jsonl = fmt == "jsonl" or (fmt == "auto" and (source.endswith(".jsonl") or _looks_like_jsonl(raw)))
    if jsonl:
        return _jsonl_texts(raw, name, text_field)
    texts, line, index = [], 1, 0
    for block in raw.split("\n\n"):
        stripped = block.strip()
        if stripped:
            index += 1
            first = line + len(block) - len(block.lstrip("\n"))
            texts.append((f"stdin #{index}" if source == "-" else f"{name}:{first}", stripped))
        line += block.count("\n") + 2
    return texts, []


def _load_for_calibration(args: argparse.Namespace, cal: Any) -> Any:
    from ppmech.models.loading import load_model

    # A model flag not given (absent: SUPPRESS) means the calibration's.
    ident = cal.model
    given = vars(args)
    seed = given["seed"] if "seed" in given else (ident.get("seed") or 0)
    return load_model(
        given.get("model", ident["spec"]),
        weights=given.get("weights", ident["weights"]),
        seed=seed,
        dtype=given.get("dtype", ident["dtype"]),
        trust_remote_code=given.get("trust_remote_code", False),
        device=args.device,
    )


def _interruptible(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[..., int]]:
    """Ctrl-C ends ``command`` with one line that says what to do (the monitor commands have no
    ``--resume``: their files are written only when complete, so nothing half-written is left)."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except KeyboardInterrupt:
                print(
                    f"ppmech: interrupted; `ppmech monitor {command}` writes its output only when done, "
                    "so nothing was written: run it again",
                    file=sys.stderr,
                )
                return 130

        return run

    return wrap


@_interruptible("calibrate")
def cmd_calibrate(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppmech.artifacts import check_output_file, write_output_file
    from ppmech.models.loading import load_configured
    from ppmech.monitor.calibration import MonitorConfig
    from ppmech.monitor.stream import EnergyMonitor

    # The output is checked before the model loads (the output rule: ppmech.artifacts).
    out = check_output_file(args.out, kind="json", replace=args.overwrite)
    config = config_from_args(MonitorConfig, args)
    lm = load_configured(config)
    monitor = EnergyMonitor.calibrate(lm, config, progress=not args.no_progress)
    write_output_file(out, monitor.calibration.to_dict(), kind="json", replace=args.overwrite)
    cal = monitor.calibration
    rows = [
        {
            "signal": name,
            "token mean": s.token_mean,
            "token std": s.token_std,
            "seq-mean std": s.seq_mean_std,
            "CUSUM threshold": s.cusum_threshold,
        }
        for name, s in cal.signals.items()
    ]
    print(
        text_table(
            pd.DataFrame(rows),
            title=f"\nCalibration of {lm.identity.spec} ({cal.n_fit} texts fit the moments, "
            f"{cal.n_holdout} held out set the thresholds)",
        )
    )
    print(f"anomaly threshold (split conformal, alpha={cal.alpha}): {cal.anomaly_threshold:.4g}")
    print(
        f"combined alarm (anomaly or CUSUM on z_H, at most {cal.alpha:.0%} of normal texts): anomaly above "
        f"{cal.combined_anomaly_threshold:.4g} or CUSUM above {cal.combined_cusum_threshold:.4g}"
    )
    if cal.normal_text is not None:
        print(f"normal text: {cal.normal_text.summary()}")
    if math.isinf(cal.anomaly_threshold):
        print(
            f"warning: {cal.n_holdout} held-out texts are too few for a threshold with a false-alarm rate "
            f"of at most {cal.alpha}; alarms are off. Calibrate on at least "
            f"{math.ceil(math.ceil(1 / cal.alpha - 1) / float(cal.config['holdout_fraction'])) + 1} texts."
        )
    print(f"\nwrote {out}")
    return 0


def _warn(message: str) -> None:
    print(f"ppmech: warning: {message}", file=sys.stderr)


def _scorable(
    lm: Any, texts: list[tuple[str, str]]
) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str]]]:
    """``(name, text, ids)`` of the texts the monitor can score, and ``(name, why)`` of the others
    (empty, too short, longer than the context): one bad text never aborts the rest."""
    from ppmech.monitor.stream import text_ids

    ok, skipped = [], []
    for name, text in texts:
        try:
            ok.append((name, text, text_ids(lm, text)))
        except PPMechError as exc:
            skipped.append((name, exc.one_line()))
    return ok, skipped


def _warn_outside_normal(cal: Any, lm: Any, scored: list[tuple[str, str, list[int]]]) -> None:
    """Warn once when scored texts are far outside the calibration's normal text (length, language),
    or when the calibration saw only document openings."""
    from ppmech.corpus import special_prefix
    from ppmech.monitor.windows import input_outside_normal, outside_normal

    normal = cal.normal_text
    if normal is None:
        return
    p = len(special_prefix(lm.tokenizer))
    far = [
        (name, why) for name, text, ids in scored if (why := outside_normal(normal, len(ids) - p, len(text)))
    ]
    alpha = f"{cal.alpha:.0%}"
    problem = None
    if far:
        problem = (
            f"{len(far)} of {len(scored)} texts are far outside the calibration's normal text "
            f"(first: {far[0][0]}, {far[0][1]})"
        )
    elif why := input_outside_normal(
        normal, [len(ids) - p for _, _, ids in scored], [len(text) for _, text, _ in scored]
    ):
        problem = f"the input is far outside the calibration's normal text: {why}"
    if problem:
        _warn(
            f"{problem}; the {alpha} false-alarm rate is promised only for text like the calibration's "
            f"({normal.summary()}). Calibrate on text like yours (--corpus, --tokens)"
        )
    elif normal.positions == "openings":
        _warn(
            f"the calibration saw only document openings ({normal.summary()}); texts from later in a "
            f"document raise more false alarms than {alpha}. Calibrate with --positions anywhere"
        )


@_interruptible("score")
def cmd_score(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppmech.engine.batching import parse_batch_size
    from ppmech.monitor.calibration import Calibration
    from ppmech.monitor.results import score_trace
    from ppmech.monitor.stream import EnergyMonitor, trace_many

    batch_size = parse_batch_size(args.batch_size)  # checked before anything loads
    cal = Calibration.load(args.calibration)
    texts, skipped = _read_texts(args.input, args.text_field, args.whole, args.format)
    lm = _load_for_calibration(args, cal)
    cal.check_model(lm.identity, source=f"calibration file {args.calibration}")
    monitor = EnergyMonitor(lm, cal)
    scorable, too_short = _scorable(lm, texts)
    skipped += too_short
    for name, why in skipped:
        _warn(f"skipped {name}: {why}")
    if not scorable:
        raise PPMechError(
            f"none of the {len(skipped)} texts in {args.input} could be scored (see the warnings above)",
            "give the monitor texts of at least a few words, within the model's context",
        )
    _warn_outside_normal(cal, lm, scorable)
    traces = trace_many(lm, [ids for _, _, ids in scorable], batch_size)
    scores = [score_trace(t, cal, monitor.token_strings(t.token_ids)) for t in traces]
    names = [name for name, _, _ in scorable]
    summary = f"scored {len(scores)} texts" + (
        f", skipped {len(skipped)} (see the warnings)" if skipped else ""
    )
    if args.json:
        for name, sc in zip(names, scores, strict=True):
            record: dict[str, Any] = {"source": name, **json_safe(sc.sequence.to_dict())}
            if args.tokens:
                record["tokens"] = [json_safe(r) for r in sc.tokens.to_dict(orient="records")]
            print(json.dumps(record, ensure_ascii=False))
        print(f"ppmech: {summary}", file=sys.stderr)
        return 0
    if args.tokens:
        cols = ["index", "token", "V", "K", "H", "z_V", "z_K", "z_H", "cusum", "alarm"]
        for name, sc in zip(names, scores, strict=True):
            frame = sc.tokens[cols].copy()
            frame["token"] = [repr(t)[1:-1] for t in frame["token"]]
            frame["alarm"] = ["ALARM" if a else "" for a in frame["alarm"]]
            print(text_table(frame, title=f"\n{name}: per-token scores"))
    rows = []
    for name, sc in zip(names, scores, strict=True):
        s = sc.sequence
        alarm = "no"
        if s.alarm:
            at = f" at {s.combined_alarm_at}" if s.combined_alarm_at is not None else ""
            alarm = {"anomaly": "ALARM (anomaly)", "cusum": f"ALARM (CUSUM{at})"}.get(
                s.alarm_by or "", f"ALARM (both{at})"
            )
        rows.append(
            {
                "source": name,
                "tokens": s.n_tokens,
                "mean H": s.mean_H,
                "std H": s.std_H,
                "drift H": s.drift_H,
                "z mean H": s.z_mean_H,
                "anomaly": s.anomaly,
                "p": s.p_value,
                "flagged": "yes" if s.flagged else "no",
                "CUSUM max": s.cusum_max,
                "alarm at": "—" if s.alarm_at is None else str(s.alarm_at),
                "alarm": alarm,
            }
        )
    print(text_table(pd.DataFrame(rows), title=f"\nEnergy monitor ({lm.identity.spec}, alpha={cal.alpha})"))
    print(
        f"\nalarm: the anomaly score or the CUSUM above the combined thresholds (at most {cal.alpha:.0%} of "
        f"normal texts raise it); flagged / alarm at: each alone at {cal.alpha:.0%}. {summary}."
    )
    return 0


def _escape_pipes(frame: Any) -> Any:
    """Escape ``|`` in text cells (``|z| mean H``) so markdown tables keep their columns."""
    out = frame.copy()
    for col in out.columns:
        values = list(out[col])
        if any(isinstance(v, str) for v in values):
            out[col] = [v.replace("|", "\\|") if isinstance(v, str) else v for v in values]
    return out


def benchmark_report(result: Any) -> str:
    """The benchmark as markdown: sizes, the table, the delay table."""
    cfg = result.config
    normal = result.normal_text
    lines = [
        f"### {result.model['spec']} ({result.model['num_parameters'] / 1e6:.0f}M parameters)",
        "",
        f"Texts per set: {result.sizes['normal']} (calibration: {result.sizes['calibration']}), "
        f"{cfg['tokens']} tokens each, seed {cfg['seed']}; splice after {cfg['splice_at']} tokens; "
        f"wall time {result.seconds:.0f} s. Cells: AUROC / TPR at 5% FPR against held-out English Wikipedia.",
        "",
        markdown_table(_escape_pipes(result.table())),
        "",
        "Spliced set, per-token CUSUM alarms (threshold: split-conformal 95% quantile of held-out "
        "calibration maxima):",
        "",
        markdown_table(result.delays),
        "",
        f"False alarms at a nominal {cfg['alpha']:.0%} on fresh normal text of three kinds (none from a "
        "calibration document), with Clopper–Pearson 95% intervals; calibration: "
        f"{normal.get('count', '?')} windows placed '{normal.get('positions', '?')}':",
        "",
        markdown_table(result.false_alarm_display()),
    ]
    return "\n".join(lines) + "\n"


@_interruptible("benchmark")
def cmd_benchmark(args: argparse.Namespace) -> int:
    from ppmech.artifacts import check_output_file, write_output_file
    from ppmech.monitor.benchmark import BenchmarkConfig, run_benchmark

    # The output rule (ppmech.artifacts): both outputs are checked before the benchmark runs.
    outputs = [(args.markdown, "--markdown", "markdown"), (args.json, "--json", "json")]
    for path, flag, kind in outputs:
        if path is not None:
            check_output_file(path, kind=kind, replace=args.overwrite, flag=flag)
    config = config_from_args(BenchmarkConfig, args)
    result = run_benchmark(config, progress=not args.no_progress)
    print(text_table(result.table(), title=f"\nEnergy monitor benchmark: {config.model} (AUROC / TPR@5%FPR)"))
    print(text_table(result.delays, title="\nSpliced set: per-token CUSUM alarms"))
    print(
        text_table(
            result.false_alarm_display(),
            title=f"\nFalse alarms on fresh normal text at a nominal {config.alpha:.0%} "
            "(rate with its Clopper–Pearson 95% interval)",
        )
    )
    sizes = ", ".join(f"{k} {v}" for k, v in result.sizes.items())
    print(f"\ntexts: {sizes}; {config.tokens} tokens each; {result.seconds:.0f} s")
    contents = {"--markdown": lambda: benchmark_report(result), "--json": lambda: json_safe(result.to_dict())}
    for path, flag, kind in outputs:
        if path is not None:
            write_output_file(path, contents[flag](), kind=kind, replace=args.overwrite, flag=flag)
            print(f"wrote {path}")
    return 0


BATCH_HELP = "texts per forward batch, or auto: the largest that fits, halved on out-of-memory (CPU: 50)"


def register(sub: Any) -> None:

    group = sub.add_parser(
        "monitor",
        help="energy monitor: calibrate, score text, benchmark",
        description="The energy monitor: learn a model's normal distribution of K, V and H on ordinary "
        "text (calibrate), score new text against it (score), or measure how well it separates "
        "shifted text (benchmark).",
        epilog="example:\n  ppmech monitor calibrate --model smollm2-135m --out cal.json",
    )
    msub = group.add_subparsers(dest="monitor_command", required=True, parser_class=type(group))

    # Every config field has one flag, built from its declaration (ppmech.cli.config.add_config_flags)
    # when the command is used; omitted flags leave MonitorConfig and BenchmarkConfig their defaults.
    p = msub.add_parser(
        "calibrate",
        help="learn a model's normal energy distribution",
        config="ppmech.monitor.calibration:MonitorConfig",
        description="Run the model over normal text (windows from anywhere in held-out documents by "
        "default) and write a calibration JSON file (per-signal means, spreads, thresholds, the "
        "feature covariance, and a record of what the normal text was).",
        epilog="example:\n  ppmech monitor calibrate --model smollm2-135m --sequences 100 --out cal.json",
        build=_calibrate_flags,
    )
    p.set_defaults(func=cmd_calibrate)

    p = msub.add_parser(
        "score",
        help="score texts against a calibration",
        description="Score texts token by token and as a whole against a calibration: z-scores of "
        "K, V and H, a CUSUM alarm, and a sequence-level anomaly score with its p-value.",
        epilog="example:\n  ppmech monitor score notes.txt --calibration cal.json --tokens",
        build=_score_flags,
    )
    p.add_argument("input", help="text file (blank-line separated texts), .jsonl, or - for stdin")
    p.add_argument("--calibration", required=True, help="JSON written by `ppmech monitor calibrate`")
    p.set_defaults(func=cmd_score)

    p = msub.add_parser(
        "benchmark",
        help="AUROC of the monitor and baselines on shifted text; false-alarm rates per kind",
        config="ppmech.monitor.benchmark:BenchmarkConfig",
        description="Calibrate on held-out English Wikipedia, then score held-out normal text and "
        "shifted sets (shuffled, Spanish, French, random characters, repetition, random-model text, "
        "spliced) with the monitor and standard baselines; prints AUROC and TPR at 5%% FPR per set, "
        "and the false-alarm rate of each alarm on three kinds of fresh normal text.",
        epilog="example:\n  ppmech monitor benchmark --sequences 50 --markdown monitor.md",
        build=_benchmark_flags,
    )
    p.set_defaults(func=cmd_benchmark)


def _calibrate_flags(p: argparse.ArgumentParser) -> None:
    from ppmech.cli.config import add_config_file_flag, add_config_flags
    from ppmech.monitor.calibration import MonitorConfig

    add_config_flags(p, MonitorConfig)
    add_config_file_flag(p)
    p.add_argument("--out", required=True, help="calibration JSON file to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a calibration file ppmech wrote at --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _score_flags(p: argparse.ArgumentParser) -> None:
    from ppmech.cli.config import add_config_flags
    from ppmech.settings import ModelSpec

    # The shared model flags; omitted, each is the calibration's (the group keeps ModelSpec's
    # defaults out of --help, where they would be wrong for this command).
    group = p.add_argument_group("model")
    add_config_flags(group, ModelSpec, skip=("device", "revision"))
    group.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="random-init seed")
    for action in group._group_actions:
        action.help = f"{action.help} (default: the calibration's)"
    add_device_arg(p, "auto")
    p.add_argument("--tokens", action="store_true", help="also print per-token scores")
    p.add_argument("--whole", action="store_true", help="score the whole input as one text")
    p.add_argument(
        "--format",
        choices=["auto", "text", "jsonl"],
        default="auto",
        help="input format: text (blank-line separated), jsonl (one JSON object per line), or auto: "
        "jsonl for a .jsonl file or when the first line is a JSON object",
    )
    p.add_argument("--text-field", default="text", help="text field of JSONL input")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    p.add_argument("--batch-size", type=_batch_size, default="auto", help=BATCH_HELP)


def _benchmark_flags(p: argparse.ArgumentParser) -> None:
    from ppmech.cli.config import add_config_file_flag, add_config_flags
    from ppmech.monitor.benchmark import BenchmarkConfig

    add_config_flags(p, BenchmarkConfig)
    add_config_file_flag(p)
    p.add_argument("--markdown", default=None, help="also write the tables as markdown to this file")
    p.add_argument("--json", default=None, help="also write all numbers as JSON to this file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --markdown/--json files ppmech wrote; a file ppmech did not write is never replaced",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
