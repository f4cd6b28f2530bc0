"""The measurement protocol: prompts -> recorder -> run directory -> statistics.

:class:`MeasureConfig` is the one configuration behind both ``ppmech measure``
and :func:`measure`. Its defaults are the paper's protocol (§D.3.1) on the
embedded SmolLM2-135M: 100 Wikipedia prompts of 50 tokens, 100 greedy tokens.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ppmech.artifacts import Output
from ppmech.corpus import load_documents, select_prompts
from ppmech.engine.batching import BatchSizer, chunk_size, parse_batch_size
from ppmech.engine.compiled import check_compile_mode
from ppmech.engine.device import device_record
from ppmech.engine.recorder import BatchRecord, Recorder
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError, check_seed
from ppmech.models.loading import load_configured
from ppmech.provenance import versions
from ppmech.runs import RunWriter, batch_tables, load_run
from ppmech.statistics import EnergyStatistics, statistics_from_steps

#: Settings that choose how a run is computed, not what it records (see :class:`MeasureConfig`).
EXECUTION_KEYS = ("device", "compile", "batch_size")


@dataclass(frozen=True)
class MeasureConfig:
    """Everything that determines a measurement run.

    Attributes:
        model: embedded name, ``.gguf`` path, local directory or hub id.
        weights: ``pretrained`` or ``random``.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
        corpus: ``wiki-en``, ``wiki-es``, ``wiki-fr`` or a path (see :mod:`ppmech.corpus`).
        text_field: text field of JSONL files and datasets.
        prompts: number of trajectories.
        context_tokens: prompt length in tokens (before the model's BOS, if any).
        new_tokens: steps recorded per trajectory.
        decoding: ``greedy`` (the most probable token each step), ``sample`` (drawn from
            the model's distribution, with ``temperature``/``top_k``/``top_p``) or ``teacher``
            (the article's own next ``new_tokens`` tokens are fed and scored: the prompt
            document needs ``context_tokens + new_tokens`` tokens).
        temperature, top_k, top_p: sampling parameters (``sample`` only; refused otherwise).
        stop_at_eos: end trajectories at EOS (off: fixed length, as in the paper).
        seed: seeds the prompt choice, random init, sampling and the bootstrap; ``[0, 2**32)``.
        batch_size: trajectories per forward batch, or ``auto`` (the largest that
            fits, halved on out-of-memory; 50 on the CPU): see :mod:`ppmech.engine.batching`.
        save_hidden: also store ``h_t`` under ``hidden/``.
        n_boot: bootstrap replicates for the CIs.
        trust_remote_code: let transformers run model code from the checkpoint.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        compile: ``auto``, ``on`` or ``off``: the static-cache, compiled decode step
            (see :mod:`ppmech.engine.compiled`).

    ``device``, ``compile`` and ``batch_size`` choose how a run is computed, not
    what it records (:data:`EXECUTION_KEYS`): they move recorded numbers only by
    float round-off (batched equals one-at-a-time within 1e-3; compiled equals
    eager within 1e-3), and runs that differ only in them are interchangeable.
    """

    model: str = "smollm2-135m"
    weights: str = "pretrained"
    dtype: str = "float32"
    corpus: str = "wiki-en"
    text_field: str = "text"
    prompts: int = 100
    context_tokens: int = 50
    new_tokens: int = 100
    decoding: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_at_eos: bool = False
    seed: int = 0
    batch_size: int | str = "auto"
    save_hidden: bool = False
    n_boot: int = 1000
    trust_remote_code: bool = False
    device: str = "auto"
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise PPMechError(
                f"`prompts` must be at least 1 (got {self.prompts})", "ask for 1 or more prompts"
            )
        if self.new_tokens < 2:
            raise PPMechError(
                f"`new_tokens` must be at least 2 (got {self.new_tokens})",
                "H needs two steps; use e.g. 100",
            )
        if self.context_tokens < 1:
            raise PPMechError(
                f"`context_tokens` must be at least 1 (got {self.context_tokens})", "use e.g. 50"
            )
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))
        check_compile_mode(self.compile)
        if self.n_boot < 0:
            raise PPMechError(
                f"`n_boot` must be 0 (no CIs) or more (got {self.n_boot})", "use e.g. 1000 replicates"
            )
        check_seed(self.seed)
        for name in ("corpus", "model", "text_field"):
            if not str(getattr(self, name)).strip():
                raise PPMechError(
                    f"`{name}` is empty", f"give `{name}` a value, or leave it out for its default"
                )
        self.decoding_config()  # validates the sampling parameters
        if self.decoding != "sample":
            # Refused rather than ignored: the run's summary would record a temperature
            # (or top-k/top-p) that never acted, and the user would believe it had.
            given = [
                f"`{name}`"
                for name, default in (("temperature", 1.0), ("top_k", None), ("top_p", None))
                if getattr(self, name) != default
            ]
            if given:
                raise PPMechError(
                    f"{', '.join(given)} only applies to `decoding` sample, not {self.decoding}",
                    f"drop {', '.join(given)}, or use `decoding` sample",
                )

    def decoding_config(self) -> Decoding:
        return Decoding(
            strategy=self.decoding,  # type: ignore[arg-type]
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop_at_eos=self.stop_at_eos,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MeasureResult:
    """What :func:`measure` returns: the run directory and its statistics."""

    path: Path
    statistics: EnergyStatistics
    summary: dict[str, Any]
    steps: pd.DataFrame
    trajectories: pd.DataFrame
    files: list[str] = field(default_factory=list)


def measure(
    config: MeasureConfig,
    out: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> MeasureResult:
    """Run the measurement protocol and write a run directory.

    Raises:
        PPMechError: on any bad input (see :mod:`ppmech.errors`).
    """
    if not str(out).strip():
        raise PPMechError("`out` is empty", "give `out` a run directory")
    out = Path(out)
    # Refuse a taken `out` (or a running writer) before the minutes of loading and recording.
    Output(out, "measure", overwrite=overwrite, resume=resume, resumable=True).preflight()
    started = time.perf_counter()
    lm = load_configured(config)
    decoding = config.decoding_config()
    recorder = Recorder(lm, decoding, keep_hidden=config.save_hidden, compile=config.compile)
    special = len(lm.tokenizer("a")["input_ids"]) - len(
        lm.tokenizer("a", add_special_tokens=False)["input_ids"]
    )
    recorder.check_length(config.context_tokens + max(special, 0), config.new_tokens)
    documents = load_documents(config.corpus, text_field=config.text_field)
    teacher = decoding.strategy == "teacher"
    prompts = select_prompts(
        documents,
        lm.tokenizer,
        n=config.prompts,
        context_tokens=config.context_tokens,
        continuation_tokens=config.new_tokens if teacher else 0,
        seed=config.seed,
        continuation_field="new_tokens",
        purpose="teacher decoding scores the article's own next `new_tokens` tokens",
    )
    computed: list[EnergyStatistics] = []
    with RunWriter(out, config.to_dict(), overwrite=overwrite, resume=resume) as writer:
        done = writer.done_batches()
        chunk = chunk_size(config.batch_size)
        batches = [prompts[i : i + chunk] for i in range(0, len(prompts), chunk)]
        recorder.rows_left = sum(len(b) for i, b in enumerate(batches) if i not in done)
        sizer = BatchSizer(config.batch_size, lm.device)
        bar = tqdm(
            total=len(prompts) * config.new_tokens,
            desc=f"recording {config.model} ({config.weights})",
            unit="tok",
            disable=not progress,
            file=sys.stderr,
        )

        def record(part: list[Any]) -> BatchRecord:
            result = recorder.record(
                [p.ids for p in part],
                config.new_tokens,
                seeds=[config.seed * 1_000_003 + p.index for p in part],
                targets=[p.continuation_ids for p in part] if teacher else None,
            )
            bar.update(len(part) * config.new_tokens)
            return result

        record_seconds = 0.0
        for index, batch in enumerate(batches):
            if index in done:
                bar.update(len(batch) * config.new_tokens)
                continue
            t0 = time.perf_counter()
            # Sub-batches that finished before an out-of-memory back-off are kept, not rerun.
            batch_record = BatchRecord.concat(sizer.map(batch, record))
            record_seconds += time.perf_counter() - t0
            traj, steps = batch_tables(
                batch_record,
                [p.index for p in batch],
                [p.source for p in batch],
                [p.ids for p in batch],
                lm.tokenizer,
            )
            hidden = batch_record.hidden.float().numpy() if batch_record.hidden is not None else None
            writer.write_batch(index, traj, steps, hidden)
        bar.close()
        execution = {
            **device_record(lm.device),
            "batch_size": sizer.current,
            "out_of_memory_backoffs": sizer.backoffs,
            "decode": "compiled" if recorder.engine.fast else "eager",
        }

        def summarise(steps: pd.DataFrame) -> dict[str, Any]:
            stats = statistics_from_steps(steps, n_boot=config.n_boot, seed=config.seed)
            computed.append(stats)
            return {
                "statistics": stats.to_dict(),
                "config": config.to_dict(),
                "decoding": decoding.to_dict(),
                "model": lm.identity.to_dict(),
                "versions": versions(),
                "execution": execution,
                "counts": {
                    "trajectories": len(prompts),
                    "prompt_tokens": int(sum(len(p.ids) for p in prompts)),
                    "generated_tokens": len(steps),
                    "zero_velocity_steps": stats.n_zero_velocity,
                    "valid_steps": stats.n_valid,
                },
                "timing": {
                    "recording_seconds_this_session": round(record_seconds, 3),
                    "total_seconds_this_session": round(time.perf_counter() - started, 3),
                    "threads": torch.get_num_threads(),
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }

        writer.finalize(summarise)
    run = load_run(out)
    return MeasureResult(
        path=out,
        statistics=computed[0],
        summary=run.summary,
        steps=run.steps,
        trajectories=run.trajectories,
        files=writer.written,
    )


class _MeasureModule(types.ModuleType):
    """This module, callable as :func:`measure`.

    ``ppmech.measure`` names both this submodule and the public function :func:`measure`;
    whichever Python binds to the package attribute (the submodule once it has been
    imported), ``ppmech.measure(config, out)`` runs a measurement.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> MeasureResult:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _MeasureModule
