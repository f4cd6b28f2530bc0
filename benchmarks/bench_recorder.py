"""Recorder throughput against transformers ``generate`` and the fp32 matmul roofline.

Everything is measured in one run on the same prompts:

1. the machine's fp32 matmul peak (best of several large square ``torch.mm``);
2. the recorder (``ppmech.recording.Recorder``) on the paper's protocol:
   100 Wikipedia prompts x 50 tokens, 100 greedy new tokens, smollm2-135m, fp32;
3. the baseline: ``model.generate(output_hidden_states=True,
   return_dict_in_generate=True, output_scores=True)`` at the same batch size,
   left-padded, greedy, exactly 100 new tokens;
4. the whole default protocol, ``ppmech measure`` (``ppmech.measure.measure``)
   with the model already cached: load, prompt choice, recording, parquet,
   statistics.

Writes ``benchmarks/results/recorder.md`` and reassembles ``BENCHMARKS.md``.
Usage: ``python benchmarks/bench_recorder.py [--batch-size 50] [--prompts 100]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ppmech.corpus import load_documents, select_prompts
from ppmech.measure import MeasureConfig, measure
from ppmech.models.loading import load_model
from ppmech.provenance import versions
from ppmech.recording import Decoding, Recorder, left_pad

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def matmul_peak(n: int = 2048, repeats: int = 6) -> float:
    """Best observed fp32 FLOP/s of an ``n x n`` matmul."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def forward_flops(config: Any, prompt_lens: list[int], new_tokens: int) -> float:
    """Matmul FLOPs of prefill + cached decoding, logits at one position per step.

    Counts 2 FLOPs per multiply-add in every linear layer of the decoder blocks,
    the unembedding (once per step per row), and attention's QK^T and AV against
    the cached context. Norms, activations and softmax are ignored (small).
    """
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads
    inter = config.intermediate_size
    layers = config.num_hidden_layers
    per_token_linear = layers * (
        d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * inter
    )
    unembed = config.vocab_size * d
    total = 0.0
    for n in prompt_lens:
        tokens = n + new_tokens - 1  # tokens fed through the network
        total += 2 * per_token_linear * tokens
        total += 2 * unembed * new_tokens
        # attention: token at position i attends to i+1 keys: QK^T and AV, 2 FLOPs each
        ctx = sum(i + 1 for i in range(tokens))
        total += layers * 2 * 2 * heads * head_dim * ctx
    return total


def run_recorder(recorder: Recorder, batches: list[list[list[int]]], new_tokens: int) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        recorder.record(batch, new_tokens)
    return time.perf_counter() - t0


def run_generate(lm: Any, batches: list[list[list[int]]], new_tokens: int) -> float:
    model = lm.model
    pad = lm.tokenizer.pad_token_id
    t0 = time.perf_counter()
    for batch in batches:
        ids, mask, _ = left_pad(batch, pad)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                output_hidden_states=True,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=pad,
            )
        assert out.sequences.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - t0


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--context-tokens", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    peak = matmul_peak()
    lm = load_model(args.model)
    prompts = select_prompts(
        load_documents("wiki-en"), lm.tokenizer, n=args.prompts, context_tokens=args.context_tokens
    )
    ids = [p.ids for p in prompts]
    batches = [ids[i : i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    tokens = len(ids) * args.new_tokens
    flops = forward_flops(lm.model.config, [len(p) for p in ids], args.new_tokens)

    recorder = Recorder(lm, Decoding())
    run_recorder(recorder, [batches[0][:2]], 4)  # warm-up
    # Alternate the two so that drifting machine load hits both alike.
    ours, base = [], []
    for _ in range(2):
        ours.append(run_recorder(recorder, batches, args.new_tokens))
        base.append(run_generate(lm, batches, args.new_tokens))
    t_ours, t_base = min(ours), min(base)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        measure(
            MeasureConfig(
                model=args.model,
                prompts=args.prompts,
                context_tokens=args.context_tokens,
                new_tokens=args.new_tokens,
                batch_size=args.batch_size,
            ),
            Path(tmp) / "run",
            progress=False,
        )
        t_protocol = time.perf_counter() - t0

    v = versions()
    achieved = flops / t_ours
    speedup, roof = t_base / t_ours, achieved / peak
    lines = [
        "## Recorder throughput (issue #2)",
        "",
        f"Command: `python benchmarks/bench_recorder.py --batch-size {args.batch_size}` "
        f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {v['torch']}, transformers {v['transformers']}).",
        "",
        f"Workload: {args.model}, fp32, {args.prompts} Wikipedia prompts x {args.context_tokens} tokens, "
        f"{args.new_tokens} greedy new tokens, batch size {args.batch_size}; "
        f"{flops / 1e12:.2f} TFLOP of matmuls in all ({flops / tokens / 1e6:.0f} MFLOP per generated token, "
        "prefill included). Times are the best of 2 alternating repeats.",
        "",
        "| measurement | seconds | generated tok/s | target | met |",
        "|---|---|---|---|---|",
        f"| ppmech Recorder | {t_ours:.1f} | {tokens / t_ours:.0f} | | |",
        f"| transformers generate(output_hidden_states, scores) | {t_base:.1f} | {tokens / t_base:.0f} | | |",
        f"| **speed-up over generate** | | **{speedup:.2f}x** | >= 2x | {_met(speedup >= 2)} |",
        f"| fp32 matmul peak (2048^3 mm) | | {peak / 1e9:.0f} GFLOP/s | | |",
        f"| recorder achieved | | {achieved / 1e9:.0f} GFLOP/s | | |",
        f"| **fraction of roofline** | | **{roof:.0%}** | >= 50% | {_met(roof >= 0.5)} |",
        f"| **whole default protocol** (`ppmech measure`, model cached) | **{t_protocol:.1f}** | | < 90 s "
        f"| {_met(t_protocol < 90)} |",
        "",
    ]
    publish("recorder.md", lines)


def publish(name: str, lines: list[str]) -> None:
    """Write one benchmark's section to ``benchmarks/results/<name>``, rebuild BENCHMARKS.md, print it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text("\n".join(lines))
    assemble()
    print("\n".join(lines))


def assemble() -> None:
    """Rebuild BENCHMARKS.md from every ``benchmarks/results/*.md``."""
    parts = [
        "# Benchmarks",
        "",
        "Every figure here was measured by the script named in its section, in one run, on the "
        "machine described there (2 CPU cores, no GPU). Ratios compare against a baseline measured "
        "in the same run. Regenerate with `make bench`.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.md")):
        parts.append(path.read_text().strip())
        parts.append("")
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
