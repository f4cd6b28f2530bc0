"""The decoding engine: one token-by-token loop for every path that runs a model.

* :mod:`ppmech.engine.decoder` — :class:`Engine` (prefill, step, KV cache,
  capture, patch, EOS) and its :class:`Session`.
* :mod:`ppmech.engine.sampling` — :class:`Decoding` and the one token chooser.
* :mod:`ppmech.engine.hooks` — named hook points (``final_norm``, ``resid_post.{i}``).
* :mod:`ppmech.engine.compiled` — the static-cache, compiled decode step and the ``auto`` rule.
* :mod:`ppmech.engine.batching` — ``--batch-size auto`` with back-off on out-of-memory.
* :mod:`ppmech.engine.recorder` — the trajectory :class:`Recorder`.

Where a model runs (``--device``) is model access: :mod:`ppmech.models.device`.

Submodules are imported on use (``from ppmech.engine.recorder import Recorder``);
this package itself imports nothing heavy.
"""
