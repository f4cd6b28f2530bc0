"""Monitor: anomaly detection from the conserved log-energy (issue #5, paper §4.1, D.4).

The paper proposes the nearly conserved energy as "a measurable invariant that
characterizes normal operation and flags anomalous behavior". The monitor learns
what normal looks like for one model and scores new text against it.

Per-token terms
---------------
A scored text is the token ids ``u_0 … u_{n-1}``: the model's default special
prefix (Gemma's ``<bos>``; nothing for SmolLM2) followed by the text's tokens.
Position ``i`` has the post-final-norm hidden state ``h_i`` (what the unembedding
reads), which predicts ``u_{i+1}``. Token ``u_j`` (``j >= 1``) is *scored* with

* ``V_j = -ln p(u_j | h_{j-1})``                       potential = surprisal (nats)
* ``K_j = ln(½‖h_{j-1} - h_{j-2}‖²)``  (``j >= 2``)    log-kinetic term
* ``H_j = K_j + V_j``                   (``j >= 2``)    log-energy, the conserved quantity

This is the recorder's convention (:mod:`ppmech.mechanics`) with the step index
``t = j - 1``: the first scored token has no velocity, so its ``K`` and ``H`` are
NaN; every later token has all three. The first token of a text without a
special prefix is never scored (nothing predicts it).

Also kept per token (the baselines of the benchmark): the predictive entropy of
``p(·|h_{j-1})``, the maximum softmax probability ``msp``, and the energy score
of Liu et al. (2020) ``neg_lse = -logsumexp(logits)``. Logits are the model's own
(bias, scaling and soft-capping included, :func:`ppmech.models.architectures.readout`);
log-softmax is float32, statistics float64.

Calibration
-----------
:meth:`EnergyMonitor.calibrate` teacher-forces ``sequences`` texts of ``tokens``
tokens each, by default windows from anywhere in the English Wikipedia documents held
out from the prompts used by measurement and steering (:func:`ppmech.corpus.document_split`;
openings and later sentence starts, :mod:`ppmech.monitor.windows`, which also keeps the
record of what the normal text was), and splits them (split conformal): the first
``1 − holdout_fraction`` of them
(the *fit* texts) give, for every signal ``s`` in ``H, K, V, entropy, msp, neg_lse``:

* the pooled per-token mean ``μ_s`` and standard deviation ``σ_s`` (and quantiles);
* the mean and standard deviation across sequences of the per-sequence mean;

and, for the energy, the distribution of the per-sequence feature vector
``f = (mean H, std H, drift H)`` (mean vector and covariance). The remaining
*held-out* texts, scored against that fit, set the thresholds: the CUSUM
threshold ``h_s`` and the anomaly threshold are the ``⌈(n+1)(1−α)⌉``-th smallest
of the ``n`` held-out scores (:func:`ppmech.monitor.scoring.conformal_threshold`),
so a new normal text exchangeable with them alarms with probability at most ``α``.
(Scores of the texts a threshold was fitted on are smaller than fresh ones;
thresholds set on them alarmed on 10% of fresh normal text at a nominal 5%.)
With fewer than ``1/α − 1`` held-out texts no finite threshold has that
guarantee: the threshold is ``+inf`` and that alarm is off.

Scores
------
* per-token z-score: ``z_{s,j} = (s_j - μ_s) / σ_s``.
* per-sequence features: ``mean H`` and ``std H`` (sample std, ddof 1) over the
  finite ``H_j`` of the sequence, and ``drift H``: the least-squares slope of
  ``H_j`` against the token index (nats per token).
* per-sequence anomaly score: the Mahalanobis distance of ``f`` from the
  calibration's feature distribution, ``sqrt((f-m)ᵀ C⁻¹ (f-m))``, in units of
  the calibration's spread; ``p_value`` is the conformal p-value, the fraction of
  held-out calibration sequences scoring at least as high
  (``(1 + #{ref >= a}) / (1 + N)``), and the sequence is ``flagged`` when the
  score is above the anomaly threshold (equivalently ``p_value <= alpha``). It is
  two-sided: an energy level, a fluctuation or a drift that is too low is as
  anomalous as one too high.
* CUSUM alarm for sustained drift, on ``z_H`` clipped to ``±z_clip``:
  ``S⁺_j = max(0, S⁺_{j-1} + z_j - k)``, ``S⁻_j = max(0, S⁻_{j-1} - z_j - k)``,
  ``C_j = max(S⁺_j, S⁻_j)``, starting at 0 and skipping tokens with NaN ``z``.
  The alarm fires at the first token with ``C_j > h``, where ``h`` is the
  conformal ``1 - alpha`` quantile of ``max_j C_j`` over the held-out calibration
  sequences: a normal text of the calibration length raises a false alarm with
  probability at most ``alpha``; longer texts more often.
* combined alarm (what a user watching both sees): the anomaly score or the CUSUM
  above thresholds of their own, set together so that at most ``alpha`` of normal
  texts raise either (:func:`ppmech.monitor.calibration.combined_thresholds`).

Modules: :mod:`~ppmech.monitor.scoring` (pure statistics), :mod:`~ppmech.monitor.windows`
(normal text), :mod:`~ppmech.monitor.calibration` (settings, the calibration and its file),
:mod:`~ppmech.monitor.results` (a scored text), :mod:`~ppmech.monitor.stream` (model-facing:
:class:`~ppmech.monitor.stream.EnergyMonitor`); the benchmark: :mod:`~ppmech.monitor.sets`,
:mod:`~ppmech.monitor.baselines`, :mod:`~ppmech.monitor.evaluation`,
:mod:`~ppmech.monitor.benchmark`; :mod:`~ppmech.monitor.detection` (AUROC, ROC; pure).

The anomaly score compares sequence-level features, so it is most meaningful for
texts about as long as the calibration's (``tokens``, default 64); z-scores and
the CUSUM are per token and apply to any length.

Long texts are refused, not windowed: ``K`` and the CUSUM need one continuous
context, and a window boundary would itself look like an anomaly.
"""
