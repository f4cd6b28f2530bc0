"""Moved to :mod:`ppmech.engine.hooks`; kept as an alias."""

from ppmech.engine.hooks import FINAL_NORM, capture, hook_module, resid_post

__all__ = ["FINAL_NORM", "capture", "hook_module", "resid_post"]
