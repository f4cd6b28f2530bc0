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

from ppmech.errors import PPMechError
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
    cusum_path,
    first_alarm,
    mahalanobis,
    sequence_features,
    tail_p_value,
)

CALIBRATION_KIND = "ppmech-monitor-calibration"
CALIBRATION_SCHEMA = 1


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
        if self.sequences < 3:
            raise PPMechError(f"`sequences` must be at least 3 (got {self.sequences})", "use e.g. 200")
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


@dataclass
class Calibration:
    """A model's normal operation, as saved in a calibration JSON file.

    Attributes:
        model: the :class:`~ppmech.models.identity.ModelIdentity` as a dict (``key`` added).
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
