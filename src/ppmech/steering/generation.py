"""Steered and natural generation side by side, with per-step traces.

At the final norm (the paper's case) ``h_t`` is steered before the readout; at an
intermediate layer ``L`` (beyond the paper) the residual after block ``L`` is steered
and written into the KV cache, so that it shapes later tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ppmech.engine.decoder import Engine, Session
from ppmech.engine.hooks import FINAL_NORM, hook_module, resid_post
from ppmech.engine.recorder import Recorder
from ppmech.engine.sampling import Decoding, TokenChooser
from ppmech.errors import PPMechError
from ppmech.mechanics import speed_squared, step_terms
from ppmech.models.identity import LoadedModel
from ppmech.steering.algorithm import SteeringConfig, steer, steer_states

__all__ = ["GenerationPair", "Trace", "steered_generation", "trace_frame"]


@dataclass
class Trace:
    """One generated trajectory per row, plus steering columns for a steered trace.

    Shapes ``[B, T]``. ``logp`` is ln p of the emitted token under the distribution
    it was drawn from (the steered one for a steered trace); ``speed_sq`` is from the
    post-final-norm states actually read out. Steering columns are NaN/-1 where a
    step was not steered (and always in the natural trace).
    """

    token_ids: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor
    speed_sq: torch.Tensor
    target_ids: torch.Tensor
    steer_steps: torch.Tensor
    delta_norm: torch.Tensor
    p_target_before: torch.Tensor
    p_target_after: torch.Tensor


@dataclass
class GenerationPair:
    """Natural and steered generations from the same prompts."""

    natural: Trace
    steered: Trace
    layer: int | None


def _empty_trace(batch: int, steps: int) -> Trace:
    def nan() -> torch.Tensor:
        return torch.full((batch, steps), float("nan"), dtype=torch.float64)

    return Trace(
        token_ids=torch.full((batch, steps), -1, dtype=torch.long),
        logp=nan(),
        entropy=nan(),
        speed_sq=nan(),
        target_ids=torch.full((batch, steps), -1, dtype=torch.long),
        steer_steps=torch.zeros((batch, steps), dtype=torch.long),
        delta_norm=nan(),
        p_target_before=nan(),
        p_target_after=nan(),
    )


def steered_generation(
    lm: LoadedModel,
    prompts: list[list[int]],
    schedule: list[list[int]],
    new_tokens: int,
    config: SteeringConfig | None = None,
    layer: int | None = None,
    decoding: Decoding | None = None,
    seeds: list[int] | None = None,
) -> GenerationPair:
    """Generate from each prompt twice, naturally and with Jacobian steering.

    Args:
        lm: the model.
        prompts: token ids per prompt.
        schedule: per prompt, the target id for each step (``schedule[i][t]``);
            a negative id or a step past the list's end is not steered.
        new_tokens: steps to generate.
        config: Algorithm 1's parameters.
        layer: ``None`` steers ``h_t`` after the final norm (the paper); an index
            ``L`` steers the residual after block ``L`` (beyond the paper), so the
            change enters the KV cache.
        decoding: ``greedy`` (default) or ``sample`` (temperature, top-k, top-p),
            applied to the natural and to the steered distribution alike (one chooser,
            :class:`~ppmech.engine.sampling.TokenChooser`).
        seeds: per-row sampling seeds (``sample`` only).
    """
    config = config or SteeringConfig()
    decoding = decoding or Decoding()
    if decoding.strategy == "teacher":
        raise PPMechError("steered generation cannot use teacher decoding", "use greedy or sample")
    if len(schedule) != len(prompts):
        raise PPMechError("one target schedule per prompt is needed", "pass as many schedules as prompts")
    model = lm.model
    if layer is not None:
        hook_module(model, resid_post(layer))  # one-line error for an index out of range
    recorder = Recorder(lm, decoding)
    recorder.check_length(max(len(p) for p in prompts), new_tokens)
    batch = len(prompts)
    sched = torch.full((batch, new_tokens), -1, dtype=torch.long)
    for row, targets in enumerate(schedule):
        n = min(len(targets), new_tokens)
        if n:
            sched[row, :n] = torch.tensor(targets[:n], dtype=torch.long)

    natural = _empty_trace(batch, new_tokens)
    rec = recorder.record(prompts, new_tokens, seeds=seeds)
    natural.token_ids[:] = rec.token_ids
    natural.logp[:] = rec.logp.double()
    natural.entropy[:] = rec.entropy.double()
    natural.speed_sq[:] = rec.speed_sq

    steered = _steered_trace(lm, prompts, sched, new_tokens, config, layer, decoding, seeds)
    return GenerationPair(natural=natural, steered=steered, layer=layer)


def _steered_trace(
    lm: LoadedModel,
    prompts: list[list[int]],
    sched: torch.Tensor,
    new_tokens: int,
    config: SteeringConfig,
    layer: int | None,
    decoding: Decoding,
    seeds: list[int] | None,
) -> Trace:
    """The steered trace, decoded by the engine with steering as its per-step intervention.

    Every step feeds exactly one token (``hold_last``), so a trial pass at layer ``L``
    can be rolled back. At the final norm the steered ``ĥ_t`` is read out in float32 and
    the next token is chosen from those logits; at layer ``L`` the steered residual is
    patched into a committed forward pass, whose logits and ``h_t`` are used.
    """
    from ppmech.models.architectures import readout as get_readout

    read = get_readout(lm.model)
    batch = len(prompts)
    trace = _empty_trace(batch, new_tokens)
    point = resid_post(layer) if layer is not None else None
    engine = Engine(
        lm,
        capture=[FINAL_NORM] if point is None else [FINAL_NORM, point],
        patch_points=[] if point is None else [point],
    )
    device = engine.device
    nan = torch.full((batch,), float("nan"), dtype=torch.float64)

    def intervene(
        t: int, session: Session, logits: torch.Tensor, states: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        on = sched[:, t] >= 0
        if not bool(on.any()):  # the schedule lives on the host: no device read
            return logits, states
        targets = sched[:, t].to(device)
        if point is None:
            res = steer(read, states[FINAL_NORM].float(), targets, config)
            h_t = res.hidden
            logits = read.logits(h_t)
        else:
            session.rollback()

            def log_probs(r: torch.Tensor) -> torch.Tensor:
                out = session.run_pending(patch={point: lambda _r: r})
                session.rollback()
                return torch.log_softmax(out.logits[:, -1, :].float(), -1)

            res = steer_states(states[point].float(), targets, log_probs, config, method="autograd")
            with torch.no_grad():
                out = session.run_pending(patch={point: lambda _r: res.hidden})
            h_t = out.states[FINAL_NORM][:, -1, :]
            logits = out.logits[:, -1, :].float()
        trace.target_ids[:, t] = torch.where(on, sched[:, t], -1)
        trace.steer_steps[:, t] = torch.where(on, res.steps.cpu(), 0)
        trace.delta_norm[:, t] = torch.where(on, res.delta_norm.cpu(), nan)
        trace.p_target_before[:, t] = torch.where(on, res.p_before.cpu(), nan)
        trace.p_target_after[:, t] = torch.where(on, res.p_after.cpu(), nan)
        return logits, {**states, FINAL_NORM: h_t}

    states = torch.empty((batch, new_tokens, read.hidden_size), dtype=torch.float32, device=device)
    token_ids = torch.empty((batch, new_tokens), dtype=torch.long, device=device)
    logp = torch.empty((batch, new_tokens), dtype=torch.float64, device=device)
    entropy = torch.empty((batch, new_tokens), dtype=torch.float64, device=device)
    with engine.start(prompts, new_tokens, hold_last=True) as session:
        chooser = TokenChooser(decoding, batch, device, seeds)
        for step in engine.steps(session, new_tokens, chooser, intervene=intervene):
            terms = step_terms(step.logits, step.tokens)
            token_ids[:, step.t] = terms.tokens
            logp[:, step.t] = terms.logp.double()
            entropy[:, step.t] = terms.entropy.double()
            states[:, step.t] = step.states[FINAL_NORM].float()
    trace.token_ids[:] = token_ids.cpu()
    trace.logp[:] = logp.cpu()
    trace.entropy[:] = entropy.cpu()
    trace.speed_sq[:] = speed_squared(states).cpu()
    return trace


def trace_frame(
    trace: Trace, tokenizer: Any, name: str, trajectory_ids: list[int] | None = None
) -> pd.DataFrame:
    """A :class:`Trace` as rows of ``steps.parquet`` plus ``trace`` and the steering columns."""
    from ppmech.mechanics import energy_terms

    batch, steps = trace.token_ids.shape
    ids = trajectory_ids or list(range(batch))
    frames = []
    for row in range(batch):
        tok = trace.token_ids[row].tolist()
        terms = energy_terms(trace.speed_sq[row].numpy(), trace.logp[row].numpy())
        target = trace.target_ids[row].numpy()
        frames.append(
            pd.DataFrame(
                {
                    "trajectory": np.full(steps, ids[row], dtype=np.int32),
                    "step": np.arange(steps, dtype=np.int32),
                    "token_id": np.asarray(tok, dtype=np.int64),
                    "token": tokenizer.batch_decode([[i] for i in tok]),
                    "logp": trace.logp[row].numpy(),
                    "entropy": trace.entropy[row].numpy(),
                    "speed_sq": trace.speed_sq[row].numpy(),
                    "K": terms["K"],
                    "V": terms["V"],
                    "H": terms["H"],
                    "trace": name,
                    "target_id": target,
                    "target_token": [tokenizer.decode([int(i)]) if i >= 0 else None for i in target],
                    "steer_steps": trace.steer_steps[row].numpy(),
                    "delta_norm": trace.delta_norm[row].numpy(),
                    "p_target_before": trace.p_target_before[row].numpy(),
                    "p_target_after": trace.p_target_after[row].numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
