"""``ppmech monitor calibrate | score | benchmark``: the energy monitor (issue #5)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ppmech.cli.config import config_from_args
from ppmech.errors import PPMechError
from ppmech.provenance import json_safe
from ppmech.tables import markdown_table, text_table


def _read_texts(source: str, text_field: str, whole: bool) -> list[tuple[str, str]]:
    """``(name, text)`` pairs from a file or ``-``: blank-line separated blocks, or JSONL records."""
    if source == "-":
        raw = sys.stdin.read()
        name = "stdin"
    else:
        path = Path(source)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PPMechError(f"input file {path} not found", "check the path, or pass - for stdin") from exc
        except UnicodeDecodeError as exc:
            raise PPMechError(f"{path} is not valid UTF-8 (byte {exc.start})", "convert it to UTF-8") from exc
        except OSError as exc:
            raise PPMechError(f"cannot read {path}: {exc.strerror}", "check the path") from exc
        name = path.name
    if not raw.strip():
        raise PPMechError(f"the input ({name}) is empty", "give the monitor some text to score")
    if whole:
        return [(name, raw.strip())]
    if source.endswith(".jsonl"):
        from ppmech.corpus import jsonl_records

        return [(f"{name}:{lineno}", text) for lineno, _, text in jsonl_records(raw, name, text_field)]
    blocks = [b.strip() for b in raw.split("\n\n")]
    return [(f"{name}#{i}", b) for i, b in enumerate(blocks) if b]


def _load_for_calibration(args: argparse.Namespace, cal: Any) -> Any:
    from ppmech.models.loading import load_model

    ident = cal.model
    spec = args.model or ident["spec"]
    weights = args.weights or ident["weights"]
    seed = args.seed if args.seed is not None else (ident.get("seed") or 0)
    dtype = args.dtype or ident["dtype"]
    return load_model(
        spec,
        weights=weights,
        seed=seed,
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
    )


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
    if math.isinf(cal.anomaly_threshold):
        print(
            f"warning: {cal.n_holdout} held-out texts are too few for a threshold with a false-alarm rate "
            f"of at most {cal.alpha}; alarms are off. Calibrate on at least "
            f"{math.ceil(math.ceil(1 / cal.alpha - 1) / float(cal.config['holdout_fraction'])) + 1} texts."
        )
    print(f"\nwrote {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppmech.monitor.calibration import Calibration
    from ppmech.monitor.stream import EnergyMonitor

    cal = Calibration.load(args.calibration)
    texts = _read_texts(args.input, args.text_field, args.whole)
    lm = _load_for_calibration(args, cal)
    cal.check_model(lm.identity, source=f"calibration file {args.calibration}")
    monitor = EnergyMonitor(lm, cal)
    scores = monitor.score_many([t for _, t in texts], batch_size=args.batch_size)
    if args.json:
        for (name, _), sc in zip(texts, scores, strict=True):
            record: dict[str, Any] = {"source": name, **json_safe(sc.sequence.to_dict())}
            if args.tokens:
                record["tokens"] = [json_safe(r) for r in sc.tokens.to_dict(orient="records")]
            print(json.dumps(record, ensure_ascii=False))
        return 0
    if args.tokens:
        cols = ["index", "token", "V", "K", "H", "z_V", "z_K", "z_H", "cusum", "alarm"]
        for (name, _), sc in zip(texts, scores, strict=True):
            frame = sc.tokens[cols].copy()
            frame["token"] = [repr(t)[1:-1] for t in frame["token"]]
            frame["alarm"] = ["ALARM" if a else "" for a in frame["alarm"]]
            print(text_table(frame, title=f"\n{name}: per-token scores"))
    rows = []
    for (name, _), sc in zip(texts, scores, strict=True):
        s = sc.sequence
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
            }
        )
    print(text_table(pd.DataFrame(rows), title=f"\nEnergy monitor ({lm.identity.spec}, alpha={cal.alpha})"))
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
        f"False alarms at nominal {cfg['alpha']:.0%} on {result.false_alarms['texts'].iloc[0]} fresh normal "
        "texts (none used for calibration), Clopper–Pearson 95% interval:",
        "",
        markdown_table(result.false_alarms),
    ]
    return "\n".join(lines) + "\n"


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
            result.false_alarms,
            title=f"\nFalse alarms on fresh normal text at nominal {config.alpha} (Clopper–Pearson 95%)",
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


def register(sub: Any) -> None:
    from ppmech.cli.measure import add_device_arg, add_model_args

    group = sub.add_parser(
        "monitor",
        help="energy monitor: calibrate, score text, benchmark",
        description="The energy monitor: learn a model's normal distribution of K, V and H on ordinary "
        "text (calibrate), score new text against it (score), or measure how well it separates "
        "shifted text (benchmark).",
        epilog="example:\n  ppmech monitor calibrate --model smollm2-135m --out cal.json",
    )
    msub = group.add_subparsers(dest="monitor_command", required=True, parser_class=type(group))

    # Config fields default to SUPPRESS (see add_model_args): MonitorConfig and BenchmarkConfig
    # supply the defaults, which --help shows.
    d = argparse.SUPPRESS
    p = msub.add_parser(
        "calibrate",
        help="learn a model's normal energy distribution",
        config="ppmech.monitor.calibration:MonitorConfig",
        description="Run the model over held-out normal text and write a calibration JSON file "
        "(per-signal means, spreads, thresholds and the feature covariance).",
        epilog="example:\n  ppmech monitor calibrate --model smollm2-135m --sequences 100 --out cal.json",
    )
    add_model_args(p)
    p.add_argument("--corpus", default=d, help="normal text: wiki-en, wiki-es, wiki-fr or a path")
    p.add_argument(
        "--split",
        choices=["heldout", "prompts", "all"],
        default=d,
        help="which part of the corpus (heldout: never used as measure/steer prompts)",
    )
    p.add_argument("--sequences", type=int, default=d, help="calibration texts")
    p.add_argument("--tokens", type=int, default=d, help="tokens per calibration text")
    p.add_argument("--alpha", type=float, default=d, help="false-alarm rate of the thresholds")
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=d,
        help="share of the texts held out to set the thresholds (split conformal)",
    )
    p.add_argument("--cusum-k", type=float, default=d, help="CUSUM slack (std units)")
    p.add_argument("--z-clip", type=float, default=d, help="clip |z| before the CUSUM")
    p.add_argument("--batch-size", type=int, default=d, help="texts per forward batch")
    p.add_argument("--out", required=True, help="calibration JSON file to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a calibration file ppmech wrote at --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = msub.add_parser(
        "score",
        help="score texts against a calibration",
        description="Score texts token by token and as a whole against a calibration: z-scores of "
        "K, V and H, a CUSUM alarm, and a sequence-level anomaly score with its p-value.",
        epilog="example:\n  ppmech monitor score notes.txt --calibration cal.json --tokens",
    )
    p.add_argument("input", help="text file (blank-line separated texts), .jsonl, or - for stdin")
    p.add_argument("--calibration", required=True, help="JSON written by `ppmech monitor calibrate`")
    p.add_argument("--model", default=None, help="model to score with (default: the calibration's)")
    p.add_argument(
        "--weights",
        choices=["pretrained", "random"],
        default=None,
        help="weights (default: the calibration's)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="weight dtype (default: the calibration's)",
    )
    p.add_argument("--seed", type=int, default=None, help="random-init seed (default: the calibration's)")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="let transformers run code shipped with the model"
    )
    add_device_arg(p, "auto")
    p.add_argument("--tokens", action="store_true", help="also print per-token scores")
    p.add_argument("--whole", action="store_true", help="score the whole input as one text")
    p.add_argument("--text-field", default="text", help="text field of JSONL input")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward batch")
    p.set_defaults(func=cmd_score)

    p = msub.add_parser(
        "benchmark",
        help="AUROC of the monitor and baselines on shifted text",
        config="ppmech.monitor.benchmark:BenchmarkConfig",
        description="Calibrate on held-out English Wikipedia, then score held-out normal text and "
        "shifted sets (shuffled, Spanish, French, random characters, repetition, random-model text, "
        "spliced) with the monitor and standard baselines; prints AUROC and TPR at 5%% FPR per set.",
        epilog="example:\n  ppmech monitor benchmark --sequences 50 --markdown monitor.md",
    )
    p.add_argument("--model", default=d, help="embedded name, .gguf path, local directory or hub id")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=d, help="weight dtype")
    p.add_argument("--seed", type=int, default=d, help="seed of the text choice (0 to 2**32-1)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=d,
        help="let transformers run code shipped with the model",
    )
    add_device_arg(p)
    p.add_argument("--sequences", type=int, default=d, help="texts per set")
    p.add_argument(
        "--calibration-sequences",
        "--calibration-texts",
        dest="calibration_sequences",
        type=int,
        default=d,
        help="held-out English texts to calibrate on (up to ~1500 on wiki-en)",
    )
    p.add_argument(
        "--false-alarm-sequences",
        type=int,
        default=d,
        help="fresh normal texts, beyond --sequences, on which false alarms are counted",
    )
    p.add_argument("--alpha", type=float, default=d, help="nominal false-alarm rate")
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=d,
        help="share of the calibration texts held out to set thresholds",
    )
    p.add_argument("--tokens", type=int, default=d, help="tokens per text")
    p.add_argument("--splice-at", type=int, default=d, help="token where the spliced set switches text")
    p.add_argument("--batch-size", type=int, default=d, help="texts per forward batch")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown to this file")
    p.add_argument("--json", default=None, help="also write all numbers as JSON to this file")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --markdown/--json files ppmech wrote; a file ppmech did not write is never replaced",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_benchmark)
