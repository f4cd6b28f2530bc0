"""ppmech: momentum-point-perplexity mechanics of language models.

Record how a model's final hidden state moves from token to token, measure the
log-energy ``H_t = ln(½‖h_t - h_{t-1}‖²) + ln(1/p(x_t))``, test the paper's
claims, steer generation with minimal-action Jacobian steering, and monitor
models with the conserved quantity.

The public surface is :data:`__all__`; it is imported lazily so that ``import ppmech``
(and ``ppmech --help``) does not import torch. Everything else lives in the packages
named in the README's "Architecture" section.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ppmech.errors import PPMechError

if TYPE_CHECKING:
    from ppmech.measure import MeasureConfig, MeasureResult, measure, measure_or_load
    from ppmech.models.identity import LoadedModel
    from ppmech.models.loading import load_model
    from ppmech.provenance import __version__
    from ppmech.runs import Run, load_run

_LAZY = {
    "__version__": "ppmech.provenance",
    "measure": "ppmech.measure",
    "MeasureConfig": "ppmech.measure",
    "MeasureResult": "ppmech.measure",
    "measure_or_load": "ppmech.measure",
    "load_model": "ppmech.models.loading",
    "LoadedModel": "ppmech.models.identity",
    "load_run": "ppmech.runs",
    "Run": "ppmech.runs",
}

__all__ = [
    "LoadedModel",
    "MeasureConfig",
    "MeasureResult",
    "PPMechError",
    "Run",
    "__version__",
    "load_model",
    "load_run",
    "measure",
    "measure_or_load",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppmech' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
