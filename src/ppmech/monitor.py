"""Energy monitor: anomaly detection from the conserved log-energy (issue #5, paper §4.1, D.4).

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
(bias, scaling and soft-capping included, :func:`ppmech.architectures.readout`);
log-softmax is float32, statistics float64.

Calibration
-----------
:meth:`EnergyMonitor.calibrate` teacher-forces ``sequences`` texts of ``tokens``
tokens each, by default from the English Wikipedia documents held out from the
prompts used by measurement and steering (:func:`ppmech.corpus.document_split`),
and learns, for every signal ``s`` in ``H, K, V, entropy, msp, neg_lse``:

* the pooled per-token mean ``μ_s`` and standard deviation ``σ_s`` (and quantiles);
* the mean and standard deviation across sequences of the per-sequence mean;
* the CUSUM threshold ``h_s`` (below).

and, for the energy, the distribution of the per-sequence feature vector
``f = (mean H, std H, drift H)`` (mean vector and covariance).

Scores
------
* per-token z-score: ``z_{s,j} = (s_j - μ_s) / σ_s``.
* per-sequence features: ``mean H`` and ``std H`` (sample std, ddof 1) over the
  finite ``H_j`` of the sequence, and ``drift H``: the least-squares slope of
  ``H_j`` against the token index (nats per token).
* per-sequence anomaly score: the Mahalanobis distance of ``f`` from the
  calibration's feature distribution, ``sqrt((f-m)ᵀ C⁻¹ (f-m))``, in units of
  the calibration's spread; ``p_value`` is the fraction of calibration sequences
  scoring at least as high (``(1 + #{ref >= a}) / (1 + N)``), and the sequence is
  ``flagged`` when ``p_value <= alpha``. It is two-sided: an energy level, a
  fluctuation or a drift that is too low is as anomalous as one too high.
* CUSUM alarm for sustained drift, on ``z_H`` clipped to ``±z_clip``:
  ``S⁺_j = max(0, S⁺_{j-1} + z_j - k)``, ``S⁻_j = max(0, S⁻_{j-1} - z_j - k)``,
  ``C_j = max(S⁺_j, S⁻_j)``, starting at 0 and skipping tokens with NaN ``z``.
  The alarm fires at the first token with ``C_j > h``, where ``h`` is the
  ``1 - alpha`` quantile of ``max_j C_j`` over the calibration sequences: a
  normal text of the calibration length raises a false alarm with probability
  about ``alpha``; longer texts more often.

The anomaly score compares sequence-level features, so it is most meaningful for
texts about as long as the calibration's (``tokens``, default 64); z-scores and
the CUSUM are per token and apply to any length.

Long texts are refused, not windowed: ``K`` and the CUSUM need one continuous
context, and a window boundary would itself look like an anomaly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from ppmech.errors import PPMechError, check_seed
from ppmech.hooks import FINAL_NORM, capture
from ppmech.models import LoadedModel, ModelIdentity, forward_step

F64 = NDArray[np.float64]

SIGNALS = ("H", "K", "V", "entropy", "msp", "neg_lse")
FEATURES = ("mean_H", "std_H", "drift_H")
CALIBRATION_KIND = "ppmech-monitor-calibration"
CALIBRATION_SCHEMA = 1
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
MIN_TOKENS = 4  # ids incl. prefix: 3 scored tokens, 2 of them with H, so std H is defined


# --------------------------------------------------------------------------- pure parts


@dataclass
class TokenTrace:
    """Per-token terms of one teacher-forced or streamed sequence (``n`` scored tokens).

    Attributes:
        token_ids: ``[n]`` int64, the scored tokens ``u_1 … u_{n}`` (or from ``u_0``
            after a special prefix).
        V: ``[n]`` surprisal ``-ln p`` (nats).
        K: ``[n]`` ``ln(½‖Δh‖²)``; NaN for the first scored token, ``-inf`` at zero velocity.
        H: ``[n]`` ``K + V``; NaN for the first scored token.
        entropy: ``[n]`` predictive entropy (nats).
        msp: ``[n]`` maximum softmax probability.
        neg_lse: ``[n]`` ``-logsumexp(logits)`` (Liu et al. 2020's energy score).
    """

    token_ids: NDArray[np.int64]
    V: F64
    K: F64
    H: F64
    entropy: F64
    msp: F64
    neg_lse: F64

    def __len__(self) -> int:
        return len(self.token_ids)

    def signal(self, name: str) -> F64:
        """One of :data:`SIGNALS` as a float64 array."""
        return np.asarray(getattr(self, name), dtype=np.float64)


def distribution_terms(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, F64]:
    """``V``, ``entropy``, ``msp`` and ``neg_lse`` from logits predicting ``targets``.

    Args:
        logits: ``[n, V]`` logits (any float dtype; computed in float32).
        targets: ``[n]`` int64 token ids.

    Returns:
        dict of ``[n]`` float64 arrays.
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    logprobs = z - lse[:, None]
    p = logprobs.exp()
    entropy = -(p * torch.where(p > 0, logprobs, torch.zeros_like(logprobs))).sum(-1)
    v = -logprobs.gather(-1, targets[:, None].to(z.device))[:, 0]
    msp = logprobs.max(-1).values.exp()
    return {
        "V": v.double().cpu().numpy(),
        "entropy": entropy.double().cpu().numpy(),
        "msp": msp.double().cpu().numpy(),
        "neg_lse": (-lse).double().cpu().numpy(),
    }


def log_kinetic_from_states(h_prev: torch.Tensor, h_prev2: torch.Tensor) -> float:
    """``ln(½‖h_prev - h_prev2‖²)`` in float64; ``-inf`` for equal states."""
    sq = float((h_prev.double() - h_prev2.double()).pow(2).sum())
    return math.log(0.5 * sq) if sq > 0 else float("-inf")


def sequence_features(h: F64) -> tuple[float, float, float]:
    """``(mean H, std H, drift H)`` over the finite entries of ``h``.

    ``std`` uses ddof 1; ``drift`` is the least-squares slope of ``H`` against the
    token index (nats per token). Fewer than two finite values give NaN.
    """
    h = np.asarray(h, dtype=np.float64)
    idx = np.arange(len(h), dtype=np.float64)
    ok = np.isfinite(h)
    if ok.sum() < 2:
        return float("nan"), float("nan"), float("nan")
    x, y = idx[ok], h[ok]
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return float(y.mean()), float(y.std(ddof=1)), slope


def cusum_step(state: tuple[float, float], z: float, k: float, clip: float) -> tuple[float, float]:
    """One two-sided CUSUM update; a NaN ``z`` leaves the state unchanged.

    ``S⁺ <- max(0, S⁺ + z - k)``, ``S⁻ <- max(0, S⁻ - z - k)``, with ``z`` clipped to ``±clip``.
    """
    if math.isnan(z):
        return state
    z = min(max(z, -clip), clip)
    return max(0.0, state[0] + z - k), max(0.0, state[1] - z - k)


def cusum_path(z: F64, k: float, clip: float) -> F64:
    """``C_j = max(S⁺_j, S⁻_j)`` along a sequence of z-scores, ``[n]`` float64."""
    state = (0.0, 0.0)
    out = np.zeros(len(z), dtype=np.float64)
    for j, value in enumerate(np.asarray(z, dtype=np.float64)):
        state = cusum_step(state, float(value), k, clip)
        out[j] = max(state)
    return out


def first_alarm(path: F64, threshold: float) -> int | None:
    """Index of the first entry of a CUSUM path above ``threshold``, or ``None``."""
    hits = np.nonzero(np.asarray(path) > threshold)[0]
    return int(hits[0]) if len(hits) else None


def mahalanobis(x: F64, mean: F64, cov_inv: F64) -> float:
    """``sqrt((x - mean)ᵀ cov_inv (x - mean))``; NaN if ``x`` has a non-finite entry."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        return float("nan")
    return float(math.sqrt(max(0.0, float(d @ np.asarray(cov_inv) @ d))))


def tail_p_value(score: float, reference: Sequence[float]) -> float:
    """``(1 + #{ref >= score}) / (1 + N)``: the calibration tail probability of ``score``."""
    if math.isnan(score):
        return float("nan")
    ref = np.asarray(reference, dtype=np.float64)
    return float((1 + np.sum(ref >= score)) / (1 + len(ref)))


def _finite(x: F64) -> F64:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


# --------------------------------------------------------------------------- calibration


@dataclass
class SignalCalibration:
    """What normal looks like for one per-token signal.

    Attributes:
        token_mean, token_std: pooled mean and std (ddof 1) of the finite per-token values.
        quantiles: per-token quantiles, keyed ``"0.05"`` etc.
        seq_mean_mean, seq_mean_std: mean and std (ddof 1) across sequences of the
            per-sequence mean.
        cusum_threshold: ``1 - alpha`` quantile of the per-sequence maximum of the
            CUSUM path of this signal's z-scores.
    """

    token_mean: float
    token_std: float
    quantiles: dict[str, float]
    seq_mean_mean: float
    seq_mean_std: float
    cusum_threshold: float

    def z(self, x: F64) -> F64:
        """Per-token z-scores ``(x - token_mean) / token_std``."""
        with np.errstate(invalid="ignore"):
            return (np.asarray(x, dtype=np.float64) - self.token_mean) / self.token_std

    def seq_z(self, x: F64) -> float:
        """z-score of the sequence mean of the finite values of ``x``."""
        v = _finite(x)
        if not len(v):
            return float("nan")
        return float((v.mean() - self.seq_mean_mean) / self.seq_mean_std)


def calibrate_signal(values: Sequence[F64], k: float, clip: float, alpha: float) -> SignalCalibration:
    """Learn a :class:`SignalCalibration` from one array of per-token values per sequence."""
    pooled = np.concatenate([_finite(v) for v in values])
    if len(pooled) < 2:
        raise PPMechError("calibration has fewer than 2 finite token values", "calibrate on more text")
    mean, std = float(pooled.mean()), float(pooled.std(ddof=1))
    std = std if std > 0 else 1.0
    seq_means = np.array([_finite(v).mean() for v in values if len(_finite(v))])
    seq_std = float(seq_means.std(ddof=1)) if len(seq_means) > 1 else 1.0
    maxima = [
        float(cusum_path((np.asarray(v, dtype=np.float64) - mean) / std, k, clip).max(initial=0.0))
        for v in values
    ]
    return SignalCalibration(
        token_mean=mean,
        token_std=std,
        quantiles={str(q): float(np.quantile(pooled, q)) for q in QUANTILES},
        seq_mean_mean=float(seq_means.mean()),
        seq_mean_std=seq_std if seq_std > 0 else 1.0,
        cusum_threshold=float(np.quantile(maxima, 1 - alpha)),
    )


@dataclass
class MonitorConfig:
    """Configuration of a calibration (the CLI's ``ppmech monitor calibrate`` flags).

    Attributes:
        model, weights, seed, dtype, trust_remote_code: which model (see :func:`ppmech.models.load_model`).
        corpus: normal text: ``wiki-en`` (default) or any :func:`ppmech.corpus.load_documents` source.
        split: ``heldout`` (default: documents never used as prompts elsewhere),
            ``prompts`` or ``all``.
        sequences: number of calibration texts.
        tokens: tokens per calibration text (the first ``tokens`` of each document).
        alpha: false-alarm rate that sets the CUSUM threshold and the ``flagged`` cut-off.
        cusum_k: CUSUM slack, in standard deviations.
        z_clip: |z| is clipped to this before the CUSUM (heavy-tailed surprisal).
        batch_size: texts per forward pass.
    """

    model: str = "smollm2-135m"
    weights: str = "pretrained"
    seed: int = 0
    dtype: str = "float32"
    trust_remote_code: bool = False
    corpus: str = "wiki-en"
    split: str = "heldout"
    sequences: int = 200
    tokens: int = 64
    alpha: float = 0.05
    cusum_k: float = 0.5
    z_clip: float = 5.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.sequences < 3:
            raise PPMechError(f"--sequences must be at least 3 (got {self.sequences})", "use e.g. 200")
        if self.tokens < MIN_TOKENS:
            raise PPMechError(f"--tokens must be at least {MIN_TOKENS} (got {self.tokens})", "use e.g. 64")
        if not 0 < self.alpha < 1:
            raise PPMechError(f"--alpha must be in (0, 1) (got {self.alpha})", "use e.g. 0.05")
        if self.cusum_k < 0 or self.z_clip <= 0:
            raise PPMechError("--cusum-k must be >= 0 and --z-clip > 0", "use e.g. 0.5 and 5")
        if self.batch_size < 1:
            raise PPMechError(f"--batch-size must be >= 1 (got {self.batch_size})", "use e.g. 16")
        if self.split not in ("heldout", "prompts", "all"):
            raise PPMechError(f"unknown split '{self.split}'", "use heldout, prompts or all")


def _calibration_problem(
    signals: dict[str, SignalCalibration], cov: list[list[float]], config: dict[str, Any]
) -> str | None:
    """What makes a calibration unusable, naming the field; ``None`` when it is usable.

    Spreads scale every z-score: one that is zero, negative or NaN raises alarms on
    normal text or silences the monitor. The feature covariance is inverted for the
    anomaly score: it must be symmetric and positive semi-definite, and every feature
    must vary (an all-zero covariance makes every text an outlier).
    """
    for name, sig in signals.items():
        for field_name in ("token_std", "seq_mean_std"):
            value = getattr(sig, field_name)
            if not (math.isfinite(value) and value > 0):
                return f"signals.{name}.{field_name} is {value}: spreads must be finite and positive"
        values = [sig.token_mean, sig.seq_mean_mean, sig.cusum_threshold, *sig.quantiles.values()]
        if not all(math.isfinite(v) for v in values):
            return f"signals.{name} has a non-finite mean, quantile or threshold"
        if sig.cusum_threshold < 0:
            return f"signals.{name}.cusum_threshold is {sig.cusum_threshold}: it must be >= 0"
    alpha, k, clip = (float(config[key]) for key in ("alpha", "cusum_k", "z_clip"))
    if not (0 < alpha < 1 and k >= 0 and clip > 0):
        return (
            f"config alpha={alpha}, cusum_k={k}, z_clip={clip}: need 0 < alpha < 1, cusum_k >= 0, z_clip > 0"
        )
    matrix = np.asarray(cov, dtype=np.float64)
    scale = float(np.abs(matrix).max())
    if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-12 * max(scale, 1e-300)):
        return "feature_cov is not symmetric"
    diagonal = np.diag(matrix)
    if not (diagonal > 0).all():
        bad = [FEATURES[i] for i in np.flatnonzero(~(diagonal > 0))]
        return f"feature_cov has no positive variance for {', '.join(bad)}"
    if float(np.linalg.eigvalsh(matrix).min()) < -1e-9 * float(diagonal.max()):
        return "feature_cov is not positive semi-definite"
    return None


@dataclass
class Calibration:
    """A model's normal operation, as saved in a calibration JSON file.

    Attributes:
        model: the :class:`~ppmech.models.ModelIdentity` as a dict (``key`` added).
        config: the :class:`MonitorConfig` it was made with.
        signals: a :class:`SignalCalibration` per name in :data:`SIGNALS`.
        feature_mean: ``[3]`` mean of ``(mean H, std H, drift H)`` over calibration sequences.
        feature_cov: ``[3, 3]`` their covariance (ddof 1).
        anomaly_reference: the calibration sequences' own anomaly scores, sorted.
        n_sequences: calibration sequences used.
        versions: software versions.
        created: UTC time stamp.
    """

    model: dict[str, Any]
    config: dict[str, Any]
    signals: dict[str, SignalCalibration]
    feature_mean: list[float]
    feature_cov: list[list[float]]
    anomaly_reference: list[float]
    n_sequences: int
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def alpha(self) -> float:
        return float(self.config["alpha"])

    @property
    def cusum_k(self) -> float:
        return float(self.config["cusum_k"])

    @property
    def z_clip(self) -> float:
        return float(self.config["z_clip"])

    @property
    def cov_inv(self) -> F64:
        cov = np.asarray(self.feature_cov, dtype=np.float64)
        # A tiny ridge keeps a near-singular covariance (e.g. drift ~ constant) invertible.
        return np.asarray(np.linalg.pinv(cov + 1e-9 * np.eye(len(cov)) * max(np.trace(cov), 1e-12)))

    def anomaly(self, h: F64) -> float:
        """The Mahalanobis anomaly score of a sequence's ``H`` values."""
        return mahalanobis(np.array(sequence_features(h)), np.asarray(self.feature_mean), self.cov_inv)

    def check_model(self, identity: ModelIdentity, source: str = "the calibration") -> None:
        """Refuse a calibration made for another model or tokenizer."""
        mine = self.model
        if mine.get("key") != identity.key:
            raise PPMechError(
                f"{source} was made for model '{mine.get('spec')}' ({mine.get('weights')}, key "
                f"{mine.get('key')}), not '{identity.spec}' ({identity.weights}, key {identity.key})",
                f"calibrate for this model: `ppmech monitor calibrate --model {identity.spec} "
                "--out cal.json`",
            )
        if mine.get("tokenizer_hash") != identity.tokenizer_hash:
            raise PPMechError(
                f"{source} was made with a different tokenizer than model '{identity.spec}' uses",
                f"calibrate again: `ppmech monitor calibrate --model {identity.spec} --out cal.json`",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": CALIBRATION_KIND,
            "schema_version": CALIBRATION_SCHEMA,
            "model": self.model,
            "config": self.config,
            "signals": {name: asdict(s) for name, s in self.signals.items()},
            "feature_names": list(FEATURES),
            "feature_mean": self.feature_mean,
            "feature_cov": self.feature_cov,
            "anomaly_reference": self.anomaly_reference,
            "n_sequences": self.n_sequences,
            "versions": self.versions,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> Calibration:
        """Parse and validate; any structural problem is a :class:`PPMechError`."""

        def corrupt(what: str) -> PPMechError:
            return PPMechError(
                f"{source} is not a valid ppmech monitor calibration ({what})",
                "make a new one with `ppmech monitor calibrate --model <model> --out cal.json`",
            )

        if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
            raise corrupt("missing kind marker")
        if data.get("schema_version") != CALIBRATION_SCHEMA:
            raise corrupt(f"schema version {data.get('schema_version')}, expected {CALIBRATION_SCHEMA}")
        try:
            signals = {}
            for name in SIGNALS:
                raw = data["signals"][name]
                names = {f.name for f in fields(SignalCalibration)}
                if set(raw) != names:
                    raise corrupt(f"signal {name} has fields {sorted(raw)}")
                signals[name] = SignalCalibration(
                    token_mean=float(raw["token_mean"]),
                    token_std=float(raw["token_std"]),
                    quantiles={str(k): float(v) for k, v in raw["quantiles"].items()},
                    seq_mean_mean=float(raw["seq_mean_mean"]),
                    seq_mean_std=float(raw["seq_mean_std"]),
                    cusum_threshold=float(raw["cusum_threshold"]),
                )
            mean = [float(x) for x in data["feature_mean"]]
            cov = [[float(x) for x in row] for row in data["feature_cov"]]
            ref = sorted(float(x) for x in data["anomaly_reference"])
            model = dict(data["model"])
            config = dict(data["config"])
            for key in ("alpha", "cusum_k", "z_clip"):
                float(config[key])
            for key in ("key", "tokenizer_hash", "spec"):
                str(model[key])
            n = int(data["n_sequences"])
        except PPMechError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise corrupt(f"{type(exc).__name__}: {exc}") from exc
        if (
            len(mean) != len(FEATURES)
            or len(cov) != len(FEATURES)
            or any(len(r) != len(FEATURES) for r in cov)
        ):
            raise corrupt("feature statistics have the wrong shape")
        if not ref or not all(math.isfinite(x) for x in [*mean, *ref, *(v for r in cov for v in r)]):
            raise corrupt("non-finite or empty feature statistics")
        problem = _calibration_problem(signals, cov, config)
        if problem:
            raise corrupt(problem)
        return cls(
            model=model,
            config=config,
            signals=signals,
            feature_mean=mean,
            feature_cov=cov,
            anomaly_reference=ref,
            n_sequences=n,
            versions=dict(data.get("versions", {})),
            created=str(data.get("created", "")),
        )

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON, atomically."""
        from ppmech.runs import write_json

        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration JSON file; a missing, unreadable or corrupt file is a :class:`PPMechError`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PPMechError(
                f"calibration file {path} not found",
                "make one with `ppmech monitor calibrate --model <model> --out cal.json`",
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise PPMechError(f"cannot read calibration file {path}: {exc}", "check the path") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PPMechError(
                f"calibration file {path} is corrupt (invalid JSON: {exc.msg} at line {exc.lineno})",
                "make a new one with `ppmech monitor calibrate --model <model> --out cal.json`",
            ) from exc
        return cls.from_dict(data, source=f"calibration file {path}")


def fit_calibration(
    traces: Sequence[TokenTrace],
    identity: ModelIdentity,
    config: MonitorConfig,
    versions: dict[str, str] | None = None,
) -> Calibration:
    """Learn a :class:`Calibration` from teacher-forced traces of normal text (pure statistics)."""
    if len(traces) < 3:
        raise PPMechError(f"calibration needs at least 3 sequences (got {len(traces)})", "use more text")
    signals = {
        name: calibrate_signal([t.signal(name) for t in traces], config.cusum_k, config.z_clip, config.alpha)
        for name in SIGNALS
    }
    feats = np.array([sequence_features(t.H) for t in traces], dtype=np.float64)
    feats = feats[np.all(np.isfinite(feats), axis=1)]
    if len(feats) < 3:
        raise PPMechError("fewer than 3 calibration sequences have a finite energy", "use longer texts")
    mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False, ddof=1)
    model = identity.to_dict() | {"key": identity.key}
    cal = Calibration(
        model=model,
        config=asdict(config),
        signals=signals,
        feature_mean=[float(x) for x in mean],
        feature_cov=[[float(x) for x in row] for row in cov],
        anomaly_reference=[0.0],
        n_sequences=len(traces),
        versions=dict(versions or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    ref = [cal.anomaly(t.H) for t in traces]
    cal.anomaly_reference = sorted(float(x) for x in ref if math.isfinite(x))
    return cal


# --------------------------------------------------------------------------- scores


@dataclass
class SequenceScore:
    """Per-sequence scores of one text.

    Attributes:
        n_tokens: scored tokens.
        n_energy: tokens with a finite ``H``.
        mean_H, std_H, drift_H: the features (nats; nats per token for drift).
        mean_K, mean_V: sequence means of ``K`` and ``V`` (nats).
        z_mean_H: z-score of ``mean_H`` against the calibration's sequence means.
        anomaly: Mahalanobis distance of the features from the calibration.
        p_value: calibration tail probability of ``anomaly``.
        flagged: ``p_value <= alpha``.
        cusum_max: the largest CUSUM statistic reached on ``z_H``.
        alarm_at: index (into the scored tokens) of the first CUSUM alarm, or ``None``.
    """

    n_tokens: int
    n_energy: int
    mean_H: float
    std_H: float
    drift_H: float
    mean_K: float
    mean_V: float
    z_mean_H: float
    anomaly: float
    p_value: float
    flagged: bool
    cusum_max: float
    alarm_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MonitorScore:
    """A scored text: per-sequence scores and a per-token frame.

    ``tokens`` columns: ``index`` (into the scored tokens), ``token_id``, ``token``,
    ``V``, ``K``, ``H``, ``z_V``, ``z_K``, ``z_H``, ``cusum`` (the CUSUM statistic on
    ``z_H`` after this token), ``alarm`` (``cusum`` above the threshold), and the
    baseline signals ``entropy``, ``msp``, ``neg_lse``.
    """

    sequence: SequenceScore
    tokens: pd.DataFrame
    trace: TokenTrace


def score_trace(
    trace: TokenTrace, cal: Calibration, token_strings: Sequence[str] | None = None
) -> MonitorScore:
    """Score a trace against a calibration (pure; shared by teacher forcing and streaming)."""
    sig = cal.signals
    z = {name: sig[name].z(trace.signal(name)) for name in ("H", "K", "V")}
    path = cusum_path(z["H"], cal.cusum_k, cal.z_clip)
    threshold = sig["H"].cusum_threshold
    mean_h, std_h, drift = sequence_features(trace.H)
    anomaly = cal.anomaly(trace.H)
    p = tail_p_value(anomaly, cal.anomaly_reference)
    h_finite = _finite(trace.H)
    k_finite = _finite(trace.K)
    seq = SequenceScore(
        n_tokens=len(trace),
        n_energy=len(h_finite),
        mean_H=mean_h,
        std_H=std_h,
        drift_H=drift,
        mean_K=float(k_finite.mean()) if len(k_finite) else float("nan"),
        mean_V=float(np.mean(trace.V)),
        z_mean_H=sig["H"].seq_z(trace.H),
        anomaly=anomaly,
        p_value=p,
        flagged=bool(p <= cal.alpha),
        cusum_max=float(path.max(initial=0.0)),
        alarm_at=first_alarm(path, threshold),
    )
    frame = pd.DataFrame(
        {
            "index": np.arange(len(trace)),
            "token_id": trace.token_ids,
            "token": list(token_strings) if token_strings is not None else [""] * len(trace),
            "V": trace.V,
            "K": trace.K,
            "H": trace.H,
            "z_V": z["V"],
            "z_K": z["K"],
            "z_H": z["H"],
            "cusum": path,
            "alarm": path > threshold,
            "entropy": trace.entropy,
            "msp": trace.msp,
            "neg_lse": trace.neg_lse,
        }
    )
    return MonitorScore(sequence=seq, tokens=frame, trace=trace)


# --------------------------------------------------------------------------- model side


def text_ids(lm: LoadedModel, text: str) -> list[int]:
    """The ids the monitor scores for ``text``: the special prefix, then the text's tokens.

    Raises:
        PPMechError: an empty text, or one too short or too long for the model.
    """
    from ppmech.corpus import special_prefix

    if not text or not text.strip():
        raise PPMechError("the text is empty", "give the monitor at least a few words")
    ids = special_prefix(lm.tokenizer) + list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    check_ids(lm, ids)
    return ids


def check_ids(lm: LoadedModel, ids: Sequence[int]) -> None:
    """Refuse sequences the monitor cannot score (too short, or longer than the context)."""
    if len(ids) < MIN_TOKENS:
        raise PPMechError(
            f"the text has only {len(ids)} tokens (special prefix included); the monitor needs "
            f"at least {MIN_TOKENS}",
            "give it a longer text",
        )
    if len(ids) > lm.max_context:
        raise PPMechError(
            f"the text has {len(ids)} tokens, more than the model's {lm.max_context}-token context "
            "(the monitor does not window: K and the CUSUM need one continuous context)",
            f"split the text into pieces of at most {lm.max_context} tokens and score each",
        )


@torch.no_grad()
def trace_batch(lm: LoadedModel, sequences: Sequence[Sequence[int]]) -> list[TokenTrace]:
    """Teacher-force a batch of id sequences (left-padded, one forward pass) into traces."""
    from ppmech.architectures import readout
    from ppmech.recording import left_pad

    for ids in sequences:
        check_ids(lm, ids)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids_t, mask, positions = (t.to(lm.device) for t in left_pad([list(s) for s in sequences], int(pad or 0)))
    read = readout(lm.model)
    with capture(lm.model, [FINAL_NORM]) as store:
        forward_step(lm.model, ids_t, mask, positions, None, logits_to_keep=1)
        states = store[FINAL_NORM][0]
    width = ids_t.shape[1]
    out = []
    for row, seq in enumerate(sequences):
        n = len(seq)
        h = states[row, width - n :]  # [n, d], position i predicts u_{i+1}
        targets = torch.tensor(list(seq[1:]), dtype=torch.long, device=h.device)
        terms = distribution_terms(read.logits(h[:-1]), targets)
        hd = h[:-1].double()
        k = np.full(n - 1, np.nan)
        sq = (hd[1:] - hd[:-1]).pow(2).sum(-1).cpu().numpy()
        with np.errstate(divide="ignore"):
            k[1:] = np.log(0.5 * sq)
        out.append(
            TokenTrace(
                token_ids=np.asarray(seq[1:], dtype=np.int64),
                V=terms["V"],
                K=k,
                H=k + terms["V"],
                entropy=terms["entropy"],
                msp=terms["msp"],
                neg_lse=terms["neg_lse"],
            )
        )
    return out


def trace_many(
    lm: LoadedModel, sequences: Sequence[Sequence[int]], batch_size: int = 16, progress: str | None = None
) -> list[TokenTrace]:
    """:func:`trace_batch` over many sequences; ``progress`` names a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    batches = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
    out: list[TokenTrace] = []
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch", leave=False):
        out.extend(trace_batch(lm, batch))
        _release_freed_memory()
    return out


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; a no-op elsewhere).

    The per-row ``[n, V]`` float32 temporaries are freed after each batch, but
    glibc keeps them in its heap: measured on smollm2, resident memory grew by
    ~350 MB per 16-text batch (3.6 GB after 6 batches) without this, and stayed
    at 1.0 GB with it.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        pass


@dataclass
class TokenScore:
    """The monitor's verdict on one streamed token (see :class:`MonitorScore` for the terms)."""

    index: int
    token_id: int
    V: float
    K: float
    H: float
    z_V: float
    z_K: float
    z_H: float
    cusum: float
    alarm: bool
    entropy: float
    msp: float
    neg_lse: float


class MonitorStream:
    """Score a generation in progress, one token at a time, with the KV cache.

    Feed every token of the sequence in order (:meth:`step` or :meth:`feed`);
    the model's default special prefix is fed on creation. After each call,
    :attr:`next_logits` holds the model's logits for the next token, so a
    generation loop can choose it from there without a second forward pass.
    The scores equal :meth:`EnergyMonitor.score` on the same ids.
    """

    def __init__(self, monitor: EnergyMonitor) -> None:
        from ppmech.corpus import special_prefix

        self.monitor = monitor
        self.lm = monitor.lm
        self._cache: Any = None
        self.ids: list[int] = []
        self.next_logits: torch.Tensor | None = None
        self._h_last: torch.Tensor | None = None  # h at the last fed position
        self._h_before: torch.Tensor | None = None  # h one position earlier
        self._cusum = (0.0, 0.0)
        self._rows: list[TokenScore] = []
        prefix = special_prefix(self.lm.tokenizer)
        if prefix:
            self.feed(prefix)

    @property
    def scores(self) -> list[TokenScore]:
        """Every token scored so far."""
        return list(self._rows)

    def step(self, token_id: int) -> TokenScore | None:
        """Feed one token; return its score (``None`` for a first token nothing predicts)."""
        out = self.feed([int(token_id)])
        return out[0] if out else None

    @torch.no_grad()
    def feed(self, token_ids: Sequence[int]) -> list[TokenScore]:
        """Feed several tokens in one cached forward pass; return the scores of those scored."""
        ids = [int(t) for t in token_ids]
        if not ids:
            return []
        if len(self.ids) + len(ids) > self.lm.max_context:
            raise PPMechError(
                f"the stream would reach {len(self.ids) + len(ids)} tokens, more than the model's "
                f"{self.lm.max_context}-token context",
                "start a new stream (the monitor does not window)",
            )
        device = self.lm.device
        past = len(self.ids)
        inp = torch.tensor([ids], dtype=torch.long, device=device)
        mask = torch.ones((1, past + len(ids)), dtype=torch.long, device=device)
        pos = torch.arange(past, past + len(ids), device=device)[None, :]
        with capture(self.lm.model, [FINAL_NORM]) as store:
            # The model's own logits at every fed position: no second unembedding pass.
            out_logits, self._cache = forward_step(
                self.lm.model, inp, mask, pos, self._cache, logits_to_keep=len(ids)
            )
            states = store[FINAL_NORM][0][0]  # [len, d]
        logits = out_logits[0].float()
        cal = self.monitor.calibration
        sig = cal.signals
        threshold = sig["H"].cusum_threshold
        out = []
        for i, tok in enumerate(ids):
            if self.next_logits is not None and self._h_last is not None:
                terms = distribution_terms(self.next_logits[None, :], torch.tensor([tok]))
                v = float(terms["V"][0])
                k = (
                    log_kinetic_from_states(self._h_last, self._h_before)
                    if self._h_before is not None
                    else float("nan")
                )
                h = k + v
                zh = float(sig["H"].z(np.array([h]))[0])
                self._cusum = cusum_step(self._cusum, zh, cal.cusum_k, cal.z_clip)
                c = max(self._cusum)
                row = TokenScore(
                    index=len(self._rows),
                    token_id=tok,
                    V=v,
                    K=k,
                    H=h,
                    z_V=float(sig["V"].z(np.array([v]))[0]),
                    z_K=float(sig["K"].z(np.array([k]))[0]),
                    z_H=zh,
                    cusum=c,
                    alarm=c > threshold,
                    entropy=float(terms["entropy"][0]),
                    msp=float(terms["msp"][0]),
                    neg_lse=float(terms["neg_lse"][0]),
                )
                self._rows.append(row)
                out.append(row)
            self.next_logits = logits[i]
            self._h_before, self._h_last = self._h_last, states[i]
            self.ids.append(tok)
        return out

    def trace(self) -> TokenTrace:
        """The streamed tokens as a :class:`TokenTrace`."""
        rows = self._rows

        def col(name: str) -> F64:
            return np.array([getattr(r, name) for r in rows], dtype=np.float64)

        return TokenTrace(
            token_ids=np.array([r.token_id for r in rows], dtype=np.int64),
            V=col("V"),
            K=col("K"),
            H=col("H"),
            entropy=col("entropy"),
            msp=col("msp"),
            neg_lse=col("neg_lse"),
        )

    def result(self) -> MonitorScore:
        """The full score of the sequence so far (same as teacher-forced scoring of ``ids``)."""
        if len(self._rows) < MIN_TOKENS - 1:
            raise PPMechError(
                f"only {len(self._rows)} tokens were scored; a sequence score needs {MIN_TOKENS - 1}",
                "feed more tokens",
            )
        trace = self.trace()
        return score_trace(trace, self.monitor.calibration, self.monitor.token_strings(trace.token_ids))


class EnergyMonitor:
    """A calibrated energy monitor for one model.

    Build one with :meth:`calibrate` (learns normal operation) or :meth:`load`
    (reads a calibration JSON and checks that it belongs to ``lm``).
    """

    def __init__(self, lm: LoadedModel, calibration: Calibration) -> None:
        calibration.check_model(lm.identity)
        self.lm = lm
        self.calibration = calibration

    @classmethod
    def calibrate(
        cls,
        lm: LoadedModel,
        config: MonitorConfig | None = None,
        sequences: Sequence[Sequence[int]] | None = None,
        progress: bool = False,
    ) -> EnergyMonitor:
        """Learn the model's normal energy distribution.

        Args:
            lm: the loaded model (must match ``config.model`` only in spirit; the
                identity recorded is ``lm``'s).
            config: sizes and thresholds; the default calibrates on 200 held-out
                English Wikipedia texts of 64 tokens.
            sequences: calibrate on these id sequences instead of the corpus.
            progress: show a tqdm bar on stderr.
        """
        from ppmech.measure import versions

        config = config or MonitorConfig(model=lm.identity.spec)
        if sequences is None:
            sequences = calibration_sequences(lm, config)
        traces = trace_many(lm, sequences, config.batch_size, "calibrating" if progress else None)
        return cls(lm, fit_calibration(traces, lm.identity, config, versions()))

    @classmethod
    def load(cls, lm: LoadedModel, path: str | Path) -> EnergyMonitor:
        """Read a calibration file; refuse it if it was made for another model or tokenizer."""
        cal = Calibration.load(path)
        cal.check_model(lm.identity, source=f"calibration file {path}")
        return cls(lm, cal)

    def save(self, path: str | Path) -> Path:
        """Write the calibration JSON atomically."""
        return self.calibration.save(path)

    def token_strings(self, token_ids: Sequence[int] | NDArray[np.int64]) -> list[str]:
        """Readable token strings (decoded one by one)."""
        return [self.lm.tokenizer.decode([int(t)]) for t in token_ids]

    def score_ids(self, ids: Sequence[int]) -> MonitorScore:
        """Teacher-forced scores of an id sequence (special prefix included if wanted)."""
        trace = trace_batch(self.lm, [list(ids)])[0]
        return score_trace(trace, self.calibration, self.token_strings(trace.token_ids))

    def score(self, text: str) -> MonitorScore:
        """Teacher-forced scores of a text (the model's special prefix is prepended).

        Raises:
            PPMechError: an empty text, or one longer than the model's context (refused, not windowed).
        """
        return self.score_ids(text_ids(self.lm, text))

    def score_many(self, texts: Sequence[str], batch_size: int = 16) -> list[MonitorScore]:
        """Teacher-forced scores of several texts, batched."""
        seqs = [text_ids(self.lm, t) for t in texts]
        traces = trace_many(self.lm, seqs, batch_size)
        return [score_trace(t, self.calibration, self.token_strings(t.token_ids)) for t in traces]

    def stream(self) -> MonitorStream:
        """A new :class:`MonitorStream` (the special prefix already fed)."""
        return MonitorStream(self)

    def generate(self, prompt: Sequence[int], new_tokens: int) -> Iterator[tuple[int, TokenScore]]:
        """Greedy generation from ``prompt`` ids, yielding ``(token_id, score)`` per new token.

        The prompt should include any special prefix the model needs; it is fed
        in one cached forward pass and scored too (those scores stay in the stream).
        """
        from ppmech.corpus import special_prefix

        stream = self.stream()
        prefix = special_prefix(self.lm.tokenizer)
        ids = list(prompt)
        rest = ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids
        if not rest:
            raise PPMechError("the prompt is empty", "give at least one token")
        stream.feed(rest)
        for _ in range(new_tokens):
            assert stream.next_logits is not None
            token = int(stream.next_logits.argmax())
            score = stream.step(token)
            assert score is not None
            yield token, score


def calibration_sequences(lm: LoadedModel, config: MonitorConfig, offset: int = 0) -> list[list[int]]:
    """The normal texts a calibration uses: ``config.sequences`` prompts of ``config.tokens``
    tokens from ``config.corpus`` (``config.split`` side), chosen with ``config.seed``.

    ``offset`` skips that many qualifying documents first (the benchmark takes its
    held-out *test* texts after the calibration's).
    """
    from ppmech.corpus import load_documents, select_prompts

    docs = load_documents(config.corpus)
    split = None if config.split == "all" else config.split
    prompts = select_prompts(
        docs,
        lm.tokenizer,
        offset + config.sequences,
        context_tokens=config.tokens,
        seed=config.seed,
        split=split,
    )
    return [p.ids for p in prompts[offset:]]
