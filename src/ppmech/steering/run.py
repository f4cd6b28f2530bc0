"""The ``ppmech steer`` run: its config, the driver that generates naturally and steered from one
prompt, the energy comparison of the two traces, and the files written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppmech.engine.hooks import hook_module, resid_post
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError, check_seed
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_configured
from ppmech.steering.algorithm import SteeringConfig
from ppmech.steering.generation import steered_generation, trace_frame

__all__ = ["SteerConfig", "SteerRunResult", "energy_comparison", "run_steer", "target_schedule"]


@dataclass(frozen=True)
class SteerConfig:
    """Everything that determines a ``ppmech steer`` run (CLI and API alike).

    Attributes:
        model, weights, dtype, seed, trust_remote_code: the model (as ``measure``).
        prompt: the prompt text (the tokenizer's default special prefix is added).
        target_text: steer, step by step, toward this text's tokens (teacher-style:
            step ``t`` targets its ``t``-th token). A space is put in front when the
            prompt ends in a letter or digit and the text starts with one.
        target_ids: a token schedule instead: the target id of each step, ``-1``
            for a step left alone.
        new_tokens: steps generated (default: the schedule's length + 5).
        eta, max_steps: Algorithm 1's η and K.
        layer: ``None`` steers ``h_t`` after the final norm (the paper); ``L``
            steers the residual after decoder block ``L`` (beyond the paper).
        decoding: ``greedy`` or ``sample``; temperature, top_k and top_p for ``sample``
            (the same sampler draws the natural and the steered trace).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    """

    prompt: str
    target_text: str | None = None
    target_ids: tuple[int, ...] | None = None
    model: str = "smollm2-135m"
    weights: str = "pretrained"
    dtype: str = "float32"
    seed: int = 0
    trust_remote_code: bool = False
    new_tokens: int | None = None
    eta: float = 0.5
    max_steps: int = 20
    layer: int | None = None
    decoding: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        SteeringConfig(eta=self.eta, max_steps=self.max_steps)
        self.decoding_config()  # validates the sampling parameters
        if (self.target_text is None) == (self.target_ids is None):
            raise PPMechError("give exactly one of `target_text` and `target_ids`", "pass one of them")
        if not self.prompt.strip():
            raise PPMechError("the prompt is empty", "pass `prompt` with some text")
        if self.decoding not in ("greedy", "sample"):
            raise PPMechError(f"`decoding` {self.decoding!r} cannot be steered", "use greedy or sample")
        if self.new_tokens is not None and self.new_tokens < 1:
            raise PPMechError(f"`new_tokens` must be >= 1 (got {self.new_tokens})", "use e.g. 20")
        check_seed(self.seed)
        if self.decoding == "greedy" and self.temperature != 1.0:
            # Refused rather than ignored: the summary would record a temperature that never acted.
            raise PPMechError(
                "`temperature` only applies to `decoding` sample, not greedy",
                "drop `temperature`, or use `decoding` sample",
            )

    def decoding_config(self) -> Decoding:
        return Decoding(
            strategy=self.decoding,  # type: ignore[arg-type]
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_ids"] = list(self.target_ids) if self.target_ids is not None else None
        return d


@dataclass
class SteerRunResult:
    """What :func:`run_steer` produced.

    Attributes:
        path: the output directory, or ``None``.
        steps: natural and steered steps (``steps.parquet`` schema + ``trace`` and
            steering columns).
        natural_text, steered_text: the two generations.
        comparison: :func:`energy_comparison` of the two traces.
        summary: what ``summary.json`` holds.
        files: the files written under ``path``.
    """

    path: Path | None
    steps: pd.DataFrame
    natural_text: str
    steered_text: str
    comparison: pd.DataFrame
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)


def target_schedule(tokenizer: Any, prompt: str, config: SteerConfig) -> list[int]:
    """The per-step target ids of ``config`` (target text tokenised, or the given schedule)."""
    if config.target_ids is not None:
        vocab = len(tokenizer)
        bad = [i for i in config.target_ids if i >= vocab or i < -1]
        if bad:
            raise PPMechError(f"target ids {bad} are outside the vocabulary 0..{vocab - 1}", "use -1 to skip")
        if not any(i >= 0 for i in config.target_ids):
            raise PPMechError("the token schedule steers no step", "give at least one id >= 0")
        return list(config.target_ids)
    text = config.target_text or ""
    if prompt and text and (prompt[-1].isalnum() and text[0].isalnum()):
        text = " " + text
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else []
    if not ids:
        raise PPMechError(
            f"the target text {config.target_text!r} tokenises to no tokens",
            "pass a `target_text` with visible characters",
        )
    return ids


def energy_comparison(steps: pd.DataFrame) -> pd.DataFrame:
    """Per trace: mean K, V, H over steps with a velocity, CV of ``E = exp(H)``, mean ``|H_t - H_{t-1}|``,
    and the steering totals (steered steps, steps that reached η, mean ‖δh‖, mean gradient steps)."""
    from ppmech.statistics import cv

    rows = []
    for name, part in steps.groupby("trace", sort=False):
        ok = part[np.isfinite(part["H"].astype("float64"))]
        dh = [np.diff(g["H"].to_numpy(dtype=np.float64)) for _, g in ok.groupby("trajectory")]
        dh_all = np.concatenate(dh) if dh else np.array([])
        steered = part[part["target_id"] >= 0]
        e = np.exp(ok["H"].to_numpy(dtype=np.float64))
        rows.append(
            {
                "trace": name,
                "tokens": len(part),
                "mean K": float(ok["K"].mean()),
                "mean V": float(ok["V"].mean()),
                "mean H": float(ok["H"].mean()),
                "CV(E)": cv(e) if len(e) > 1 else float("nan"),
                "mean |dH|": float(np.abs(dh_all).mean()) if len(dh_all) else float("nan"),
                "steered steps": len(steered),
                "reached η": int(steered["reached"].sum()),
                "mean ‖δh‖": float(steered["delta_norm"].mean()) if len(steered) else float("nan"),
                "mean grad steps": float(steered["steer_steps"].mean()) if len(steered) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def run_steer(
    config: SteerConfig, out: str | Path | None = None, overwrite: bool = False, lm: LoadedModel | None = None
) -> SteerRunResult:
    """Load the model, generate naturally and with steering, and write ``out``.

    ``out`` receives ``steps.parquet`` (both traces, :func:`trace_frame`) and then
    ``summary.json`` (config, model, versions, texts, comparison, the file's rows and
    SHA-256), each written atomically; the output is locked, staged and swapped in whole
    (:class:`ppmech.artifacts.Output`), and ``overwrite`` replaces only a steer output.
    """
    from contextlib import nullcontext

    from ppmech.artifacts import Output

    out_path = Path(out) if out is not None else None
    # Locked and staged for the whole run: see ppmech.artifacts.Output.
    output = Output(out_path, "steer", overwrite=overwrite) if out_path is not None else None
    with output if output is not None else nullcontext():
        return _run_steer(config, output, lm)


def _run_steer(config: SteerConfig, output: Any, lm: LoadedModel | None) -> SteerRunResult:
    """:func:`run_steer` once its output (an open :class:`~ppmech.artifacts.Output`, or ``None``) is ready."""
    from ppmech.artifacts import describe_file, write_json, write_parquet
    from ppmech.corpus import special_prefix
    from ppmech.engine.device import device_record
    from ppmech.provenance import versions

    if lm is None:
        lm = load_configured(config)
    if config.layer is not None:
        hook_module(lm.model, resid_post(config.layer))
    tok = lm.tokenizer
    prompt_ids = special_prefix(tok) + list(tok(config.prompt, add_special_tokens=False)["input_ids"])
    schedule = target_schedule(tok, config.prompt, config)
    new_tokens = config.new_tokens if config.new_tokens is not None else len(schedule) + 5
    decoding = config.decoding_config()
    pair = steered_generation(
        lm,
        [prompt_ids],
        [schedule],
        new_tokens,
        SteeringConfig(eta=config.eta, max_steps=config.max_steps),
        layer=config.layer,
        decoding=decoding,
        seeds=[config.seed],
    )
    nat = trace_frame(pair.natural, tok, "natural")
    st = trace_frame(pair.steered, tok, "steered")
    steps = pd.concat([nat, st], ignore_index=True)
    steps["reached"] = (steps["target_id"] >= 0) & (steps["p_target_after"] >= config.eta)
    comparison = energy_comparison(steps)
    natural_text = tok.decode(pair.natural.token_ids[0].tolist())
    steered_text = tok.decode(pair.steered.token_ids[0].tolist())
    summary = {
        "kind": "steer",
        "config": config.to_dict(),
        "prompt_ids": prompt_ids,
        "target_schedule": schedule,
        "natural_text": natural_text,
        "steered_text": steered_text,
        "comparison": json.loads(comparison.to_json(orient="records")),
        "model": lm.identity.to_dict(),
        "versions": versions(),
        "execution": device_record(lm.device),
    }
    files: list[str] = []
    if output is not None:
        write_parquet(output.path / "steps.parquet", steps)
        summary["files"] = {"steps.parquet": describe_file(output.path, "steps.parquet", rows=len(steps))}
        write_json(output.path / "summary.json", summary)
        files = output.commit()
    return SteerRunResult(
        path=output.target if output is not None else None,
        files=files,
        steps=steps,
        natural_text=natural_text,
        steered_text=steered_text,
        comparison=comparison,
        summary=summary,
    )
