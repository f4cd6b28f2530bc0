"""A model's calibration (what normal looks like), its JSON file, and scoring a trace against it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppmech.errors import PPMechError, check_seed
from ppmech.models.identity import ModelIdentity
from ppmech.monitor.scoring import (
    F64,
    FEATURES,
    MIN_TOKENS,
    SIGNALS,
    SignalCalibration,
    TokenTrace,
    _finite,
    calibrate_signal,
    conformal_threshold,
    cusum_path,
    first_alarm,
    mahalanobis,
    sequence_features,
    tail_p_value,
)

CALIBRATION_KIND = "ppmech-monitor-calibration"
CALIBRATION_SCHEMA = 2  # 2: split-conformal thresholds (fit and held-out texts)


@dataclass
class MonitorConfig:
    """Configuration of a calibration (the CLI's ``ppmech monitor calibrate`` flags).

    Attributes:
        model, weights, seed, dtype, trust_remote_code: which model
            (see :func:`ppmech.models.loading.load_model`).
        corpus: normal text: ``wiki-en`` (default) or any :func:`ppmech.corpus.load_documents` source.
        split: ``heldout`` (default: documents never used as prompts elsewhere),
            ``prompts`` or ``all``.
        sequences: number of calibration texts.
        tokens: tokens per calibration text (the first ``tokens`` of each document).
        alpha: false-alarm rate that sets the CUSUM threshold and the ``flagged`` cut-off.
        holdout_fraction: share of the calibration texts held out to set the
            thresholds (split conformal); the rest fit the moments.
        cusum_k: CUSUM slack, in standard deviations.
        z_clip: |z| is clipped to this before the CUSUM (heavy-tailed surprisal).
        batch_size: texts per forward pass.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
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
    holdout_fraction: float = 0.5
    cusum_k: float = 0.5
    z_clip: float = 5.0
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.sequences < 4:
            raise PPMechError(
                f"`sequences` must be at least 4 (got {self.sequences}): 3 to fit, 1 held out", "use e.g. 200"
            )
        if not 0 < self.holdout_fraction < 1:
            raise PPMechError(
                f"`holdout_fraction` must be in (0, 1) (got {self.holdout_fraction})", "use e.g. 0.5"
            )
        if self.tokens < MIN_TOKENS:
            raise PPMechError(f"`tokens` must be at least {MIN_TOKENS} (got {self.tokens})", "use e.g. 64")
        if not 0 < self.alpha < 1:
            raise PPMechError(f"`alpha` must be in (0, 1) (got {self.alpha})", "use e.g. 0.05")
        if self.cusum_k < 0 or self.z_clip <= 0:
            raise PPMechError("`cusum_k` must be >= 0 and `z_clip` > 0", "use e.g. 0.5 and 5")
        if self.batch_size < 1:
            raise PPMechError(f"`batch_size` must be >= 1 (got {self.batch_size})", "use e.g. 16")
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
        values = [sig.token_mean, sig.seq_mean_mean, *sig.quantiles.values()]
        if not all(math.isfinite(v) for v in values):
            return f"signals.{name} has a non-finite mean or quantile"
        # +inf (stored as null) is legitimate: too few held-out texts switch that alarm off.
        if math.isnan(sig.cusum_threshold) or sig.cusum_threshold < 0:
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
        model: the :class:`~ppmech.models.identity.ModelIdentity` as a dict (``key`` added).
        config: the :class:`MonitorConfig` it was made with.
        signals: a :class:`SignalCalibration` per name in :data:`SIGNALS`.
        feature_mean: ``[3]`` mean of ``(mean H, std H, drift H)`` over calibration sequences.
        feature_cov: ``[3, 3]`` their covariance (ddof 1).
        anomaly_reference: the held-out sequences' anomaly scores, sorted (the
            reference of the conformal p-value).
        anomaly_threshold: conformal threshold on the anomaly score (``+inf``: too
            few held-out texts for ``alpha``; never flags).
        n_sequences: calibration sequences used (fit + held out).
        n_fit, n_holdout: how many fit the moments and how many set the thresholds.
        versions: software versions.
        created: UTC time stamp.
    """

    model: dict[str, Any]
    config: dict[str, Any]
    signals: dict[str, SignalCalibration]
    feature_mean: list[float]
    feature_cov: list[list[float]]
    anomaly_reference: list[float]
    anomaly_threshold: float
    n_sequences: int
    n_fit: int
    n_holdout: int
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
            "signals": {name: _inf_as_null(asdict(s)) for name, s in self.signals.items()},
            "feature_names": list(FEATURES),
            "feature_mean": self.feature_mean,
            "feature_cov": self.feature_cov,
            "anomaly_reference": self.anomaly_reference,
            "anomaly_threshold": _inf_as_null(self.anomaly_threshold),
            "n_sequences": self.n_sequences,
            "n_fit": self.n_fit,
            "n_holdout": self.n_holdout,
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
                    cusum_threshold=_null_as_inf(raw["cusum_threshold"]),
                )
            mean = [float(x) for x in data["feature_mean"]]
            cov = [[float(x) for x in row] for row in data["feature_cov"]]
            ref = sorted(float(x) for x in data["anomaly_reference"])
            threshold = _null_as_inf(data["anomaly_threshold"])
            n_fit, n_holdout = int(data["n_fit"]), int(data["n_holdout"])
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
        if math.isnan(threshold) or n_fit + n_holdout != n:
            raise corrupt("thresholds or split sizes do not add up")
        return cls(
            model=model,
            config=config,
            signals=signals,
            feature_mean=mean,
            feature_cov=cov,
            anomaly_reference=ref,
            anomaly_threshold=threshold,
            n_sequences=n,
            n_fit=n_fit,
            n_holdout=n_holdout,
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


def calibration_split(n: int, holdout_fraction: float) -> int:
    """How many of ``n`` calibration texts fit the moments (the rest are held out).

    At least 1 is held out and at least 3 fit (a 3-feature covariance needs them).

    Raises:
        PPMechError: ``n < 4``.
    """
    if n < 4:
        raise PPMechError(
            f"calibration needs at least 4 sequences (got {n}): 3 to fit, 1 held out", "use more text"
        )
    n_hold = min(max(1, round(n * holdout_fraction)), n - 3)
    return n - n_hold


def fit_calibration(
    traces: Sequence[TokenTrace],
    identity: ModelIdentity,
    config: MonitorConfig,
    versions: dict[str, str] | None = None,
    in_sample: bool = False,
) -> Calibration:
    """Learn a :class:`Calibration` from teacher-forced traces of normal text (pure statistics).

    The first :func:`calibration_split` traces fit the moments; the rest, scored
    against that fit, set the thresholds (split conformal).

    Args:
        in_sample: fit *and* threshold on all traces, the pre-conformal method
            (its alarm rate on fresh text exceeds ``alpha``); for comparison only.
    """
    n_fit = len(traces) if in_sample else calibration_split(len(traces), config.holdout_fraction)
    if n_fit < 3:
        raise PPMechError(f"calibration needs at least 3 sequences (got {len(traces)})", "use more text")
    fit, held = list(traces[:n_fit]), list(traces if in_sample else traces[n_fit:])
    signals = {
        name: calibrate_signal(
            [t.signal(name) for t in fit],
            config.cusum_k,
            config.z_clip,
            config.alpha,
            held_out=[t.signal(name) for t in held],
        )
        for name in SIGNALS
    }
    feats = np.array([sequence_features(t.H) for t in fit], dtype=np.float64)
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
        anomaly_threshold=float("inf"),
        n_sequences=len(traces),
        n_fit=n_fit,
        n_holdout=0 if in_sample else len(traces) - n_fit,
        versions=dict(versions or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    ref = sorted(float(x) for x in (cal.anomaly(t.H) for t in held) if math.isfinite(x))
    if not ref:
        raise PPMechError("no held-out calibration sequence has a finite energy", "use longer texts")
    cal.anomaly_reference = ref
    cal.anomaly_threshold = conformal_threshold(ref, config.alpha)
    return cal


def _inf_as_null(obj: Any) -> Any:
    """JSON has no infinity: an infinite threshold (alarm off) is stored as ``null``."""
    if isinstance(obj, dict):
        return {k: _inf_as_null(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isinf(obj) else obj


def _null_as_inf(value: Any) -> float:
    return float("inf") if value is None else float(value)


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
        p_value: conformal p-value of ``anomaly`` (tail probability among the held-out texts).
        flagged: ``anomaly`` above the calibration's conformal threshold (``p_value <= alpha``).
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
        flagged=bool(anomaly > cal.anomaly_threshold),
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
