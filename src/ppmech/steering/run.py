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
from ppmech.settings import ModelSpec, Role, setting
from ppmech.steering.algorithm import SteeringConfig
from ppmech.steering.generation import steered_generation, trace_frame

__all__ = ["SteerConfig", "SteerRunResult", "energy_comparison", "run_steer", "target_schedule"]


@dataclass(frozen=True)
class SteerConfig(ModelSpec):
    """Everything that determines a ``ppmech steer`` run (CLI and API alike); each field declares its role.

    The model fields are :class:`~ppmech.settings.ModelSpec`'s; the rest are documented on
    their :func:`~ppmech.settings.setting`. Notes beyond the help text:

    * ``target_text`` gets a space in front when the prompt ends in a letter or digit and
      the text starts with one; step ``t`` targets its ``t``-th token.
    * ``new_tokens`` must cover the whole target schedule (refused when shorter).
    * ``layer``: ``None`` steers ``h_t`` after the final norm (the paper); ``L`` steers the
      residual after decoder block ``L`` (beyond the paper).
    * ``decoding``: ``greedy`` or ``sample``; the same sampler draws the natural and the
      steered trace, and sampling settings are refused under greedy (:meth:`Decoding.of`).
    """

    prompt: str = setting("", role=Role.PROTOCOL, help="prompt text (required: there is no default)")
    target_text: str | None = setting(
        None,
        role=Role.PROTOCOL,
        help="steer toward this text, token by token (a space is prepended when both sides are word "
        "characters); give it or the target ids (default: none)",
    )
    target_ids: tuple[int, ...] | None = setting(
        None,
        role=Role.PROTOCOL,
        help="token schedule: comma-separated target id per step, '-' or -1 leaves a step alone",
    )
    seed: int = setting(0, role=Role.PROTOCOL, help="seed (0 to 2**32-1) of random init and sampling")
    new_tokens: int | None = setting(
        None,
        role=Role.PROTOCOL,
        help="steps to generate, at least the target's length (default: the target's length + 5)",
    )
    eta: float = setting(0.5, role=Role.PROTOCOL, help="target probability threshold η in (0, 1)")
    max_steps: int = setting(20, role=Role.PROTOCOL, help="K, gradient steps per token")
    layer: int | None = setting(
        None,
        role=Role.PROTOCOL,
        help="'final' (default, the paper: h_t after the final norm) or a block index L: steer the "
        "residual after block L, which enters the KV cache (beyond the paper)",
    )
    decoding: str = setting(
        "greedy",
        role=Role.PROTOCOL,
        help="greedy: the most probable token; sample: drawn with --temperature",
        choices=("greedy", "sample"),
    )
    temperature: float = setting(1.0, role=Role.PROTOCOL, help="sampling temperature (sample only)")
    top_k: int | None = setting(
        None, role=Role.PROTOCOL, help="sample: keep the k most probable (default: all)"
    )
    top_p: float | None = setting(
        None, role=Role.PROTOCOL, help="sample: nucleus mass in (0, 1] (default: 1, no cut)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_ids is not None:
            object.__setattr__(self, "target_ids", tuple(self.target_ids))
        SteeringConfig(eta=self.eta, max_steps=self.max_steps)
        if (self.target_text is None) == (self.target_ids is None):
            raise PPMechError("give exactly one of `target_text` and `target_ids`", "pass one of them")
        if not self.prompt.strip():
            raise PPMechError("`prompt` is missing or empty", "pass `prompt` with some text")
        if self.decoding not in ("greedy", "sample"):
            raise PPMechError(f"`decoding` {self.decoding!r} cannot be steered", "use greedy or sample")
        Decoding.of(self)  # validates the sampling parameters (and refuses them under greedy)
        if self.new_tokens is not None and self.new_tokens < 1:
            raise PPMechError(f"`new_tokens` must be >= 1 (got {self.new_tokens})", "use e.g. 20")
        if (
            self.target_ids is not None
            and self.new_tokens is not None
            and self.new_tokens < len(self.target_ids)
        ):
            raise PPMechError(
                f"`new_tokens` {self.new_tokens} is shorter than the "
                f"{len(self.target_ids)}-step target schedule",
                f"use `new_tokens` {len(self.target_ids)} or more, or leave it out",
            )
        check_seed(self.seed)

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

    ``out`` receives ``steps.parquet`` (both traces, :func:`trace_frame`), ``config.toml``
    (the settings, as ``ppmech steer --config`` reads them) and then
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
    from ppmech.models.device import device_record
    from ppmech.provenance import versions
    from ppmech.runs import CONFIG_FILE, write_config_toml

    if lm is None:
        lm = load_configured(config)
    if config.layer is not None:
        hook_module(lm.model, resid_post(config.layer))
    tok = lm.tokenizer
    prompt_ids = special_prefix(tok) + list(tok(config.prompt, add_special_tokens=False)["input_ids"])
    schedule = target_schedule(tok, config.prompt, config)
    new_tokens = config.new_tokens if config.new_tokens is not None else len(schedule) + 5
    if new_tokens < len(schedule):
        # Checked here too: a target text's length is known only once it is tokenised.
        raise PPMechError(
            f"`new_tokens` {new_tokens} is shorter than the target, which is {len(schedule)} tokens",
            f"use `new_tokens` {len(schedule)} or more, or leave it out (the target's length + 5)",
        )
    if len(prompt_ids) + new_tokens > lm.max_context:
        # Named here, in steer's own terms: the engine's check would name `context_tokens`.
        target = "target text" if config.target_text is not None else "target schedule"
        raise PPMechError(
            f"the prompt ({len(prompt_ids)} tokens) and {new_tokens} new tokens for the "
            f"{len(schedule)}-token {target} exceed the model's {lm.max_context} positions",
            "use a shorter `prompt` or target, or fewer `new_tokens`",
        )
    decoding = Decoding.of(config)
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
        write_config_toml(output.path, config.to_dict(), "steer")  # `ppmech steer --config` reads it back
        summary["files"] = {
            "steps.parquet": describe_file(output.path, "steps.parquet", rows=len(steps)),
            CONFIG_FILE: describe_file(output.path, CONFIG_FILE),
        }
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
