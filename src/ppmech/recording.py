"""Moved to :mod:`ppmech.engine.recorder` (and :mod:`ppmech.engine.sampling`); kept as an alias."""

from ppmech.engine.decoder import left_pad
from ppmech.engine.recorder import BatchRecord, Recorder
from ppmech.engine.sampling import Decoding, Strategy, filter_logits

__all__ = ["BatchRecord", "Decoding", "Recorder", "Strategy", "filter_logits", "left_pad"]
