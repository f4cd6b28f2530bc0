"""How far bfloat16 compute moves K, V, H and the headline statistics from float32.

The embedded SmolLM2-135M, its float32 weights computed in float32 and in
bfloat16 (``--dtype bfloat16``: the same weights cast), 20 Wikipedia prompts x 50
tokens, 50 new tokens, two decodings:

* ``teacher``: both precisions score the article's own next 50 tokens, so every
  step compares the same token at the same position;
* ``greedy``: each precision decodes its own tokens (they may part ways).

In both, ``‖h_t - h_{t-1}‖²`` is computed in float64 from the states the model
produced (bfloat16 states differenced exactly), and ``ln p`` from a float32
log-softmax of the model's logits. Writes ``benchmarks/results/precision.md``
(a measurement, not a speed) and prints the table that the README carries.

Usage: ``python benchmarks/precision_bf16.py [--prompts 20] [--tokens 50]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppmech import artifacts
from ppmech.measure import MeasureConfig, measure

STATS = [
    ("global_cv", "global CV (std H / mean H)"),
    ("mean_trajectory_cv", "mean trajectory CV"),
    ("mean_energy", "mean H"),
    ("mean_K", "mean K"),
    ("mean_V", "mean V"),
    ("kv_ratio", "K/V ratio"),
    ("drift", "drift (ΣΔH / Σ\\|ΔH\\|)"),
]


def _run(tmp: Path, dtype: str, decoding: str, args: argparse.Namespace) -> Any:
    config = MeasureConfig(
        prompts=args.prompts,
        context_tokens=args.context,
        new_tokens=args.tokens,
        decoding=decoding,
        dtype=dtype,
        n_boot=0,
        device="cpu",
    )
    return measure(config, tmp / f"{dtype}-{decoding}", progress=False)


def _step_diffs(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-step |bf16 - fp32| of K, V and H on matched (trajectory, step) rows where both are finite."""
    merged = a.merge(b, on=["trajectory", "step"], suffixes=("_32", "_16"))
    out = {}
    for col in ("K", "V", "H"):
        x = merged[f"{col}_32"].to_numpy(np.float64)
        y = merged[f"{col}_16"].to_numpy(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        d = np.abs(y[ok] - x[ok])
        out[col] = {
            "mean_abs": float(d.mean()),
            "p99_abs": float(np.quantile(d, 0.99)),
            "max_abs": float(d.max()),
            "mean_fp32": float(np.abs(x[ok]).mean()),
            "corr": float(np.corrcoef(x[ok], y[ok])[0, 1]),
            "n": int(ok.sum()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--context", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = {(d, m): _run(tmp, d, m, args) for m in ("teacher", "greedy") for d in ("float32", "bfloat16")}
    lines = [
        "## bfloat16 against float32 (issue #11)",
        "",
        f"Command: `python benchmarks/precision_bf16.py --prompts {args.prompts} --tokens {args.tokens}` "
        f"({time.strftime('%Y-%m-%d')}, CPU, {time.perf_counter() - started:.0f} s). smollm2-135m, "
        f"{args.prompts} Wikipedia prompts x {args.context} tokens, {args.tokens} new tokens; the same "
        "float32 weights computed in float32 and in bfloat16. K from float64 differences of the states "
        "the model produced; V from a float32 log-softmax.",
        "",
        "Per step, teacher-forced on the same article tokens (|bf16 − fp32|, nats):",
        "",
        "| term | mean abs diff | 99th pct | max | mean abs fp32 value | correlation | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    diffs = _step_diffs(runs[("float32", "teacher")].steps, runs[("bfloat16", "teacher")].steps)
    for col, d in diffs.items():
        lines.append(
            f"| {col} | {d['mean_abs']:.4f} | {d['p99_abs']:.4f} | {d['max_abs']:.4f} | "
            f"{d['mean_fp32']:.3f} | {d['corr']:.5f} | {d['n']} |"
        )
    g32, g16 = runs[("float32", "greedy")].steps, runs[("bfloat16", "greedy")].steps
    same = g32.merge(g16, on=["trajectory", "step"], suffixes=("_32", "_16"))
    agree = float((same["token_id_32"] == same["token_id_16"]).mean())
    first_split = []
    for _, part in same.groupby("trajectory"):
        differ = np.nonzero(part["token_id_32"].to_numpy() != part["token_id_16"].to_numpy())[0]
        first_split.append(int(differ[0]) if len(differ) else args.tokens)
    lines += [
        "",
        f"Greedy: {agree:.1%} of steps emit the same token; the median trajectory first parts ways at step "
        f"{int(np.median(first_split))} (of {args.tokens}). Headline statistics:",
        "",
        "| statistic | teacher fp32 | teacher bf16 | greedy fp32 | greedy bf16 |",
        "|---|---|---|---|---|",
    ]
    for key, label in STATS:
        vals = [
            getattr(runs[(d, m)].statistics, key)
            for m in ("teacher", "greedy")
            for d in ("float32", "bfloat16")
        ]
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).resolve().parent / "results" / "precision.md"
    out.parent.mkdir(exist_ok=True)
    artifacts.write_text(out, text)
    from bench_recorder import assemble  # same folder; rebuilds BENCHMARKS.md

    assemble()
    print(text)


if __name__ == "__main__":
    main()
