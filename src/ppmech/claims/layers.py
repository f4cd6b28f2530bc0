"""Per-layer states of recorded trajectories, read through the logit lens.

For the tokens a run recorded (prompt + generated), one teacher-forced pass
captures ``resid_post.{i}`` at every decoder block. Each layer's residual is
passed through the model's final norm and the readout, which gives, per layer
``l`` and step ``t``, the normed state ``h^l_t`` and ``ln p^l_{x_t}`` of the
realised token. The last layer reproduces the recorded ``h_t`` (checked by
``tests/integration/test_verify.py``).

This is the only part of the analyses that runs the model; the statistics over
its output are :func:`ppmech.claims.analyses.layer_energy_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ppmech.engine.decoder import left_pad
from ppmech.engine.hooks import capture, resid_post
from ppmech.mechanics import speed_squared
from ppmech.models.architectures import decoder_layers, final_norm, readout
from ppmech.models.identity import LoadedModel


@dataclass
class LayerRecord:
    """Per-layer logit-lens quantities for ``N`` trajectories of ``T`` steps.

    Attributes:
        logp: ``[L, N, T]`` float32, ``ln p_{x_t}`` read out at each layer.
        speed_sq: ``[L, N, T]`` float64, ``‖h^l_t − h^l_{t−1}‖²`` (NaN at t=0).
        last_layer_state: ``[N, T, d]`` float32, the final layer's normed states.
    """

    logp: np.ndarray
    speed_sq: np.ndarray
    last_layer_state: np.ndarray


@torch.no_grad()
def record_layers(
    lm: LoadedModel,
    prompt_ids: list[list[int]],
    generated_ids: list[list[int]],
    batch_size: int = 4,
) -> LayerRecord:
    """Teacher-force recorded tokens and read every layer through the final norm and readout.

    Args:
        prompt_ids: per trajectory, the prompt's token ids (as recorded).
        generated_ids: per trajectory, the ``T`` recorded tokens ``x_0 … x_{T-1}``
            (all trajectories must have the same ``T``).
        batch_size: trajectories per forward pass.
    """
    model = lm.model
    read = readout(model)
    norm = final_norm(model)
    n_layers = len(decoder_layers(model))
    names = [resid_post(i) for i in range(n_layers)]
    steps = len(generated_ids[0])
    n = len(prompt_ids)
    logp = np.full((n_layers, n, steps), np.nan, dtype=np.float32)
    speed = np.full((n_layers, n, steps), np.nan, dtype=np.float64)
    last: np.ndarray | None = None
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    for lo in range(0, n, batch_size):
        rows = range(lo, min(n, lo + batch_size))
        # h_t predicts x_t from the position of x_{t-1} (the prompt's last token at t = 0).
        seqs = [list(prompt_ids[i]) + list(generated_ids[i][:-1]) for i in rows]
        ids, mask, pos = (t.to(lm.device) for t in left_pad(seqs, int(pad or 0)))
        with capture(model, names) as store:
            model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        width = ids.shape[1]
        targets = torch.tensor([generated_ids[i] for i in rows], dtype=torch.long)
        for layer, name in enumerate(names):
            states = store[name][0][:, width - steps : width]
            h = norm(states).float().cpu()
            lp = read.log_probs(h).gather(-1, targets[:, :, None])[..., 0]
            logp[layer, lo : lo + len(rows)] = lp.numpy()
            speed[layer, lo : lo + len(rows)] = speed_squared(h).numpy()
            if layer == n_layers - 1:
                if last is None:
                    last = np.full((n, steps, h.shape[-1]), np.nan, dtype=np.float32)
                last[lo : lo + len(rows)] = h.numpy()
    assert last is not None
    return LayerRecord(logp=logp, speed_sq=speed, last_layer_state=last)
