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

from ppmech.errors import PPMechError
from ppmech.hooks import FINAL_NORM, capture, hook_module, resid_post
from ppmech.mechanics import entropy_from_logprobs, speed_squared
from ppmech.models.architectures import decoder_layers
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import forward_step
from ppmech.recording import Decoding, Recorder, left_pad
from ppmech.steering.algorithm import LogProbFn, SteeringConfig, steer, steer_states

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


class _LayerPatch:
    """Forward hook on decoder block ``L``: captures its output at the newest position,
    or replaces it with a given residual (with gradient flowing to it)."""

    def __init__(self) -> None:
        self.replace: torch.Tensor | None = None
        self.captured: torch.Tensor | None = None

    def __call__(self, _m: torch.nn.Module, _i: Any, output: Any) -> Any:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        self.captured = hidden[:, -1, :].detach()
        if self.replace is None:
            return None
        new = torch.cat([hidden[:, :-1, :], self.replace[:, None, :].to(hidden.dtype)], dim=1)
        if isinstance(output, torch.Tensor):
            return new
        return (new, *output[1:])


def _rollback(cache: Any) -> None:
    """Remove the newest position from a KV cache and drop any autograd history."""
    cache.crop(-1)
    for layer in getattr(cache, "layers", []):
        for attr in ("keys", "values"):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor):
                setattr(layer, attr, value.detach())


def _layer_log_prob_fn(
    model: Any,
    patch: _LayerPatch,
    store: dict[str, list[torch.Tensor]],
    step_input: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> LogProbFn:
    """``r -> log p`` through the blocks above ``L``, the final norm and the unembedding.

    Each call runs one cached forward of the newest token with block ``L``'s output
    replaced by ``r`` ``[B, d]``, then rolls the cache back, so trials leave no trace.
    """

    def fn(r: torch.Tensor) -> torch.Tensor:
        patch.replace = r
        try:
            out, c = forward_step(model, step_input, mask, positions, cache)
        finally:
            patch.replace = None
        store[FINAL_NORM].clear()
        _rollback(c)
        return torch.log_softmax(out[:, -1, :].float(), -1)

    return fn


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


def _choose(lp: torch.Tensor, decoding: Decoding, generators: list[torch.Generator] | None) -> torch.Tensor:
    if decoding.strategy != "sample" or generators is None:
        return lp.argmax(-1)
    probs = torch.softmax(lp / decoding.temperature, -1)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


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
        decoding: ``greedy`` (default) or ``sample`` (temperature only), applied to
            the natural and to the steered distribution alike.
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

    steered = _steered_trace(lm, prompts, sched, new_tokens, config, layer, decoding, seeds, recorder.pad_id)
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
    pad_id: int,
) -> Trace:
    from ppmech.models.architectures import readout as get_readout

    model = lm.model
    device = lm.device
    read = get_readout(model)
    batch = len(prompts)
    trace = _empty_trace(batch, new_tokens)
    generators = None
    if decoding.strategy == "sample":
        seeds = seeds if seeds is not None else list(range(batch))
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    ids, mask, positions = (t.to(device) for t in left_pad(prompts, pad_id))
    states = torch.empty((batch, new_tokens, read.hidden_size), dtype=torch.float32)
    cache = None
    # Prefill all but the last prompt token, so every step feeds exactly one token
    # and a trial evaluation can be rolled back by cropping one cache position.
    if ids.shape[1] > 1:
        with torch.no_grad():
            _, cache = forward_step(model, ids[:, :-1], mask[:, :-1], positions[:, :-1], None)
    step_input, step_pos = ids[:, -1:], positions[:, -1:]
    patch = _LayerPatch()
    handle = decoder_layers(model)[layer].register_forward_hook(patch) if layer is not None else None
    try:
        with capture(model, [FINAL_NORM]) as store:
            for t in range(new_tokens):
                targets = sched[:, t].to(device)
                patch.replace = None
                with torch.no_grad():
                    logits, new_cache = forward_step(model, step_input, mask, step_pos, cache)
                h_nat = store[FINAL_NORM][-1][:, -1, :].float()
                store[FINAL_NORM].clear()
                steer_now = bool((targets >= 0).any())
                if not steer_now:
                    cache = new_cache
                    h_t = h_nat
                    lp = torch.log_softmax(logits[:, -1, :].float(), -1)
                elif layer is None:
                    cache = new_cache
                    res = steer(read, h_nat, targets, config)
                    h_t = res.hidden
                    lp = read.log_probs(h_t)
                else:
                    _rollback(new_cache)
                    cache = new_cache
                    r_nat = patch.captured
                    assert r_nat is not None

                    fn = _layer_log_prob_fn(model, patch, store, step_input, mask, step_pos, cache)
                    res = steer_states(r_nat.float(), targets, fn, config, method="autograd")
                    patch.replace = res.hidden
                    with torch.no_grad():
                        logits, cache = forward_step(model, step_input, mask, step_pos, cache)
                    patch.replace = None
                    h_t = store[FINAL_NORM][-1][:, -1, :].float()
                    store[FINAL_NORM].clear()
                    lp = torch.log_softmax(logits[:, -1, :].float(), -1)
                if steer_now:
                    on = (targets >= 0).cpu()
                    nan = torch.full((batch,), float("nan"), dtype=torch.float64)
                    trace.target_ids[:, t] = torch.where(on, targets.cpu(), -1)
                    trace.steer_steps[:, t] = torch.where(on, res.steps.cpu(), 0)
                    trace.delta_norm[:, t] = torch.where(on, res.delta_norm.cpu(), nan)
                    trace.p_target_before[:, t] = torch.where(on, res.p_before.cpu(), nan)
                    trace.p_target_after[:, t] = torch.where(on, res.p_after.cpu(), nan)
                x = _choose(lp, decoding, generators)
                trace.token_ids[:, t] = x.cpu()
                trace.logp[:, t] = lp.gather(-1, x[:, None])[:, 0].double().cpu()
                trace.entropy[:, t] = entropy_from_logprobs(lp).double().cpu()
                states[:, t] = h_t.cpu()
                step_input = x[:, None]
                step_pos = step_pos + 1
                mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
    finally:
        if handle is not None:
            handle.remove()
    trace.speed_sq[:] = speed_squared(states)
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
