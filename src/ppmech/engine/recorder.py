"""Batched, KV-cached recording of hidden-state trajectories, on the decoding engine.

At every step the recorder captures ``h_t``, the output of the final norm (the
state the unembedding reads), and the model's own next-token distribution at
that position: the logits come from the model's forward (bias, scaling and
soft-capping included) and the per-step terms are read off them by
:func:`ppmech.mechanics.step_terms` (log-softmax in float32).

Prompts of different lengths are left-padded, with an attention mask and
position ids counted from each row's first real token, so a batched row equals
the same prompt run alone (``tests/integration/test_recorder.py``).

Decoding strategies (:class:`~ppmech.engine.sampling.Decoding`):

* ``greedy`` (default, as in the paper): ``x_t = argmax p(h_t)``.
* ``sample``: temperature, top-k and top-p, seeded *per trajectory*, so the
  tokens do not depend on the batch size. ``V_t`` always uses the model's
  untempered distribution: the mechanics describe the model, not the sampler.
* ``teacher``: score given target tokens; ``x_t`` is the target, ``h_t`` the
  state that predicts it.

Everything a batch records stays on the model's device until the batch is done
and is then copied to the host once. ``‖h_t - h_{t-1}‖²`` is computed from the
states in float64 (on the device, except on MPS, which has no float64), whatever
the model's dtype: a bfloat16 model's states are differenced exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ppmech.engine.decoder import Engine
from ppmech.engine.hooks import FINAL_NORM
from ppmech.engine.sampling import Decoding, TokenChooser
from ppmech.errors import PPMechError
from ppmech.mechanics import speed_squared, step_terms
from ppmech.models.identity import LoadedModel


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

    @staticmethod
    def concat(records: list[BatchRecord]) -> BatchRecord:
        """Stack batches row-wise (padding shorter ``T`` with -1 / NaN)."""
        if len(records) == 1:
            return records[0]
        steps = max(r.token_ids.shape[1] for r in records)

        def pad(x: torch.Tensor, value: float) -> torch.Tensor:
            extra = steps - x.shape[1]
            if extra == 0:
                return x
            filler = torch.full((x.shape[0], extra, *x.shape[2:]), value, dtype=x.dtype)
            return torch.cat([x, filler], dim=1)

        hidden = [r.hidden for r in records]
        return BatchRecord(
            token_ids=torch.cat([pad(r.token_ids, -1) for r in records]),
            lengths=[n for r in records for n in r.lengths],
            logp=torch.cat([pad(r.logp, float("nan")) for r in records]),
            entropy=torch.cat([pad(r.entropy, float("nan")) for r in records]),
            speed_sq=torch.cat([pad(r.speed_sq, float("nan")) for r in records]),
            hidden=None
            if any(h is None for h in hidden)
            else torch.cat([pad(h, float("nan")) for h in hidden if h is not None]),
        )

    def rows(self, n: int) -> BatchRecord:
        """The first ``n`` trajectories."""
        return BatchRecord(
            token_ids=self.token_ids[:n],
            lengths=self.lengths[:n],
            logp=self.logp[:n],
            entropy=self.entropy[:n],
            speed_sq=self.speed_sq[:n],
            hidden=self.hidden[:n] if self.hidden is not None else None,
        )


class Recorder:
    """Record trajectories from a loaded model.

    Args:
        lm: the model.
        decoding: how tokens are chosen.
        keep_hidden: return ``h_t`` in each :class:`BatchRecord` (for ``--save-hidden``
            and analyses that need the states).
        compile: ``off``, ``on`` or ``auto`` (see :mod:`ppmech.engine.compiled`).
    """

    def __init__(
        self, lm: LoadedModel, decoding: Decoding, keep_hidden: bool = False, compile: str = "off"
    ) -> None:
        self.lm = lm
        self.decoding = decoding
        self.keep_hidden = keep_hidden
        self.engine = Engine(lm, capture=[FINAL_NORM], compile=compile)
        self.pad_id = self.engine.pad_id
        self.eos_ids = self.engine.eos_ids
        self.last_step_seconds: float | None = None
        #: Trajectories the job still has to record (``compile='auto'`` decides with it); ``None``: unknown.
        self.rows_left: int | None = None
        #: Called with the number of tokens just recorded, from inside the decoding loop (after
        #: every step, for the batch's real rows), so a progress bar moves within a batch.
        self.on_tokens: Callable[[int], None] | None = None
        self._rows = 0

    def check_length(self, prompt_len: int, new_tokens: int) -> None:
        """Refuse a context longer than the model allows."""
        self.engine.check_length(prompt_len, new_tokens)

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
            record = self._teacher(prompts, [t[:new_tokens] for t in targets])
            self._count(len(prompts) * new_tokens)  # one forward pass scores every step
            return record
        started = time.perf_counter()
        record = self._generate(prompts, new_tokens, seeds)
        self.last_step_seconds = (time.perf_counter() - started) / new_tokens
        if self.rows_left is not None:
            self.rows_left = max(0, self.rows_left - len(prompts))
            batches_left = -(-self.rows_left // len(prompts))
            self.engine.consider_compiling(self.last_step_seconds, batches_left * new_tokens, len(prompts))
        return record

    # ------------------------------------------------------------------ generation

    def _generate(self, prompts: list[list[int]], new_tokens: int, seeds: list[int] | None) -> BatchRecord:
        engine = self.engine
        batch = len(prompts)
        if self.decoding.strategy == "sample" and seeds is None:
            seeds = list(range(batch))
        rows = batch
        if engine.fast:
            # A compiled step is traced for one batch size: pad a smaller batch with
            # copies of its first row (dropped below) instead of compiling again.
            rows = max(batch, self._rows)
            prompts = prompts + [prompts[0]] * (rows - batch)
            if seeds is not None:
                seeds = seeds + [seeds[0]] * (rows - batch)
        self._rows = max(self._rows, rows)
        device = engine.device
        token_ids = torch.full((rows, new_tokens), -1, dtype=torch.long, device=device)
        logp = torch.full((rows, new_tokens), float("nan"), dtype=torch.float32, device=device)
        entropy = torch.full((rows, new_tokens), float("nan"), dtype=torch.float32, device=device)
        hidden: torch.Tensor | None = None
        steps_run = 0
        with engine.start(prompts, new_tokens) as session:
            chooser = TokenChooser(self.decoding, rows, device, seeds)
            for step in engine.steps(session, new_tokens, chooser, stop_at_eos=self.decoding.stop_at_eos):
                h_t = step.states[FINAL_NORM]
                if hidden is None:
                    hidden = torch.full(
                        (rows, new_tokens, h_t.shape[-1]), float("nan"), dtype=h_t.dtype, device=device
                    )
                hidden[:, step.t] = h_t
                terms = step_terms(step.logits, step.tokens)
                alive = step.alive
                token_ids[:, step.t] = torch.where(alive, terms.tokens, -1)
                logp[:, step.t] = torch.where(alive, terms.logp, float("nan"))
                entropy[:, step.t] = torch.where(alive, terms.entropy, float("nan"))
                self._count(batch)
                steps_run = step.t + 1
            # Rows that all ended at EOS end the loop early: their remaining steps count as done.
            self._count(batch * (new_tokens - steps_run))
            assert session.ended_at is not None
            lengths = session.ended_at
        assert hidden is not None
        return self._finish(token_ids, lengths, logp, entropy, hidden).rows(batch)

    def _count(self, tokens: int) -> None:
        if self.on_tokens is not None and tokens > 0:
            self.on_tokens(tokens)

    def _finish(
        self,
        token_ids: torch.Tensor,
        lengths: torch.Tensor,
        logp: torch.Tensor,
        entropy: torch.Tensor,
        hidden: torch.Tensor,
    ) -> BatchRecord:
        """Mask steps past each length, difference the states, and copy to the host once."""
        if hidden.device.type == "mps":  # no float64 there
            hidden = hidden.cpu()
        steps = torch.arange(hidden.shape[1], device=hidden.device)
        past = steps[None, :] >= lengths.to(hidden.device)[:, None]
        hidden = hidden.masked_fill(past[..., None], float("nan"))
        speed = speed_squared(hidden).masked_fill(past, float("nan"))
        return BatchRecord(
            token_ids=token_ids.cpu(),
            lengths=[int(n) for n in lengths.tolist()],
            logp=logp.cpu(),
            entropy=entropy.cpu(),
            speed_sq=speed.cpu(),
            hidden=hidden.cpu() if self.keep_hidden else None,
        )

    # ------------------------------------------------------------------ teacher forcing

    def _teacher(self, prompts: list[list[int]], targets: list[list[int]]) -> BatchRecord:
        if any(len(t) == 0 for t in targets):
            raise PPMechError("a target has no tokens", "give every prompt a non-empty target")
        from ppmech.models.architectures import readout

        read = readout(self.lm.model)
        full = [p + t for p, t in zip(prompts, targets, strict=True)]
        with self.engine.start(full, fast=False) as session:
            states = session.run_pending().states[FINAL_NORM]
        batch, width = states.shape[:2]
        steps = max(len(t) for t in targets)
        device = states.device
        # Rows end together (left padding): target j of row i sits at
        # width - len_i + j and is predicted from the position before it.
        token_ids = torch.full((batch, steps), -1, dtype=torch.long, device=device)
        logp = torch.full((batch, steps), float("nan"), dtype=torch.float32, device=device)
        entropy = torch.full((batch, steps), float("nan"), dtype=torch.float32, device=device)
        hidden = torch.full((batch, steps, states.shape[-1]), float("nan"), dtype=states.dtype, device=device)
        for row, target in enumerate(targets):
            n = len(target)
            h = states[row, width - n - 1 : width - 1]
            terms = step_terms(read.logits(h), torch.tensor(target, dtype=torch.long, device=device))
            token_ids[row, :n] = terms.tokens
            logp[row, :n] = terms.logp
            entropy[row, :n] = terms.entropy
            hidden[row, :n] = h
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=device)
        return self._finish(token_ids, lengths, logp, entropy, hidden)
