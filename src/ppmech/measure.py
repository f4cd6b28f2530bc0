"""The measurement protocol: prompts -> recorder -> run directory -> statistics.

:class:`MeasureConfig` is the one configuration behind both ``ppmech measure``
and :func:`measure`. Its defaults are the paper's protocol (§D.3.1) on the
embedded SmolLM2-135M: 100 Wikipedia prompts of 50 tokens, 100 greedy tokens.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ppmech.corpus import load_documents, select_prompts
from ppmech.errors import PPMechError
from ppmech.models.loading import load_configured
from ppmech.provenance import versions
from ppmech.recording import Decoding, Recorder
from ppmech.runs import RunWriter, batch_tables, load_run
from ppmech.statistics import EnergyStatistics, statistics_from_steps


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
        decoding: ``greedy``, ``sample`` or ``teacher`` (scores the article's own continuation).
        temperature, top_k, top_p: sampling parameters.
        stop_at_eos: end trajectories at EOS (off: fixed length, as in the paper).
        seed: seeds the prompt choice, random init and sampling.
        batch_size: trajectories per forward batch.
        save_hidden: also store ``h_t`` under ``hidden/``.
        n_boot: bootstrap replicates for the CIs.
        trust_remote_code: let transformers run model code from the checkpoint.
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
    batch_size: int = 50
    save_hidden: bool = False
    n_boot: int = 1000
    trust_remote_code: bool = False

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
        if self.batch_size < 1:
            raise PPMechError(f"`batch_size` must be at least 1 (got {self.batch_size})", "use e.g. 50")
        if self.n_boot < 0:
            raise PPMechError(
                f"`n_boot` must be 0 (no CIs) or more (got {self.n_boot})", "use e.g. 1000 replicates"
            )
        self.decoding_config()  # validates the sampling parameters

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
    out = Path(out)
    started = time.perf_counter()
    lm = load_configured(config)
    decoding = config.decoding_config()
    recorder = Recorder(lm, decoding, keep_hidden=config.save_hidden)
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
    )
    writer = RunWriter(out, config.to_dict(), overwrite=overwrite, resume=resume)
    done = writer.done_batches()
    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    bar = tqdm(
        total=len(prompts) * config.new_tokens,
        desc=f"recording {config.model} ({config.weights})",
        unit="tok",
        disable=not progress,
        file=sys.stderr,
    )
    record_seconds = 0.0
    for index, batch in enumerate(batches):
        if index in done:
            bar.update(len(batch) * config.new_tokens)
            continue
        t0 = time.perf_counter()
        record = recorder.record(
            [p.ids for p in batch],
            config.new_tokens,
            seeds=[config.seed * 1_000_003 + p.index for p in batch],
            targets=[p.continuation_ids for p in batch] if teacher else None,
        )
        record_seconds += time.perf_counter() - t0
        traj, steps = batch_tables(
            record,
            [p.index for p in batch],
            [p.source for p in batch],
            [p.ids for p in batch],
            lm.tokenizer,
        )
        hidden = record.hidden.float().numpy() if record.hidden is not None else None
        writer.write_batch(index, traj, steps, hidden)
        bar.update(len(batch) * config.new_tokens)
    bar.close()

    computed: list[EnergyStatistics] = []

    def summarise(steps: pd.DataFrame) -> dict[str, Any]:
        stats = statistics_from_steps(steps, n_boot=config.n_boot, seed=config.seed)
        computed.append(stats)
        return {
            "statistics": stats.to_dict(),
            "config": config.to_dict(),
            "decoding": decoding.to_dict(),
            "model": lm.identity.to_dict(),
            "versions": versions(),
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
