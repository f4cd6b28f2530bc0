"""The fast path: a static KV cache and a compiled decode step.

With ``--compile on`` a session keeps its keys and values in a transformers
``StaticCache`` of fixed size (rounded up to :data:`CACHE_BUCKET` positions) and
an attention mask over all its slots, so every decode step has the same shapes
and ``torch.compile`` traces it once (``fullgraph``, no dynamic shapes). On CUDA
the step is compiled with ``mode="reduce-overhead"``: it replays as a CUDA graph,
one launch per step instead of hundreds. The prefill stays eager.

Equality with eager decoding (K and V within 1e-3 in float32) is tested on a
tiny llama in ``tests/integration/test_engine.py``. An architecture whose step
does not compile falls back to eager decoding (same static cache) with a one-line
note; one that cannot use a static cache falls back to the growing cache.

Compiling costs time once per model shape, batch and cache size. Inductor's
compile cache lives under ``~/.cache/ppmech/inductor`` (``$TORCHINDUCTOR_CACHE_DIR``
wins), so a second run is cheaper, and each measured warm-up is remembered in
``~/.cache/ppmech/compile-warmup.json``.

``--compile auto`` (the default) takes the fast path only when it repays its
warm-up: the first batch decodes eagerly and is timed; the fast path is taken
for the rest when the eager time it would save,
``steps_left * eager_step * (1 - 1/speedup)``, exceeds the expected warm-up (the
remembered one for this device, model shape and batch, else
:data:`DEFAULT_WARMUP_S`). Each of the two estimates is the unfavourable end of
what was measured, so a user never waits longer than eager decoding would take
when the job is like the ones measured. ``speedup`` is the step speed-up the
compiled path is credited with (:data:`ASSUMED_SPEEDUP`):

* CUDA: 1.6x, the smallest measured on an NVIDIA H100 (BENCHMARKS.md, bf16,
  random weights, 50-token prompts, 100 new tokens): 4.7x at SmolLM2-135M's shape
  (batch 256), 5.1x at SmolLM2-1.7B's (batch 64), 1.7x at Qwen2.5-3B's (batch 256).
  The first full-batch pass with a cold compile cache took 17 to 41 s there
  (compile plus 100 steps), hence the 45 s default warm-up.
* CPU: none. Measured here (SmolLM2-135M, fp32, batch 50 x 30 tokens, 2 shared
  cores): with a cold compile cache and a heavily loaded machine the compiled
  step ran 1.05x the eager one after a first compiled step of 106 s (first
  full-batch pass 765 s); with a warm cache, in BENCHMARKS.md ("Compiled decode
  path on the CPU"), the first compiled step took 16 s and the compiled recorder
  then ran at 0.82x the eager one. It does not repay on the CPU, so ``auto``
  never compiles there; ``--compile on`` still can.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

import torch

from ppmech import artifacts
from ppmech.engine.hooks import Patch, Switch, capture
from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.progress import note


# The compiled step serves the decoder (:mod:`ppmech.engine.decoder` builds it), so it
# names what it needs of an engine and a session here instead of importing them: the
# arrow points one way, decoder -> compiled.
class EngineLike(Protocol):
    """What :class:`CompiledStep` uses of a :class:`~ppmech.engine.decoder.Engine`."""

    lm: LoadedModel
    model: Any
    device: torch.device
    capture: list[str]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        logits_to_keep: int = 1,
    ) -> tuple[torch.Tensor, Any]: ...

    def use_compiled(self, on: bool) -> None: ...


class SessionLike(Protocol):
    """What :class:`CompiledStep` uses of a :class:`~ppmech.engine.decoder.Session`."""

    batch: int
    cache: Any
    mask: torch.Tensor
    length: int
    patches: dict[str, Patch | None]
    static_key: tuple[int, int] | None


COMPILE_MODES = ("auto", "on", "off")
#: Static caches are sized in multiples of this many positions, so nearby lengths share a compiled step.
CACHE_BUCKET = 64
#: Expected first-compile time (seconds) when none was measured on this machine yet.
DEFAULT_WARMUP_S = {"cuda": 45.0, "cpu": 90.0, "mps": 60.0}
#: Step speed-up credited to the compiled path by ``auto`` (measured: see the module docstring).
ASSUMED_SPEEDUP = {"cuda": 1.6, "cpu": 1.0, "mps": 1.0}


def check_compile_mode(mode: str) -> str:
    """Validate a ``--compile`` value."""
    if mode not in COMPILE_MODES:
        raise PPMechError(f"unknown `compile` '{mode}'", "use auto, on or off")
    return mode


def compile_pays(
    device_type: str, eager_step_s: float, steps_left: int, warmup_s: float | None = None
) -> bool:
    """The ``auto`` rule (module docstring): does compiling repay its warm-up on this job?

    Args:
        device_type: ``cuda``, ``cpu`` or ``mps``.
        eager_step_s: measured seconds per eager decode step at this batch size.
        steps_left: decode steps still to run (batches x new tokens).
        warmup_s: expected warm-up; default :data:`DEFAULT_WARMUP_S`.
    """
    speedup = ASSUMED_SPEEDUP.get(device_type, 1.0)
    if speedup <= 1.0:
        return False
    warm = DEFAULT_WARMUP_S.get(device_type, 60.0) if warmup_s is None else warmup_s
    saved = steps_left * eager_step_s * (1.0 - 1.0 / speedup)
    return saved > warm


def inductor_cache_dir() -> str:
    """Point inductor's compile cache at the ppmech cache (unless the user chose one) and return it."""
    from ppmech.models.loading import cache_root

    default = str(cache_root() / "inductor")
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default)


