"""The measurement protocol: prompts -> recorder -> run directory -> statistics.

:class:`MeasureConfig` is the one configuration behind both ``ppmech measure``
and :func:`measure`. Its defaults are the paper's protocol (§D.3.1) on the
embedded SmolLM2-135M: 100 Wikipedia prompts of 50 tokens, 100 greedy tokens.
"""

from __future__ import annotations

import json
import sys
import time
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ppmech.artifacts import Output, OutputLock, describe_file
from ppmech.corpus import load_documents, select_prompts
from ppmech.engine.batching import BatchSizer, chunk_size, parse_batch_size
from ppmech.engine.compiled import check_compile_mode
from ppmech.engine.recorder import BatchRecord, Recorder
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError, check_seed
from ppmech.models.device import device_record
from ppmech.models.loading import load_configured
from ppmech.nulls import conservation_summary
from ppmech.progress import Progress, showing
from ppmech.provenance import versions
from ppmech.run_settings import RunSettings
from ppmech.runs import CONFIG_FILE, RunWriter, batch_tables, load_run, write_config_toml, write_json
from ppmech.settings import Role, check_not_blank, keys, values
from ppmech.statistics import EnergyStatistics, Estimate, statistics_from_steps


@dataclass(frozen=True)
class MeasureConfig(RunSettings):
    """Everything that determines a measurement run: :class:`~ppmech.run_settings.RunSettings`
    (each field and its role, declared once there) with the checks that need the engine.

    ``device``, ``compile`` and ``batch_size`` choose how a run is computed, not
    what it records (:data:`EXECUTION_KEYS`): they move recorded numbers only by
    float round-off (batched equals one-at-a-time within 1e-3; compiled equals
    eager within 1e-3), and runs that differ only in them are interchangeable.
    ``n_boot`` changes only the statistics computed from the stored steps
    (:data:`ANALYSIS_KEYS`): :func:`measure_or_load` re-analyses instead of re-recording.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
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
        check_not_blank(self, "corpus", "text_field")
        Decoding.of(self)  # validates the sampling parameters (and refuses them off `sample`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Settings that choose how a run is computed, not what it records (derived from the roles).
EXECUTION_KEYS = keys(MeasureConfig, Role.EXECUTION)
#: Settings that change only the statistics computed from the stored steps.
ANALYSIS_KEYS = keys(MeasureConfig, Role.ANALYSIS)
#: Settings that change what a run records: runs that differ in one are different measurements.
PROTOCOL_KEYS = keys(MeasureConfig, Role.PROTOCOL)


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
    with showing(progress):  # a status line while the model loads or converts, on a terminal
        lm = load_configured(config)
    decoding = Decoding.of(config)
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
        # The recorder counts tokens from inside its decoding loop: the bar moves within a batch.
        bar = Progress(
            len(prompts) * config.new_tokens, f"recording {config.model} ({config.weights})", enabled=progress
        )
        recorder.on_tokens = bar.update

        def record(part: list[Any]) -> BatchRecord:
            mark = bar.done
            try:
                return recorder.record(
                    [p.ids for p in part],
                    config.new_tokens,
                    seeds=[config.seed * 1_000_003 + p.index for p in part],
                    targets=[p.continuation_ids for p in part] if teacher else None,
                )
            except BaseException:
                bar.rewind(mark)  # an out-of-memory back-off runs these rows again
                raise

        record_seconds = 0.0
        with bar:
            for index, batch in enumerate(batches):
                if index in done:
                    bar.skip(len(batch) * config.new_tokens)
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
                # R with its shuffle band, shuffle-null CV, corr(K, V), unit-free measures (issue 21).
                "conservation": conservation_summary(steps, seed=config.seed),
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


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: a tuple and the JSON list it was saved as are the same setting."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def statistics_of(summary: dict[str, Any]) -> EnergyStatistics:
    """The :class:`EnergyStatistics` a run's ``summary.json`` stores (``null`` read back as NaN)."""
    stored = summary["statistics"]
    values: dict[str, Any] = {}
    for f in fields(EnergyStatistics):
        value = stored.get(f.name)
        if f.name.endswith("_ci"):
            values[f.name] = Estimate.from_dict(value) if isinstance(value, dict) else None
        else:
            values[f.name] = float("nan") if value is None else value
    return EnergyStatistics(**values)


