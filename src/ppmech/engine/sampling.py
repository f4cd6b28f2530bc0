"""The one token chooser: greedy, or sampling with temperature, top-k and top-p.

Every decoding path (the recorder, the natural and steered traces of steering,
the monitor's generation) chooses tokens here, so they filter and draw alike.

* ``greedy``: ``x_t = argmax z_t`` over the logits ``z_t`` (float32).
* ``sample``: ``z_t / temperature``, then top-k (keep the k largest), then top-p
  (keep the smallest set of most probable tokens whose mass reaches p; the first
  always stays), softmax, and one draw per row with that row's own
  :class:`torch.Generator` seeded from its trajectory seed. The draws therefore
  do not depend on which other rows share the batch.

The mechanics never use the sampler's distribution: ``V_t`` is always from the
model's untempered logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ppmech.errors import PPMechError

Strategy = Literal["greedy", "sample", "teacher"]


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen.

    Attributes:
        strategy: ``greedy``, ``sample`` or ``teacher`` (score given targets).
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
            raise PPMechError(f"unknown `decoding` '{self.strategy}'", "use greedy, sample or teacher")
        if not self.temperature > 0:
            raise PPMechError(f"`temperature` must be > 0 (got {self.temperature})", "use e.g. 1.0")
        if self.top_k is not None and self.top_k < 1:
            raise PPMechError(f"`top_k` must be >= 1 (got {self.top_k})", "omit it or use e.g. 50")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise PPMechError(f"`top_p` must be in (0, 1] (got {self.top_p})", "use e.g. 0.9")
        if self.strategy != "sample":
            # Refused rather than ignored: a run's summary would record a temperature (or
            # top-k/top-p) that never acted, and the user would believe it had. The one home
            # of this rule: every config builds its Decoding with Decoding.of().
            given = [
                f"`{name}`"
                for name, default in (("temperature", 1.0), ("top_k", None), ("top_p", None))
                if getattr(self, name) != default
            ]
            if given:
                raise PPMechError(
                    f"{', '.join(given)} only applies to `decoding` sample, not {self.strategy}",
                    f"drop {', '.join(given)}, or use `decoding` sample",
                )

    @classmethod
    def of(cls, config: Any) -> Decoding:
        """The decoding of a config with the flat fields ``decoding``, ``temperature``, ``top_k``,
        ``top_p`` and (optionally) ``stop_at_eos``; validated here, so every config refuses alike."""
        return cls(
            strategy=config.decoding,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            stop_at_eos=getattr(config, "stop_at_eos", False),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
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


class TokenChooser:
    """Chooses ``x_t`` from the logits of a batch, as :class:`Decoding` says.

    Args:
        decoding: the strategy (``teacher`` is not a chooser; it is refused).
        batch: rows ``B``.
        device: where the logits live (the generators are made there).
        seeds: one sampling seed per row (``sample`` only; default ``0..B-1``).
    """

    def __init__(
        self, decoding: Decoding, batch: int, device: torch.device, seeds: list[int] | None = None
    ) -> None:
        if decoding.strategy == "teacher":
            raise PPMechError("teacher decoding chooses no tokens", "use greedy or sample to generate")
        self.decoding = decoding
        self.generators: list[torch.Generator] | None = None
        if decoding.strategy == "sample":
            seeds = seeds if seeds is not None else list(range(batch))
            if len(seeds) != batch:
                raise PPMechError(f"{len(seeds)} sampling seeds for {batch} rows", "pass one seed per row")
            self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampler's probabilities ``[B, V]`` (after temperature, top-k, top-p)."""
        d = self.decoding
        return filter_logits(logits / d.temperature, d.top_k, d.top_p).softmax(-1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` float32 logits (or log-probabilities) -> ``[B]`` int64 token ids, on their device."""
        if self.generators is None:
            return logits.argmax(-1)
        probs = self.distribution(logits)
        return torch.stack(
            [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
        )
