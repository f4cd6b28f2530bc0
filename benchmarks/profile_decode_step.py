"""Profile one warmed batch of the recorder's decode loop with ``torch.profiler`` (issue 22, item 1).

For each shape: build a randomly initialised model from the published config (no weights
travel; bf16 on CUDA, fp32 on the CPU), warm the recorder on one full batch (with
``--compile on`` that compiles the step and, on CUDA, captures its graph), then profile
one more identical batch and print:

1. the top 10 kernels (CUDA) or operators (CPU, self time) by time;
2. host gaps: time the device timeline sits idle between consecutive kernels (CUDA), or
   between consecutive top-level operators on the host (CPU: Python and dispatch overhead);
3. synchronisations: ``aten::item``, ``aten::_local_scalar_dense``, ``aten::is_nonzero``,
   stream/device synchronises and copies to the host, with counts and time;
4. copies (``aten::copy_``, ``aten::_to_copy``, ``aten::clone``, memcpy/memset kernels);
5. recompiles: TorchDynamo's counters over the profiled batch (0 on a warmed step) and
   the compiled regions entered.

Shapes: ``SmolLM2-135M`` and ``Qwen2.5-3B`` (``benchmarks/bench_recorder.py``'s GPU shapes,
batch 256 by default on CUDA), and ``tiny`` (2 layers, width 64) for a quick CPU check.
On the CPU the default is the tiny shape, batch 4, 16 new tokens, eager (``--compile on``
compiles there too, slowly). Usage::

    python benchmarks/profile_decode_step.py                                  # CPU, tiny shape
    python benchmarks/profile_decode_step.py --device cuda --compile on       # both GPU shapes
    python benchmarks/profile_decode_step.py --device cuda --shapes Qwen2.5-3B --batch 256 --trace out/

``--trace DIR`` also writes each profile as a Chrome trace (``chrome://tracing``, Perfetto).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("ppmech") is None:  # a bare checkout (a GPU machine): use its src/
    sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_recorder import GPU_SHAPES, random_model  # noqa: E402  (the benchmark's own shapes)
from ppmech.engine.recorder import Recorder  # noqa: E402
from ppmech.engine.sampling import Decoding  # noqa: E402
from ppmech.models.device import device_name, resolve_device  # noqa: E402

TINY = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
SHAPES: dict[str, dict[str, Any]] = {"tiny": TINY, **{name: shape for name, (shape, _) in GPU_SHAPES.items()}}

#: Events that make the host wait for the device (or read a device value back).
SYNC_NAMES = (
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",  # the synchronous runtime copy (cudaMemcpyAsync is not)
)
COPY_NAMES = ("aten::copy_", "aten::_to_copy", "aten::clone", "Memcpy", "Memset", "aten::contiguous")


def _span(event: Any) -> tuple[float, float]:
    return float(event.time_range.start), float(event.time_range.end)


def _ms(us: float) -> str:
    return f"{us / 1000:.3f} ms"


def _table(rows: Iterable[tuple[str, int, float]], total: float, title: str, limit: int = 10) -> list[str]:
    out = [f"  {title}", f"    {'time':>11} {'share':>6} {'count':>6}  name"]
    for name, count, us in sorted(rows, key=lambda r: -r[2])[:limit]:
        share = 100 * us / total if total > 0 else float("nan")
        out.append(f"    {_ms(us):>11} {share:5.1f}% {count:6d}  {name[:90]}")
    return out


def _group(events: Iterable[Any], duration: Any) -> list[tuple[str, int, float]]:
    counts: dict[str, int] = defaultdict(int)
    times: dict[str, float] = defaultdict(float)
    for e in events:
        counts[e.name] += 1
        times[e.name] += duration(e)
    return [(name, counts[name], times[name]) for name in counts]


def _is_op(event: Any) -> bool:
    return str(event.name).startswith("aten::")


def _op_parent(event: Any) -> Any:
    """The nearest enclosing ``aten::`` operator (``None`` for a top-level one)."""
    parent = event.cpu_parent
    while parent is not None and not _is_op(parent):
        parent = parent.cpu_parent
    return parent


def _python_caller(event: Any) -> str | None:
    """The innermost Python frame above ``event`` outside torch (profiled ``with_stack``)."""
    parent = event.cpu_parent
    while parent is not None:
        name = str(parent.name)
        if ".py(" in name and "torch/" not in name:
            return name
        parent = parent.cpu_parent
    return None


def _gaps(intervals: list[tuple[float, float]]) -> tuple[float, float, list[float]]:
    """``(busy, idle, gaps)`` in µs over sorted intervals: the union's length and the holes between."""
    busy = idle = 0.0
    gaps: list[float] = []
    end = None
    for start, stop in sorted(intervals):
        if end is None:
            busy += stop - start
            end = stop
            continue
        if start > end:
            gaps.append(start - end)
            idle += start - end
            busy += stop - start
        elif stop > end:
            busy += stop - end
        end = max(end, stop)
    return busy, idle, gaps


