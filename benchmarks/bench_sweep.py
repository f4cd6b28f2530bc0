"""Ray's overhead per run: ``ppmech sweep`` against the same runs done one after another with ``measure``.

Everything is measured in one process, on the same machine:

1. **sequential**: each run of the study with :func:`ppmech.measure.measure`,
   in this process, with ``--threads`` torch threads (as ``ppmech measure`` would);
2. **sweep, one run at a time**: :func:`ppmech.sweep.sweep` on a local Ray
   instance of ``--threads`` CPUs, each run reserving them all (``cpus = threads``),
   so each run gets the same threads as in (1) and the difference is Ray's
   overhead: task dispatch, the model load in a worker process, returning the
   files, and the driver writing them;
3. with ``--threads`` above 1, **sweep, runs in parallel**: each run reserving
   one CPU (the default), so ``threads`` runs proceed at once, one thread each;
4. **rerun of a finished study**: every run reused, Ray not started.

The default is one thread: on a shared machine, runs with several threads each
suffer from oversubscription far more than from anything Ray does.

Every method is warmed first (a model load in this process; a sweep that
starts Ray and its workers), then the timed repeats alternate; the best of
``--repeats`` is reported. Ray's own start-up is reported separately.

Writes ``benchmarks/results/sweep.md`` and reassembles ``BENCHMARKS.md``.
Usage: ``python benchmarks/bench_sweep.py [--prompts 10] [--new-tokens 20] [--threads 1] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ppmech.measure import measure
from ppmech.provenance import versions
from ppmech.sweep import SweepOptions, parse_study, sweep
from ppmech.sweep.cluster import connect
from ppmech.sweep.study import Resources

RESULTS_NAME = "sweep.md"


def study_text(args: argparse.Namespace, cpus: int) -> str:
    return (
        f'name = "bench"\nmodels = ["{args.model}"]\nweights = ["pretrained", "random"]\nseed = [0, 1]\n'
        f"prompts = {args.prompts}\ncontext_tokens = {args.context_tokens}\nnew_tokens = {args.new_tokens}\n"
        f"batch_size = {args.prompts}\nn_boot = 200\n[resources]\ncpus = {cpus}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--context-tokens", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    torch.set_num_threads(args.threads)
    one_at_a_time = parse_study(study_text(args, args.threads), "bench.toml")
    parallel = parse_study(study_text(args, 1), "bench.toml")
    n = len(one_at_a_time.runs)
    scratch = Path(tempfile.mkdtemp(prefix="ppmech-bench-sweep-"))
    load_start = os.getloadavg()[0]
    opts = SweepOptions(progress=False)

    def sequential(tag: str) -> float:
        t0 = time.perf_counter()
        for run in one_at_a_time.runs:
            measure(run.config, scratch / tag / run.name, progress=False)
        return time.perf_counter() - t0

    def swept(study_name: str, tag: str) -> float:
        study = one_at_a_time if study_name == "serial" else parallel
        t0 = time.perf_counter()
        result = sweep(study, scratch / tag, opts)
        elapsed = time.perf_counter() - t0
        assert all(o.status == "complete" and not o.reused for o in result.outcomes)
        return elapsed

    try:
        # Warm: this process (model files, corpus) and Ray (start-up, worker imports, model files).
        measure(one_at_a_time.runs[0].config, scratch / "warm-seq", progress=False)
        t0 = time.perf_counter()
        connect(Resources(), num_cpus=args.threads)  # the local instance `ppmech sweep` starts
        ray_start = time.perf_counter() - t0
        warm_sweep = swept("serial", "warm-sweep")
        methods = ["sequential", "serial", *(["parallel"] if args.threads > 1 else [])]
        times: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.repeats):
            times["sequential"].append(sequential(f"sequential-{r}"))
            for m in methods[1:]:
                times[m].append(swept(m, f"{m}-{r}"))
        t0 = time.perf_counter()
        again = sweep(one_at_a_time, scratch / f"serial-{args.repeats - 1}", opts)
        rerun = time.perf_counter() - t0
        assert all(o.reused for o in again.outcomes)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

    load = os.getloadavg()[0]
    best = {k: min(v) for k, v in times.items()}
    overhead = (best["serial"] - best["sequential"]) / n
    v = versions()
    lines = [
        "## Sweep overhead on Ray (issue #12, `benchmarks/bench_sweep.py`)",
        "",
        f"Command: `python benchmarks/bench_sweep.py --prompts {args.prompts} --new-tokens {args.new_tokens} "
        f"--threads {args.threads} --repeats {args.repeats}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, torch {v['torch']}, transformers {v['transformers']}, "
        f"ray {ray.__version__}).",
        "",
        f"Workload: {n} runs of {args.model} (pretrained and random weights x seeds 0 and 1), each "
        f"{args.prompts} Wikipedia prompts x {args.context_tokens} tokens, {args.new_tokens} greedy new "
        f"tokens, one batch, {args.threads} torch thread(s) per run. Every method was warmed first; times "
        "are the best of "
        f"{args.repeats} alternating repeats in one process.",
        "",
        "| method | seconds for all runs | seconds per run | vs sequential |",
        "|---|---|---|---|",
        f"| `measure`, one run after another, in this process | {best['sequential']:.1f} | "
        f"{best['sequential'] / n:.2f} | **1.00x** |",
        f"| `ppmech sweep`, one run at a time (`cpus = {args.threads}`) | {best['serial']:.1f} | "
        f"{best['serial'] / n:.2f} | **{best['serial'] / best['sequential']:.2f}x** |",
        *(
            [
                f"| `ppmech sweep`, {args.threads} runs at once (`cpus = 1`) | {best['parallel']:.1f} | "
                f"{best['parallel'] / n:.2f} | **{best['parallel'] / best['sequential']:.2f}x** |"
            ]
            if "parallel" in best
            else []
        ),
        f"| rerun of the finished study (all {n} reused, no Ray task) | {rerun:.2f} | {rerun / n:.3f} | |",
        "",
        f"**Ray's overhead per run: {overhead:+.2f} s** (sweep one run at a time minus sequential, per "
        "run; it includes loading the model in a worker process, where `measure` in one process also "
        "reloads it per run, returning the files and writing them on the driver). One-time costs, not in "
        "the table: "
        f"starting the local Ray instance {ray_start:.1f} s; the first sweep (worker processes importing "
        f"torch and transformers) {warm_sweep:.1f} s for {n} runs.",
        "",
        f"Machine load (1-minute load average) at the start {load_start:.1f}, at the end {load:.1f} "
        "(this machine is shared).",
        "",
        "All repeats (s): "
        + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in t)}" for k, t in times.items())
        + ".",
    ]
    from bench_recorder import publish  # same folder; rebuilds BENCHMARKS.md

    publish(RESULTS_NAME, lines)


if __name__ == "__main__":
    main()
