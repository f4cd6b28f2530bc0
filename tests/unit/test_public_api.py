"""The public surface `ppmech.__all__`: every name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import ppmech
from ppmech.measure import MeasureConfig, MeasureResult
from ppmech.models.loading import load_model
from ppmech.runs import load_run


def test_every_public_name_resolves_to_its_implementation() -> None:
    for name in ppmech.__all__:
        assert getattr(ppmech, name) is not None, name
    assert ppmech.MeasureConfig is MeasureConfig and ppmech.MeasureResult is MeasureResult
    assert ppmech.load_model is load_model and ppmech.load_run is load_run
    # `ppmech.measure` is also a submodule; imported or not, it runs a measurement when called.
    assert callable(ppmech.measure)


def test_import_ppmech_does_not_import_torch() -> None:
    code = "import sys, ppmech; assert 'torch' not in sys.modules; print(len(ppmech.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(ppmech.__all__)
