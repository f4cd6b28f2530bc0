"""Per-token overhead of the energy monitor on top of plain generation (issue #5).

Measured in one run, on the same prompts, alternating the two so that drifting
machine load hits both alike:

1. plain greedy generation: the engine's KV-cached loop (``Engine.steps``), batch 1,
   no hook, taking the argmax of the model's logits;
2. the same generation through :meth:`ppmech.monitor.EnergyMonitor.generate`:
   the final-norm hook, float32 log-softmax, ``V``/``K``/``H``, the baseline
   signals, z-scores and the CUSUM update, every token.

Both produce the same tokens (checked). The monitor is calibrated beforehand
(not timed). Writes ``benchmarks/results/monitor.md`` and reassembles
``BENCHMARKS.md``. Usage: ``python benchmarks/bench_monitor.py [--prompts 4] [--new-tokens 64]``.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch

from ppmech.corpus import load_documents, select_prompts
from ppmech.engine.decoder import Engine
from ppmech.engine.sampling import Decoding, TokenChooser
from ppmech.models.loading import load_model
from ppmech.monitor.calibration import MonitorConfig
from ppmech.monitor.stream import EnergyMonitor
from ppmech.provenance import versions

RESULTS_NAME = "monitor.md"


@torch.no_grad()
def plain_generate(lm: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy, batch 1, KV-cached, through the same engine loop; no scoring, no statistics."""
    engine = Engine(lm, capture=[])
    with engine.start([prompt], new_tokens) as session:
        chooser = TokenChooser(Decoding(), 1, engine.device)
        return [int(step.tokens[0]) for step in engine.steps(session, new_tokens, chooser)]


def monitored_generate(monitor: EnergyMonitor, prompt: list[int], new_tokens: int) -> list[int]:
    return [token for token, _ in monitor.generate(prompt, new_tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--context-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load_model(args.model)
    monitor = EnergyMonitor.calibrate(lm, MonitorConfig(model=args.model, sequences=8, tokens=32))
    prompts = [
        p.ids
        for p in select_prompts(
            load_documents("wiki-en"), lm.tokenizer, args.prompts, context_tokens=args.context_tokens, seed=1
        )
    ]
    plain_generate(lm, prompts[0], 4)  # warm-up
    monitored_generate(monitor, prompts[0], 4)

    plain_times, monitor_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain_tokens = [plain_generate(lm, p, args.new_tokens) for p in prompts]
        plain_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        monitor_tokens = [monitored_generate(monitor, p, args.new_tokens) for p in prompts]
        monitor_times.append(time.perf_counter() - t0)
        assert plain_tokens == monitor_tokens, "the monitored generation chose different tokens"
    t_plain, t_mon = min(plain_times), min(monitor_times)
    tokens = args.prompts * args.new_tokens
    v = versions()
    lines = [
        "## Energy monitor overhead (issue #5)",
        "",
        f"Command: `python benchmarks/bench_monitor.py --prompts {args.prompts} --new-tokens "
        f"{args.new_tokens} --repeats {args.repeats}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {v['torch']}, transformers {v['transformers']}).",
        "",
        f"Workload: {args.model}, fp32, batch 1, {args.prompts} Wikipedia prompts x {args.context_tokens} "
        f"tokens, {args.new_tokens} greedy new tokens each ({tokens} tokens); both loops produce the same "
        f"tokens. Times are the best of {args.repeats} alternating repeats; the ratio compares runs "
        "interleaved in the same process.",
        "",
        "| measurement | seconds | ms per token |",
        "|---|---|---|",
        f"| plain generation (the engine's KV-cached loop, argmax) | {t_plain:.2f} "
        f"| {1e3 * t_plain / tokens:.1f} |",
        f"| monitored generation (EnergyMonitor.generate) | {t_mon:.2f} | {1e3 * t_mon / tokens:.1f} |",
        f"| **overhead per token** | | **{1e3 * (t_mon - t_plain) / tokens:.2f}** |",
        f"| **ratio monitored / plain** | **{t_mon / t_plain:.3f}x** | |",
        "",
        f"All repeats (s): plain {', '.join(f'{t:.2f}' for t in plain_times)}; "
        f"monitored {', '.join(f'{t:.2f}' for t in monitor_times)}.",
        "",
    ]
    from bench_recorder import publish  # same folder; rebuilds BENCHMARKS.md

    publish(RESULTS_NAME, lines)


if __name__ == "__main__":
    main()
