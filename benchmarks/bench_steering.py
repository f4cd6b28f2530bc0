"""Cost of a Jacobian-steered generation step against a plain one, measured in one run.

On the same prompts (Wikipedia, 50 tokens, smollm2-135m, fp32, greedy, batch of
``--prompts`` rows) and the same number of new tokens:

1. plain: :class:`ppmech.engine.recorder.Recorder` (KV-cached greedy decoding that
   records ``h_t``, ``ln p`` and entropy);
2. steered at the final norm (the paper's case): ``ppmech.steering.algorithm`` with every
   step targeting the article's own next token (teacher-style, η = 0.5, K = 20),
   so steps whose target is already at η cost only the check;
3. steered at the residual after block ``L`` (beyond the paper), the same targets;
   every line-search trial is a cached one-token forward through the model.

Plain and steered runs alternate ``--repeats`` times; the table reports the best
time of each. Writes ``benchmarks/results/steering.md`` and rebuilds ``BENCHMARKS.md``.
Usage: ``python benchmarks/bench_steering.py [--prompts 8] [--new-tokens 16] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ppmech.corpus import load_documents, select_prompts
from ppmech.engine.recorder import Recorder
from ppmech.engine.sampling import Decoding
from ppmech.models.loading import load_model
from ppmech.provenance import versions
from ppmech.steering.algorithm import SteeringConfig
from ppmech.steering.generation import _steered_trace

RESULTS_NAME = "steering.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=None, help="block for the layer run (default: middle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-layer", action="store_true", help="time only plain and final-norm steering")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    tok = lm.tokenizer
    prompts = select_prompts(
        load_documents("wiki-en"), tok, args.prompts, 50, continuation_tokens=args.new_tokens, split="prompts"
    )
    ids = [p.ids for p in prompts]
    schedule = torch.tensor([p.continuation_ids for p in prompts], dtype=torch.long)
    layer = args.layer if args.layer is not None else lm.identity.num_layers // 2
    recorder = Recorder(lm, Decoding())
    config = SteeringConfig()

    def plain() -> float:
        t0 = time.perf_counter()
        recorder.record(ids, args.new_tokens)
        return time.perf_counter() - t0

    stats: dict[str, tuple[int, int, float]] = {}

    def steered(at: int | None) -> float:
        t0 = time.perf_counter()
        # The steered half of steering.generation.steered_generation alone (its natural half is `plain`).
        trace = _steered_trace(lm, ids, schedule, args.new_tokens, config, at, Decoding(), None)
        elapsed = time.perf_counter() - t0
        worked = trace.steer_steps > 0
        stats["final" if at is None else "layer"] = (
            int(worked.sum()),
            int(trace.steer_steps.numel()),
            float(trace.steer_steps[worked].double().mean()) if worked.any() else 0.0,
        )
        return elapsed

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "final": [], "layer": []}
    for _ in range(args.repeats):
        times["plain"].append(plain())
        times["final"].append(steered(None))
        if not args.skip_layer:
            times["layer"].append(steered(layer))
    best = {k: min(v) for k, v in times.items() if v}
    steps = args.prompts * args.new_tokens

    def row(name: str, key: str) -> str:
        return (
            f"| {name} | {best[key]:.2f} | {1e3 * best[key] / args.new_tokens:.1f} "
            f"| **{best[key] / best['plain']:.2f}x** |"
        )

    f_worked, f_total, f_mean = stats["final"]
    l_worked, l_total, l_mean = stats.get("layer", (0, 0, 0.0))
    lines = [
        "## Jacobian steering overhead (`benchmarks/bench_steering.py`)",
        "",
        f"{args.model}, fp32, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"torch {versions()['torch']}. {args.prompts} Wikipedia prompts of 50 tokens decoded together "
        f"(batch {args.prompts}), {args.new_tokens} greedy new tokens; steered runs target the article's "
        f"own next token at every step (η = {config.eta}, K = {config.max_steps}). Times are the best of "
        f"{args.repeats} alternating repeats in one run; the ratios compare runs interleaved in the "
        "same process.",
        "",
        "| run | seconds | ms per batched step | steered step / plain step |",
        "|---|---|---|---|",
        row("plain (Recorder, greedy)", "plain"),
        row("steered at the final norm (paper)", "final"),
        *(
            [row(f"steered at the residual after block {layer} (beyond the paper)", "layer")]
            if "layer" in best
            else []
        ),
        "",
        f"Steps that needed steering (p below η): final {f_worked}/{f_total} "
        f"(mean {f_mean:.2f} gradient steps each)"
        + (f", layer {layer} {l_worked}/{l_total} (mean {l_mean:.2f})" if "layer" in best else "")
        + f". A step is one batched decoding step of all {args.prompts} rows; {steps} row-steps per run."
        + ("" if "layer" in best else " The intermediate-layer run was skipped (--skip-layer)."),
        "",
        f"All repeats (s): plain {', '.join(f'{t:.2f}' for t in times['plain'])}; "
        f"final {', '.join(f'{t:.2f}' for t in times['final'])}; "
        f"layer {', '.join(f'{t:.2f}' for t in times['layer']) or 'skipped'}.",
        "",
    ]
    from bench_recorder import publish  # same folder; rebuilds BENCHMARKS.md

    publish(RESULTS_NAME, lines)


if __name__ == "__main__":
    main()