def _result(run: Any, statistics: EnergyStatistics, files: list[str]) -> MeasureResult:
    return MeasureResult(
        path=run.path,
        statistics=statistics,
        summary=run.summary,
        steps=run.steps,
        trajectories=run.trajectories,
        files=files,
    )


def reanalyze(out: str | Path, config: MeasureConfig) -> MeasureResult:
    """Recompute the statistics of the complete run at ``out`` with ``config``'s analysis settings.

    Nothing is recorded and no model is loaded: the statistics come from the stored steps
    (``n_boot`` is an :data:`ANALYSIS_KEYS` setting). ``summary.json`` and ``config.toml`` are
    rewritten with the new statistics and settings, under the run's lock.

    Raises:
        PPMechError: ``out`` is not a complete run, or it was recorded with other protocol settings.
    """
    out = Path(out)
    with OutputLock(out):
        run = load_run(out)
        differ = [k for k in PROTOCOL_KEYS if not _same(run.config.get(k), getattr(config, k))]
        if differ:
            raise PPMechError(
                f"{out} was recorded with other settings ({', '.join(differ)}): re-analysis cannot change "
                "what was recorded",
                "measure it again (`overwrite`), or into another `out`",
            )
        stats = statistics_from_steps(
            run.steps, n_boot=config.n_boot, seed=run.config.get("seed", config.seed)
        )
        summary = dict(run.summary)
        stored = dict(run.config) | values(config, Role.ANALYSIS)
        summary["statistics"] = stats.to_dict()
        summary["config"] = stored
        files = dict(summary.get("files", {}))
        write_config_toml(out, stored)
        files[CONFIG_FILE] = describe_file(out, CONFIG_FILE)
        summary["files"] = files
        write_json(out / "summary.json", summary)
    return _result(load_run(out), stats, ["summary.json", CONFIG_FILE])


def measure_or_load(config: MeasureConfig, out: str | Path, progress: bool = True) -> MeasureResult:
    """The run of ``config`` at ``out``: loaded when it is already there, measured when not.

    The notebook-friendly way to get a run: a re-run of the cell returns at once.

    * ``out`` holds a complete run with the same protocol settings (:data:`PROTOCOL_KEYS`):
      it is returned as it is; execution settings (``device``, ``batch_size``, ...) may differ,
      since they do not change what is recorded. If only analysis settings (``n_boot``) differ,
      the statistics are recomputed from the stored steps (:func:`reanalyze`), never re-recorded.
    * ``out`` holds an interrupted run: it is continued (``resume``).
    * nothing at ``out``: :func:`measure`.

    Raises:
        PPMechError: ``out`` holds a run with other protocol settings (naming them), or
            anything :func:`measure` refuses.
    """
    out = Path(out)
    if not str(out).strip():
        raise PPMechError("`out` is empty", "give `out` a run directory")
    if not (out / "summary.json").is_file():
        return measure(config, out, resume=out.is_dir(), progress=progress)
    run = load_run(out)
    differ = [k for k in PROTOCOL_KEYS if not _same(run.config.get(k), getattr(config, k))]
    if differ:
        raise PPMechError(
            f"{out} already holds a run with other settings ({', '.join(differ)})",
            "pass another `out`, or call measure(config, out, overwrite=True) to replace it",
        )
    if any(not _same(run.config.get(k), getattr(config, k)) for k in ANALYSIS_KEYS):
        return reanalyze(out, config)
    return _result(run, statistics_of(run.summary), [])


class _MeasureModule(types.ModuleType):
    """This module, callable as :func:`measure`.

    ``ppmech.measure`` names both this submodule and the public function :func:`measure`;
    whichever Python binds to the package attribute (the submodule once it has been
    imported), ``ppmech.measure(config, out)`` runs a measurement.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> MeasureResult:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _MeasureModule
