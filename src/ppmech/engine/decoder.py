"""The decoding engine: prefill, step, KV cache, capture, patch, choose, EOS.

Every path that runs a causal LM token by token decodes here: the recorder, the
natural and steered traces of steering, the monitor's stream and generation, and
the reference judge. The pieces:

* :meth:`Engine.forward` is the one model call (a cached forward pass with an
  attention mask and per-row position ids, across the transformers 5.x rename of
  ``past_key_values`` to ``cache``).
* :meth:`Engine.start` left-pads a batch of prompts and opens a :class:`Session`:
  its KV cache (growing ``DynamicCache``, or a ``StaticCache`` for the compiled
  path), attention mask, next positions, the hook points it captures and patches,
  and the *pending* tokens not yet run through the model.
* :meth:`Engine.steps` is the one token-by-token loop. At step ``t`` it runs the
  pending tokens (the prompt at ``t = 0``), takes the logits and captured states
  at the newest position, lets an optional *intervention* replace them (steering),
  chooses ``x_t`` with a :class:`~ppmech.engine.sampling.TokenChooser`, yields a
  :class:`Step`, and makes ``x_t`` pending. With ``stop_at_eos`` a row ends at its
  EOS token; the loop ends early once every row has.

Nothing in the loop reads a tensor back to the host (the EOS check aside, every
``EOS_CHECK_EVERY`` steps), so on an accelerator the steps queue without a
synchronisation; consumers keep their per-step results on the device and copy
them to the host once per batch.

Prompts of different lengths are left-padded, positions counted from each row's
first real token, so a batched row equals the same prompt run alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ppmech.engine.hooks import FINAL_NORM, Patch, capture, hook_module
from ppmech.engine.sampling import TokenChooser
from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.progress import note

#: With ``stop_at_eos``, how often (in steps) the loop asks the device whether every row has ended.
EOS_CHECK_EVERY = 8

#: ``(t, session, logits [B, V] float32, states {name: [B, d]}) -> (logits, states)``.
Intervention = Callable[
    [int, "Session", torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@dataclass
class ForwardOut:
    """One forward pass: ``logits [B, k, V]`` (model dtype) and ``states {name: [B, n, d]}``."""

    logits: torch.Tensor
    states: dict[str, torch.Tensor]


@dataclass
class Step:
    """One decoding step of a batch (all on the device).

    Attributes:
        t: the step index, from 0.
        tokens: ``[B]`` int64, the chosen ``x_t``.
        logits: ``[B, V]`` float32, the logits ``x_t`` was chosen from.
        states: ``{name: [B, d]}`` captured at the newest position (after any intervention).
        alive: ``[B]`` bool, rows still generating at this step (all True without ``stop_at_eos``).
    """

    t: int
    tokens: torch.Tensor
    logits: torch.Tensor
    states: dict[str, torch.Tensor]
    alive: torch.Tensor


@dataclass
class Session:
    """A batch being decoded; see the module docstring. Made by :meth:`Engine.start`.

    Attributes:
        engine: the engine it belongs to.
        batch: rows ``B``.
        cache: the KV cache (``None`` before the first forward of a growing cache).
        mask: ``[B, W]`` int64 attention mask over the cached and the pending positions
            (for a static cache, over all ``max_len`` slots, 0 where unused).
        pending: ``[B, n]`` token ids not yet run (``None`` once run).
        pending_pos: ``[B, n]`` their position ids.
        length: cache positions filled so far.
        patches: live patches by hook point (see :func:`ppmech.engine.hooks.capture`).
        ended_at: ``[B]`` int64, steps each row generated (its EOS step + 1), ``T`` if none.
    """

    engine: Engine
    batch: int
    cache: Any
    mask: torch.Tensor
    pending: torch.Tensor | None
    pending_pos: torch.Tensor
    static: bool = False
    length: int = 0
    patches: dict[str, Patch | None] = field(default_factory=dict)
    ended_at: torch.Tensor | None = None
    static_key: tuple[int, int] | None = None
    last_input: tuple[torch.Tensor, torch.Tensor] | None = None
    last_out: ForwardOut | None = None

    # ------------------------------------------------------------------ running

    def run_pending(
        self, logits_to_keep: int = 1, patch: dict[str, Patch | None] | None = None
    ) -> ForwardOut:
        """Run the pending tokens through the model, append them to the cache, and return the pass."""
        if self.pending is None:
            raise RuntimeError("nothing is pending: feed tokens first")
        ids, pos = self.pending, self.pending_pos
        self.patches.clear()
        if patch:
            self.patches.update(patch)
        try:
            out = self.engine._run(self, ids, pos, logits_to_keep)
        finally:
            self.patches.clear()
        self.last_input = (ids, pos)
        self.last_out = out
        self.pending = None
        self.length += ids.shape[1]
        return out

    def rollback(self) -> None:
        """Undo the last :meth:`run_pending`: its tokens leave the cache and are pending again."""
        if self.last_input is None or self.pending is not None:
            raise RuntimeError("rollback needs a forward pass to undo")
        ids, pos = self.last_input
        self.cache.crop(-ids.shape[1])
        # Trial passes may have built autograd history into the cache: drop it.
        for layer in getattr(self.cache, "layers", []):
            for attr in ("keys", "values"):
                value = getattr(layer, attr, None)
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    setattr(layer, attr, value.detach())
        self.length -= ids.shape[1]
        self.pending, self.pending_pos = ids, pos
        self.last_input = None
        self.last_out = None

    def feed(self, tokens: torch.Tensor) -> None:
        """Make ``tokens`` ``[B, n]`` pending, at the positions after the last ones."""
        if self.pending is not None:
            raise RuntimeError("tokens are already pending")
        n = tokens.shape[1]
        last = self.last_input[1][:, -1:] if self.last_input is not None else self.pending_pos[:, -1:]
        self.pending_pos = last + torch.arange(1, n + 1, device=last.device)[None, :]
        self.pending = tokens
        if self.static:
            self.mask[:, self.length : self.length + n] = 1
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.batch, n))], dim=-1)

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Let go of the KV cache (a static one goes back to the engine's pool)."""
        self.cache = None
        self.last_out = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine:
    """Decodes batches of prompts with one model; see the module docstring.

    Args:
        lm: the loaded model.
        capture: hook points whose state :meth:`steps` reports at every step.
        patch_points: hook points a session may patch (steering at a layer).
        compile: ``off`` (eager, growing cache), ``on`` (static cache and a compiled
            decode step; CUDA graphs on CUDA) or ``auto`` (see :mod:`ppmech.engine.compiled`).
    """

    def __init__(
        self,
        lm: LoadedModel,
        capture: Sequence[str] = (FINAL_NORM,),
        patch_points: Sequence[str] = (),
        compile: str = "off",
    ) -> None:
        from ppmech.engine.compiled import CompiledStep, check_compile_mode

        self.lm = lm
        self.model = lm.model
        self.device: torch.device = lm.device
        self.capture = list(capture)
        self.patch_points = list(patch_points)
        for name in (*self.capture, *self.patch_points):
            hook_module(self.model, name)  # one-line error for an unknown point
        self.compile_mode = check_compile_mode(compile)
        self.compiled: CompiledStep | None = None
        self._compiled_factory = CompiledStep
        self._decided = False
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        eos = getattr(lm.model.generation_config, "eos_token_id", None) or tok.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = {int(i) for i in ids}
        self._eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=self.device)
        self._cache_kw = _cache_kwarg(self.model)

    # ------------------------------------------------------------------ the model call

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        logits_to_keep: int = 1,
    ) -> tuple[torch.Tensor, Any]:
        """One cached forward pass.

        Returns:
            ``(logits [B, logits_to_keep, V], cache)`` (all positions' logits when
            ``logits_to_keep`` is 0).
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_kw: cache},
        )
        new_cache = out.get("cache", None)
        if new_cache is None:
            new_cache = out.get("past_key_values", None)
        return out.logits, new_cache

    def _run(self, session: Session, ids: torch.Tensor, pos: torch.Tensor, logits_to_keep: int) -> ForwardOut:
        if session.static:
            assert self.compiled is not None
            logits, states = self.compiled.run(session, ids, pos, logits_to_keep)
            return ForwardOut(logits=logits, states=states)
        # Hooks live for one pass only: an idle session (a paused monitor stream) holds none.
        with capture(self.model, self.capture, session.patches) as store:
            logits, session.cache = self.forward(ids, session.mask, pos, session.cache, logits_to_keep)
        return ForwardOut(logits=logits, states={name: values[-1] for name, values in store.items()})

    # ------------------------------------------------------------------ sessions

    def check_length(self, prompt_len: int, new_tokens: int) -> None:
        """Refuse a context longer than the model allows."""
        total = prompt_len + new_tokens
        if total > self.lm.max_context:
            raise PPMechError(
                f"context of {prompt_len} + {new_tokens} new tokens = {total} exceeds the "
                f"model's {self.lm.max_context} positions",
                "use fewer `context_tokens` or `new_tokens`",
            )

    def use_compiled(self, on: bool) -> None:
        """Switch the fast path on or off for the next sessions (``compile='auto'`` decides with this)."""
        if on and self.compiled is None:
            self.compiled = self._compiled_factory(self)
        self._fast = on and self.compiled is not None and self.compiled.usable

    def consider_compiling(self, eager_step_s: float, steps_left: int, batch: int) -> bool:
        """With ``compile='auto'``: after a timed eager batch, take the fast path if it repays.

        Decides once per engine (see :func:`ppmech.engine.compiled.compile_pays`); returns :attr:`fast`.
        """
        from ppmech.engine.compiled import compile_pays, remembered_warmup, warmup_key

        if self.compile_mode != "auto" or self._decided:
            return self.fast
        self._decided = True
        warm = remembered_warmup(warmup_key(self.lm, self.device, batch))
        if compile_pays(self.device.type, eager_step_s, steps_left, warm):
            note(
                f"compiling the decode step: {steps_left} steps left at {eager_step_s * 1e3:.0f} ms "
                "each repay its warm-up (`compile` off to decode eagerly)"
            )
            self.use_compiled(True)
        return self.fast

    @property
    def fast(self) -> bool:
        """True when new sessions take the static-cache, compiled decode path."""
        if not hasattr(self, "_fast"):
            self.use_compiled(self.compile_mode == "on")
        return bool(self._fast)

    def start(
        self,
        prompts: Sequence[Sequence[int]],
        new_tokens: int = 0,
        hold_last: bool = False,
        fast: bool | None = None,
    ) -> Session:
        """Left-pad ``prompts`` and open a session with the prompts pending.

        Args:
            prompts: token ids per row.
            new_tokens: tokens that will be generated (sizes a static cache).
            hold_last: run all but each prompt's last token now, so that every step
                runs exactly one token per row (a step can then be rolled back).
            fast: take the compiled path (default: :attr:`fast`); ignored with ``hold_last``.
        """
        self.check_length(max(len(p) for p in prompts), new_tokens)
        ids, mask, positions = (t.to(self.device) for t in left_pad(prompts, self.pad_id))
        batch, width = ids.shape
        static = (self.fast if fast is None else fast) and not hold_last
        session = Session(
            engine=self,
            batch=batch,
            cache=None,
            mask=mask,
            pending=ids,
            pending_pos=positions,
            static=static,
        )
        if static:
            assert self.compiled is not None
            self.compiled.open(session, width, new_tokens)
        if hold_last and width > 1:
            # Run all but the last prompt token now; the last one is the first step's input.
            session.pending, session.pending_pos = ids[:, :-1], positions[:, :-1]
            full_mask = session.mask
            session.mask = full_mask[:, :-1]
            with torch.no_grad():
                session.run_pending()
            session.mask = full_mask
            session.last_input = None
            session.pending, session.pending_pos = ids[:, -1:], positions[:, -1:]
        return session

    # ------------------------------------------------------------------ the loop

    def steps(
        self,
        session: Session,
        new_tokens: int,
        chooser: TokenChooser,
        intervene: Intervention | None = None,
        stop_at_eos: bool = False,
    ) -> Iterator[Step]:
        """Decode up to ``new_tokens`` steps; the one token-by-token loop of ppmech.

        At each step: run the pending tokens (none pending: use nothing new — the
        session's pending tokens must be set), read the newest position's logits
        (float32) and states, apply ``intervene``, choose, yield, feed the choice.
        ``session.ended_at`` holds each row's number of generated steps afterwards.
        """
        batch = session.batch
        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        session.ended_at = torch.full((batch,), new_tokens, dtype=torch.long, device=self.device)
        grad = torch.is_grad_enabled()
        for t in range(new_tokens):
            if session.pending is None:  # the caller already ran its tokens (a monitor stream)
                assert session.last_out is not None, "start a session or feed tokens first"
                out = session.last_out
            else:
                with torch.no_grad():
                    out = session.run_pending()
            logits = out.logits[:, -1, :].float()
            states = {name: s[:, -1, :] for name, s in out.states.items()}
            if intervene is not None:
                with torch.set_grad_enabled(grad):
                    logits, states = intervene(t, session, logits, states)
            tokens = chooser(logits)
            yield Step(t=t, tokens=tokens, logits=logits, states=states, alive=alive)
            if stop_at_eos:
                ended = alive & torch.isin(tokens, self._eos)
                session.ended_at = torch.where(ended, t + 1, session.ended_at)
                alive = alive & ~ended
                if (t + 1) % EOS_CHECK_EVERY == 0 and t + 1 < new_tokens and not bool(alive.any()):
                    break
            if t + 1 < new_tokens:
                session.feed(tokens[:, None])


def _cache_kwarg(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
