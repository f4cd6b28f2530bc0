"""Batched, KV-cached recording of hidden-state trajectories.

At every step the recorder captures ``h_t``, the output of the final norm (the
state the unembedding reads), and the model's own next-token distribution at
that position: the logits come from the model's forward (bias, scaling and
soft-capping included) and the log-softmax is taken in float32.

Prompts of different lengths are left-padded, with an attention mask and
position ids counted from each row's first real token, so a batched row equals
the same prompt run alone (``tests/integration/test_recorder.py``).

Decoding strategies:

* ``greedy`` (default, as in the paper): ``x_t = argmax p(h_t)``.
* ``sample``: temperature, top-k and top-p, seeded *per trajectory*, so the
  tokens do not depend on the batch size. ``V_t`` always uses the model's
  untempered distribution: the mechanics describe the model, not the sampler.
* ``teacher``: score given target tokens; ``x_t`` is the target, ``h_t`` the
  state that predicts it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ppmech.errors import PPMechError
from ppmech.hooks import FINAL_NORM, capture
from ppmech.mechanics import entropy_from_logprobs, speed_squared
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import forward_step

Strategy = Literal["greedy", "sample", "teacher"]


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen.

    Attributes:
        strategy: ``greedy``, ``sample`` or ``teacher``.
        temperature: sampling temperature (> 0).
        top_k: keep the k most probable tokens when sampling (``None``: all).
        top_p: nucleus mass when sampling, in (0, 1] (``None``: 1).
        stop_at_eos: end a trajectory at the model's EOS token. Off by default:
            the paper's protocol records fixed-length continuations.
    """

    strategy: Strategy = "greedy"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_at_eos: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "teacher"):
            raise PPMechError(f"unknown decoding '{self.strategy}'", "use greedy, sample or teacher")
        if not self.temperature > 0:
            raise PPMechError(f"`temperature` must be > 0 (got {self.temperature})", "use e.g. 1.0")
        if self.top_k is not None and self.top_k < 1:
            raise PPMechError(f"`top_k` must be >= 1 (got {self.top_k})", "omit it or use e.g. 50")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise PPMechError(f"`top_p` must be in (0, 1] (got {self.top_p})", "use e.g. 0.9")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchRecord:
    """What one batch recorded. ``B`` trajectories, ``T`` steps at most.

    Entries past a trajectory's length (it stopped at EOS) are padding:
    ``token_ids`` -1 and NaN elsewhere.

    Attributes:
        token_ids: ``[B, T]`` int64, the realised tokens ``x_t``.
        lengths: ``[B]`` number of real steps per trajectory.
        logp: ``[B, T]`` float32, ``ln p_{x_t}(h_t)`` under the untempered model.
        entropy: ``[B, T]`` float32, entropy of ``p(h_t)`` in nats.
        speed_sq: ``[B, T]`` float64, ``‖h_t - h_{t-1}‖²``; NaN at step 0.
        hidden: ``[B, T, d]`` the states ``h_t`` (model dtype), if kept.
    """

    token_ids: torch.Tensor
    lengths: list[int]
    logp: torch.Tensor
    entropy: torch.Tensor
    speed_sq: torch.Tensor
    hidden: torch.Tensor | None = None


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists.

    Returns:
        ``(input_ids, attention_mask, position_ids)``, each ``[B, L]`` int64;
        positions count from 0 at each row's first real token (0 on padding).
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise PPMechError("a prompt has no tokens", "give every prompt at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. ``logits``: ``[B, V]`` float32."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Recorder:
    """Record trajectories from a loaded model.

    Args:
        lm: the model.
        decoding: how tokens are chosen.
        keep_hidden: return ``h_t`` in each :class:`BatchRecord` (for ``--save-hidden``
            and analyses that need the states).
    """

    def __init__(self, lm: LoadedModel, decoding: Decoding, keep_hidden: bool = False) -> None:
        self.lm = lm
        self.decoding = decoding
        self.keep_hidden = keep_hidden
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        eos = getattr(lm.model.generation_config, "eos_token_id", None) or tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def check_length(self, prompt_len: int, new_tokens: int) -> None:
        """Refuse a context longer than the model allows."""
        total = prompt_len + new_tokens
        if total > self.lm.max_context:
            raise PPMechError(
                f"context of {prompt_len} + {new_tokens} new tokens = {total} exceeds the "
                f"model's {self.lm.max_context} positions",
                "use fewer `context_tokens` or `new_tokens`",
            )

    @torch.no_grad()
    def record(
        self,
        prompts: list[list[int]],
        new_tokens: int,
        seeds: list[int] | None = None,
        targets: list[list[int]] | None = None,
    ) -> BatchRecord:
        """Record one batch.

        Args:
            prompts: token ids of each prompt.
            new_tokens: steps to record (``T``); with ``teacher`` decoding, at most
                this many target tokens are scored.
            seeds: one sampling seed per trajectory (``sample`` only).
            targets: target token ids per prompt (``teacher`` only).
        """
        if new_tokens < 1:
            raise PPMechError(f"`new_tokens` must be >= 1 (got {new_tokens})", "use e.g. 100")
        self.check_length(max(len(p) for p in prompts), new_tokens)
        if self.decoding.strategy == "teacher":
            if targets is None or len(targets) != len(prompts):
                raise PPMechError("teacher decoding needs one target per prompt", "pass target tokens")
            return self._teacher(prompts, [t[:new_tokens] for t in targets])
        return self._generate(prompts, new_tokens, seeds)

    # ------------------------------------------------------------------ generation

    def _choose(self, logits: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        if self.decoding.strategy == "greedy" or generators is None:
            return logits.argmax(-1)
        scaled = _filter_logits(logits / self.decoding.temperature, self.decoding.top_k, self.decoding.top_p)
        probs = scaled.softmax(-1)
        return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])

    def _generate(self, prompts: list[list[int]], new_tokens: int, seeds: list[int] | None) -> BatchRecord:
        model = self.lm.model
        device = self.lm.device
        ids, mask, positions = (t.to(device) for t in left_pad(prompts, self.pad_id))
        batch = ids.shape[0]
        generators = None
        if self.decoding.strategy == "sample":
            seeds = seeds if seeds is not None else list(range(batch))
            generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

        token_ids = torch.full((batch, new_tokens), -1, dtype=torch.long)
        logp = torch.full((batch, new_tokens), float("nan"), dtype=torch.float32)
        entropy = torch.full((batch, new_tokens), float("nan"), dtype=torch.float32)
        hidden: torch.Tensor | None = None
        alive = torch.ones(batch, dtype=torch.bool)
        lengths = [new_tokens] * batch
        cache = None
        step_input, step_pos = ids, positions
        with capture(model, [FINAL_NORM]) as store:
            for t in range(new_tokens):
                out_logits, cache = forward_step(model, step_input, mask, step_pos, cache)
                h_t = store[FINAL_NORM].pop()[:, -1, :]
                store[FINAL_NORM].clear()
                if hidden is None:
                    hidden = torch.empty((batch, new_tokens, h_t.shape[-1]), dtype=h_t.dtype)
                hidden[:, t] = h_t.cpu()
                logits = out_logits[:, -1, :].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                x_t = self._choose(logits, generators)
                token_ids[:, t] = torch.where(alive, x_t.cpu(), -1)
                logp[:, t] = torch.where(alive, logprobs.gather(-1, x_t[:, None])[:, 0].cpu(), float("nan"))
                entropy[:, t] = torch.where(alive, entropy_from_logprobs(logprobs).cpu(), float("nan"))
                if self.decoding.stop_at_eos:
                    ended = alive & torch.tensor([int(x) in self.eos_ids for x in x_t.tolist()])
                    for row in torch.nonzero(ended)[:, 0].tolist():
                        lengths[row] = t + 1
                    alive &= ~ended
                    if not alive.any():
                        break
                step_input = x_t[:, None]
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        assert hidden is not None
        return self._finish(token_ids, lengths, logp, entropy, hidden)

    def _finish(
        self,
        token_ids: torch.Tensor,
        lengths: list[int],
        logp: torch.Tensor,
        entropy: torch.Tensor,
        hidden: torch.Tensor,
    ) -> BatchRecord:
        speed = speed_squared(hidden)
        for row, n in enumerate(lengths):
            speed[row, n:] = float("nan")
            hidden[row, n:] = float("nan")
        return BatchRecord(
            token_ids=token_ids,
            lengths=lengths,
            logp=logp,
            entropy=entropy,
            speed_sq=speed,
            hidden=hidden if self.keep_hidden else None,
        )

    # ------------------------------------------------------------------ teacher forcing

    def _teacher(self, prompts: list[list[int]], targets: list[list[int]]) -> BatchRecord:
        if any(len(t) == 0 for t in targets):
            raise PPMechError("a target has no tokens", "give every prompt a non-empty target")
        from ppmech.models.architectures import readout

        model = self.lm.model
        read = readout(model)
        full = [p + t for p, t in zip(prompts, targets, strict=True)]
        ids, mask, positions = (t.to(self.lm.device) for t in left_pad(full, self.pad_id))
        batch, width = ids.shape
        steps = max(len(t) for t in targets)
        with capture(model, [FINAL_NORM]) as store:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
            states = store[FINAL_NORM][0]
        # Rows end together (left padding): target j of row i sits at
        # width - len_i + j and is predicted from the position before it.
        token_ids = torch.full((batch, steps), -1, dtype=torch.long)
        logp = torch.full((batch, steps), float("nan"), dtype=torch.float32)
        entropy = torch.full((batch, steps), float("nan"), dtype=torch.float32)
        hidden = torch.full((batch, steps, states.shape[-1]), float("nan"), dtype=states.dtype)
        for row, target in enumerate(targets):
            n = len(target)
            h = states[row, width - n - 1 : width - 1]
            logprobs = read.log_probs(h)
            tgt = torch.tensor(target, dtype=torch.long, device=h.device)
            token_ids[row, :n] = tgt.cpu()
            logp[row, :n] = logprobs.gather(-1, tgt[:, None])[:, 0].cpu()
            entropy[row, :n] = entropy_from_logprobs(logprobs).cpu()
            hidden[row, :n] = h.cpu()
        return self._finish(token_ids, [len(t) for t in targets], logp, entropy, hidden)