def analyse(prof: Any, device: torch.device, new_tokens: int, wall_s: float) -> list[str]:
    """The five sections of the module docstring, as printable lines."""
    events = list(prof.events())
    cuda = device.type == "cuda"
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    # Python frames (profiled with_stack) are not operators; inductor's CPU kernels ("<built-in
    # function kernel>") are.
    host = [
        e
        for e in events
        if e.device_type == DeviceType.CPU
        and ".py(" not in e.name
        and not e.name.startswith("<built-in method")
    ]
    per_step = wall_s * 1e3 / new_tokens
    lines = [f"  wall time of the profiled batch: {wall_s * 1e3:.1f} ms, {per_step:.2f} ms per step"]

    # 1. top 10
    if cuda and kernels:
        k_total = sum(e.time_range.elapsed_us() for e in kernels)
        lines += _table(
            _group(kernels, lambda e: e.time_range.elapsed_us()), k_total, "top kernels (device time)"
        )
    else:
        cpu_total = sum(e.self_cpu_time_total for e in host)
        lines += _table(
            _group(host, lambda e: e.self_cpu_time_total), cpu_total, "top operators (host self time)"
        )

    # 2. host gaps
    if cuda and kernels:
        busy, idle, gaps = _gaps([_span(e) for e in kernels])
        what = "device idle between kernels"
    else:
        main = (
            max({e.thread for e in host}, key=lambda t: sum(1 for e in host if e.thread == t)) if host else 0
        )
        top = [e for e in host if e.thread == main and _is_op(e) and _op_parent(e) is None]
        busy, idle, gaps = _gaps([_span(e) for e in top])
        what = "host between top-level operators (Python, dispatch)"
    span = busy + idle
    big = sorted(gaps, reverse=True)[:5]
    lines.append(
        f"  host gaps ({what}): {_ms(idle)} of {_ms(span)} ({100 * idle / span if span else 0:.1f}%), "
        f"{len(gaps)} gaps, {sum(g > 10 for g in gaps)} over 10 us, "
        f"{idle / max(new_tokens, 1) / 1000:.3f} ms per step; "
        f"largest: {', '.join(_ms(g) for g in big) or 'none'}"
    )

    # 3. synchronisations
    syncs = [e for e in events if any(e.name.startswith(n) for n in SYNC_NAMES)]
    to_host = [e for e in kernels if "DtoH" in e.name or "Device -> Pageable" in e.name or "DtoP" in e.name]
    sync_rows = _group(syncs, lambda e: e.time_range.elapsed_us()) + _group(
        to_host, lambda e: e.time_range.elapsed_us()
    )
    n_sync = sum(r[1] for r in sync_rows)
    lines.append(
        f"  synchronisations: {n_sync} events ({n_sync / max(new_tokens, 1):.2f} per step), "
        f"{_ms(sum(r[2] for r in sync_rows))}"
    )
    # Where the host waits: the innermost Python frame of each synchronising operator (with_stack).
    origins: dict[str, int] = defaultdict(int)
    for e in syncs:
        frame = _python_caller(e)
        if frame and _op_parent(e) is None:  # count each sync once, at its outermost operator
            origins[frame] += 1
    lines += [
        f"    {count:6d} x {name[:80]} ({_ms(us)})"
        for name, count, us in sorted(sync_rows, key=lambda r: -r[1])
    ]
    lines += [
        f"    host waits in {where} ({count}x)"
        for where, count in sorted(origins.items(), key=lambda kv: -kv[1])[:6]
    ]

    # 4. copies
    copies = [e for e in events if any(n in e.name for n in COPY_NAMES)]
    copy_rows = _group(copies, lambda e: e.time_range.elapsed_us())
    lines.append(f"  copies: {sum(r[1] for r in copy_rows)} events, {_ms(sum(r[2] for r in copy_rows))}")
    lines += [
        f"    {count:6d} x {name[:80]} ({_ms(us)})"
        for name, count, us in sorted(copy_rows, key=lambda r: -r[2])[:6]
    ]
    return lines


