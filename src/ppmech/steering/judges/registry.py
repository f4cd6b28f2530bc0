"""Judges by name: :func:`make_judge` builds ``openai``, ``embedding`` or ``reference-lm``."""

from __future__ import annotations

import inspect
from typing import Any

from ppmech.errors import PPMechError
from ppmech.steering.judges.base import (
    Judge,
)
from ppmech.steering.judges.embedding import EmbeddingJudge
from ppmech.steering.judges.openai import OpenAIJudge

__all__ = ["JUDGE_NAMES", "make_judge"]


# --------------------------------------------------------------------------- registry

JUDGE_NAMES = ("openai", "embedding", "reference-lm")


def _judge_class(name: str) -> type[Any]:
    if name == "openai":
        return OpenAIJudge
    if name == "embedding":
        return EmbeddingJudge
    if name == "reference-lm":
        # Imported here: it needs torch and a model, which the other judges do not.
        from ppmech.steering.judges.reference import ReferenceLMJudge

        return ReferenceLMJudge
    raise PPMechError(
        f"unknown judge {name!r}",
        f"choose one of: {', '.join(JUDGE_NAMES)}",
    )


def make_judge(name: str, **options: Any) -> Judge:
    """Build the judge called ``name`` ("openai", "embedding" or "reference-lm").

    ``options`` are passed to the judge's constructor; an unknown or missing
    option is reported as a :class:`PPMechError` listing the accepted ones.
    """
    cls = _judge_class(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = ", ".join(signature.parameters)
        raise PPMechError(
            f"bad options for the {name!r} judge: {exc}",
            f"its options are: {accepted}",
        ) from exc
    judge: Judge = cls(**options)
    return judge
