"""The offline default judge: a second, local language model rates a top-10 list.

:class:`ReferenceLMJudge` asks a *reference* causal LM (by default the other
embedded model: Gemma-3-270M when the steered model is SmolLM2-135M, SmolLM2 when
it is Gemma) how plausible each listed token is as the text that comes right
after the context. For an item with context ``x`` and listed strings
``t_1..t_n`` (decoded tokens of the steered model, leading spaces kept):

* each ``t_i`` is re-tokenised by the reference tokenizer into pieces
  ``u_1..u_m`` (no special tokens), and
  ``ℓ_i = ln p_ref(t_i | x) = Σ_j ln p_ref(u_j | prefix + x, u_<j)`` in nats, where
  ``prefix`` is the reference tokenizer's default special prefix (Gemma's
  ``<bos>``; nothing for SmolLM2). ``ℓ_i`` is the log-probability that the
  reference model continues ``x`` with exactly the string ``t_i``;
* strings that tokenise to nothing are skipped; the list's plausibility is the
  mean ``m = mean_i ℓ_i`` over the remaining strings;
* ``score = 1 + 9 * clip((m - lo) / (hi - lo), 0, 1)`` with defaults
  ``lo = -20`` and ``hi = 0`` nats, i.e. ``score = 1 + 9 (m + 20)/20``: a list
  whose strings are certain under the reference (``m = 0``) scores 10, one whose
  geometric-mean probability is ``e^-20 ≈ 2e-9`` or less scores 1, linearly in
  ``m`` between. The mapping is monotone (a list the reference finds more
  probable never scores lower) and affine where it does not clip, so the paired
  t-test and Cohen's d of an evaluation do not depend on ``lo``/``hi`` unless
  scores clip. On probes with Gemma-3-270M as reference, the natural top-10
  lists of SmolLM2-135M on Wikipedia prompts had ``m`` between about -3.5 and
  -5.5 (scores 7.2-8.4; -13 where the prompt ends mid-word), ten random
  English words about -19 and ten gibberish strings about -32 (score 1).

Scores are comparable only between runs with the same reference model and the
same ``lo``/``hi`` (recorded by :meth:`ReferenceLMJudge.describe`). The measure
rewards lists of likely next strings (grammar and topic both count), unlike the
topical :class:`~ppmech.steering.judges.embedding.EmbeddingJudge`. An item with no rateable
string is recorded as missing (``score=None``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ppmech.corpus import special_prefix
from ppmech.engine.decoder import Engine
from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import load_model
from ppmech.steering.judges.base import SCORE_MAX, SCORE_MIN, JudgeItem, JudgeScore

__all__ = ["ReferenceLMJudge", "default_reference"]


def default_reference(steered_model: str) -> str:
    """The embedded model used as reference for ``steered_model``: the *other* embedded one."""
    return "smollm2-135m" if "gemma" in steered_model.lower() else "gemma3-270m"


class ReferenceLMJudge:
    """Rate top-10 lists by their mean log-probability under a reference LM (module docstring).

    Args:
        model: the reference model spec (embedded name, path or hub id).
        lo: mean log-probability (nats) that maps to score 1.
        hi: mean log-probability (nats) that maps to score 10; must exceed ``lo``.
        dtype: reference model dtype.
        device: where the reference model runs (``auto``: CUDA when available).
        lm: an already loaded reference model to use instead of loading ``model``.
    """

    name = "reference-lm"
    LO = -20.0
    HI = 0.0

    def __init__(
        self,
        model: str = "gemma3-270m",
        lo: float = LO,
        hi: float = HI,
        dtype: str = "float32",
        device: str = "auto",
        lm: LoadedModel | None = None,
    ) -> None:
        if not hi > lo:
            raise PPMechError(
                f"reference-lm judge needs hi > lo, got lo={lo}, hi={hi}",
                "pass hi larger than lo (defaults lo=-20, hi=0)",
            )
        self.model = lm.identity.spec if lm is not None else model
        self.lo = float(lo)
        self.hi = float(hi)
        self.dtype = dtype
        self.device = device
        self._lm = lm
        self._engine: Engine | None = None

    def describe(self) -> dict[str, Any]:
        """Configuration for provenance."""
        ident = self._lm.identity.to_dict() if self._lm is not None else None
        return {
            "name": self.name,
            "model": self.model,
            "model_identity": ident,
            "lo": self.lo,
            "hi": self.hi,
            "formula": "m = mean_i ln p_ref(token_i | context) (each token string re-tokenised, "
            "log-probs of its pieces summed); score = 1 + 9*clip((m - lo)/(hi - lo), 0, 1)",
        }

    def _load(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(self.model, dtype=self.dtype, device=self.device)
        return self._lm

    def map_logprob(self, m: float) -> float:
        """Map the mean log-probability ``m`` (nats) to the 1-10 scale."""
        frac = (m - self.lo) / (self.hi - self.lo)
        return SCORE_MIN + (SCORE_MAX - SCORE_MIN) * min(1.0, max(0.0, frac))

    @torch.no_grad()
    def string_logprobs(self, context: str, strings: list[str]) -> list[float]:
        """``ln p_ref(s | context)`` for each string (NaN where a string tokenises to nothing)."""
        lm = self._load()
        tok = lm.tokenizer
        ctx = special_prefix(tok) + list(tok(context, add_special_tokens=False)["input_ids"])
        pieces = [list(tok(s, add_special_tokens=False)["input_ids"]) for s in strings]
        # The context runs once; its KV cache is then shared by one row per distinct
        # multi-piece prefix, which runs only the prefix pieces.
        if self._engine is None:
            self._engine = Engine(lm, capture=[])
        engine = self._engine
        session = engine.start([ctx])
        logits0 = session.run_pending().logits
        cache = session.cache
        first = torch.log_softmax(logits0[0, -1].float(), dim=-1)  # [V]
        prefixes: list[tuple[int, ...]] = []
        for p in pieces:
            if len(p) > 1 and tuple(p[:-1]) not in prefixes:
                prefixes.append(tuple(p[:-1]))
        later: torch.Tensor | None = None  # [R, width, V]
        if prefixes:
            width = max(len(pre) for pre in prefixes)
            rows = len(prefixes)
            ids = torch.zeros((rows, width), dtype=torch.long, device=lm.device)
            mask = torch.zeros((rows, len(ctx) + width), dtype=torch.long, device=lm.device)
            mask[:, : len(ctx)] = 1
            for r, pre in enumerate(prefixes):
                ids[r, : len(pre)] = torch.tensor(pre, dtype=torch.long)
                mask[r, len(ctx) : len(ctx) + len(pre)] = 1
            positions = (len(ctx) + torch.arange(width, device=lm.device))[None, :].expand(rows, width)
            cache.batch_repeat_interleave(rows)
            logits, _ = engine.forward(ids, mask, positions, cache, logits_to_keep=0)
            later = torch.log_softmax(logits.float(), dim=-1)
        result = []
        for p in pieces:
            if not p:
                result.append(float("nan"))
                continue
            total = float(first[p[0]])
            if len(p) > 1:
                assert later is not None
                row = prefixes.index(tuple(p[:-1]))
                # Right-padded rows: position j-1 of the prefix predicts piece j.
                total += sum(float(later[row, j - 1, p[j]]) for j in range(1, len(p)))
            result.append(total)
        return result

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """Rate each item in order; see the module docstring for the definition."""
        results: list[JudgeScore] = []
        by_context: dict[str, list[str]] = {}
        for item in items:
            strings = by_context.setdefault(item.context, [])
            for s in item.tokens:
                if s not in strings:
                    strings.append(s)
        table: dict[tuple[str, str], float] = {}
        for context, strings in by_context.items():
            if strings:
                for s, lp in zip(strings, self.string_logprobs(context, strings), strict=True):
                    table[(context, s)] = lp
        for item in items:
            values = [table[(item.context, s)] for s in item.tokens]
            finite = [v for v in values if not math.isnan(v)]
            if not finite:
                results.append(JudgeScore(score=None, raw="", error="no rateable tokens"))
                continue
            m = sum(finite) / len(finite)
            raw = f"mean_logp={m:.4f} logps=[" + ", ".join(f"{v:.3f}" for v in values) + "]"
            results.append(JudgeScore(score=self.map_logprob(m), raw=raw, error=None))
        return results