def _dynamo_counters() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {
        f"{group}.{key}": int(value) for group, values in counters.items() for key, value in values.items()
    }


def profile_shape(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = random_model(SHAPES[name], device, dtype)
    recorder = Recorder(lm, Decoding(), compile=args.compile)
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[name]["vocab_size"]
    prompts = [
        torch.randint(3, vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)
    ]

    started = time.perf_counter()
    for _ in range(args.warmup):
        recorder.record(prompts, args.new_tokens)
    warm_s = time.perf_counter() - started
    before = _dynamo_counters()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_stack=True) as prof:
        t0 = time.perf_counter()
        recorder.record(prompts, args.new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    after = _dynamo_counters()
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.trace) / f"{name}-b{args.batch}.json"))

    ident = lm.identity
    head = (
        f"{name} ({ident.num_parameters / 1e6:.0f}M parameters, {ident.num_layers} layers, width "
        f"{ident.hidden_size}), {dtype}, batch {args.batch}, {args.prompt_tokens}-token prompts, "
        f"{args.new_tokens} new tokens, decode {'compiled' if recorder.engine.fast else 'eager'}; "
        f"warm-up {args.warmup} batch(es) {warm_s:.1f} s"
    )
    lines = [head, *analyse(prof, device, args.new_tokens, wall)]
    regions = sum(1 for e in prof.events() if "Torch-Compiled Region" in e.name)
    recompiles = {
        k: v for k, v in changed.items() if "recompil" in k or "unique_graphs" in k or "compil" in k
    }
    lines.append(
        f"  recompiles: dynamo counters changed over the profiled batch: {recompiles or 'none'}; "
        f"compiled regions entered: {regions}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument(
        "--shapes", nargs="+", choices=sorted(SHAPES), help="default: tiny on the CPU, else the GPU shapes"
    )
    parser.add_argument("--batch", type=int, help="rows (default 256 on CUDA, 4 on the CPU)")
    parser.add_argument("--prompt-tokens", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, help="steps (default 100 on CUDA, 16 on the CPU)")
    parser.add_argument("--compile", choices=("on", "off"), help="default: on with CUDA, off on the CPU")
    parser.add_argument(
        "--warmup", type=int, default=1, help="full batches before the profiled one (default 1)"
    )
    parser.add_argument("--trace", help="also write each profile as a Chrome trace into this directory")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.shapes = args.shapes or (["SmolLM2-135M", "Qwen2.5-3B"] if gpu else ["tiny"])
    args.batch = args.batch or (256 if gpu else 4)
    args.new_tokens = args.new_tokens or (100 if gpu else 16)
    args.compile = args.compile or ("on" if gpu else "off")
    print(f"device: {device_name(device)}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    for name in args.shapes:
        print("\n".join(profile_shape(name, args, device)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