def warmup_key(lm: LoadedModel, device: torch.device, batch: int) -> str:
    """Names a compiled step for the warm-up memory: device, architecture, shape, dtype, batch, torch."""
    from ppmech.models.device import device_name

    ident = lm.identity
    return (
        f"{device_name(device)}|{ident.model_type}|{ident.num_layers}x{ident.hidden_size}|"
        f"{ident.dtype}|b{batch}|torch{torch.__version__}"
    )


def _warmup_file() -> Any:
    from ppmech.models.loading import cache_root

    return cache_root() / "compile-warmup.json"


def remembered_warmup(key: str) -> float | None:
    """The last measured warm-up (seconds) for ``key``, if any."""
    try:
        value = json.loads(_warmup_file().read_text()).get(key)
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None


def remember_warmup(key: str, seconds: float) -> None:
    """Store a measured warm-up; a read-only cache only costs the memory of it."""
    path = _warmup_file()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[key] = round(seconds, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_text(path, json.dumps(data, indent=1))  # atomic
    except (OSError, ValueError, PPMechError):  # PPMechError: a full disk
        pass


class CompiledStep:
    """Static caches, their masks and the compiled step of one :class:`~ppmech.engine.decoder.Engine`."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine
        self.device = engine.device
        self.usable = True
        self.failed_reason: str | None = None
        self._pool: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        self._warm: set[tuple[int, int]] = set()
        self.warmup_seconds: dict[tuple[int, int], float] = {}
        try:
            from transformers import StaticCache

            self._static_cache = StaticCache
        except ImportError:  # pragma: no cover - transformers 5 has it
            self.usable = False
        if self.usable and not getattr(engine.model, "_can_compile_fullgraph", True):
            self.usable = False
            self.failed_reason = "the architecture does not support a static cache"
        if self.usable:
            probe = self._static_cache(config=engine.model.config, max_cache_len=CACHE_BUCKET)
            if any(getattr(layer, "is_sliding", False) for layer in getattr(probe, "layers", [])):
                # transformers counts a sliding-window layer's length in a Python int,
                # which makes dynamo retrace the step at every position.
                self.usable = False
                self.failed_reason = "its sliding-window layers retrace the step at every position"
        if not self.usable:
            note(
                f"compiled decoding is not available for {engine.lm.identity.model_type} "
                f"({self.failed_reason}); decoding eagerly"
            )
            return
        inductor_cache_dir()
        # Hooks stay registered while the engine lives (new hooks would retrace the step),
        # switched on only inside :meth:`run`, so other users of the model never meet them.
        self.switch = Switch()
        self._hooks = capture(engine.model, engine.capture, switch=self.switch)
        self.store = self._hooks.__enter__()
        import weakref

        weakref.finalize(self, self._hooks.__exit__, None, None, None)
        self.graphs = self.device.type == "cuda"
        mode = "reduce-overhead" if self.graphs else None
        self._fn = torch.compile(self._step, fullgraph=True, dynamic=False, mode=mode)

    # ------------------------------------------------------------------ sessions

    def open(self, session: SessionLike, width: int, new_tokens: int) -> None:
        """Give ``session`` a reset static cache and a mask over its slots (prompt positions set)."""
        need = width + new_tokens
        size = -(-need // CACHE_BUCKET) * CACHE_BUCKET
        size = max(need, min(size, self.engine.lm.max_context))
        key = (session.batch, size)
        if key not in self._pool:
            if len(self._pool) >= 2:  # keep at most two sizes alive
                self._pool.pop(next(iter(self._pool)))
            cache = self._static_cache(config=self.engine.model.config, max_cache_len=size)
            mask = torch.zeros((session.batch, size), dtype=torch.long, device=self.device)
            self._pool[key] = (cache, mask)
        cache, mask = self._pool[key]
        cache.reset()
        mask.zero_()
        mask[:, :width] = session.mask
        session.cache = cache
        session.mask = mask
        session.static_key = key

    def _step(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any) -> Any:
        logits, _ = self.engine.forward(ids, mask, pos, cache, 1)
        return logits, {name: values[-1] for name, values in self.store.items()}

    def run(
        self, session: SessionLike, ids: torch.Tensor, pos: torch.Tensor, logits_to_keep: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward on the session's static cache: compiled for a plain one-token step, else eager."""
        with self.switch.enabled():
            return self._run(session, ids, pos, logits_to_keep)

    def _run(
        self, session: SessionLike, ids: torch.Tensor, pos: torch.Tensor, logits_to_keep: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        plain = (
            self.usable
            and ids.shape[1] == 1
            and logits_to_keep == 1
            and not torch.is_grad_enabled()
            and not any(session.patches.values())
        )
        for values in self.store.values():  # dynamo guards on these lists: empty on every call
            values.clear()
        if plain:
            key = session.static_key
            assert key is not None
            started = time.perf_counter()
            try:
                if self.graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                if key in self._warm:
                    # A warm step that wants to retrace would retrace at every step: give up at once.
                    with torch.compiler.set_stance("fail_on_recompile"):
                        logits, states = self._fn(ids, pos, session.mask, session.cache)
                else:
                    logits, states = self._fn(ids, pos, session.mask, session.cache)
            except Exception as exc:  # any compiler failure: decode eagerly from here on
                self._give_up(session, exc)
            else:
                for values in self.store.values():
                    values.clear()
                if key not in self._warm:
                    self._warm.add(key)
                    self.warmup_seconds[key] = time.perf_counter() - started
                    remember_warmup(warmup_key(self.engine.lm, self.device, key[0]), self.warmup_seconds[key])
                if self.graphs:  # CUDA-graph outputs are overwritten by the next replay
                    return logits.clone(), {n: s.clone() for n, s in states.items()}
                return logits, states
        logits, _ = self.engine.forward(ids, session.mask, pos, session.cache, logits_to_keep)
        states = {name: values[-1] for name, values in self.store.items() if values}
        for values in self.store.values():
            values.clear()
        return logits, states

    def _give_up(self, session: SessionLike, exc: Exception) -> None:
        self.usable = False
        self.engine.use_compiled(False)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        self.failed_reason = f"{type(exc).__name__}: {first}"
        note(
            f"the decode step of {self.engine.lm.identity.model_type} did not compile "
            f"({self.failed_reason}); decoding eagerly"
        )
        # A failed trace must leave the cache as it was before this step.
        filled = int(session.cache.get_seq_length())
        if filled > session.length:
            session.cache.crop(-(filled - session.length))
