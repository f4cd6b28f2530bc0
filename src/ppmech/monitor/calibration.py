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
    mahalanobis,
    sequence_features,
)
from ppmech.monitor.windows import POSITIONS, NormalText
from ppmech.settings import ModelSpec, Role, setting

CALIBRATION_KIND = "ppmech-monitor-calibration"
CALIBRATION_SCHEMA = (
    3  # 2: split-conformal thresholds; 3: windows from anywhere, their record, combined alarm
)


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's own settings, shared by a calibration and the benchmark (one declaration each).

    Attributes:
        seed: seed of the text choice (and of a random-weight model's init).
        tokens: tokens per normal text (after the special prefix).
        positions: where in the documents the calibration windows start
            (:mod:`ppmech.monitor.windows`): ``anywhere`` (default: openings and sentence starts
            later on), ``openings`` or ``later``.
        alpha: false-alarm rate of every alarm (the anomaly flag, the CUSUM, and their combination).
        holdout_fraction: share of the calibration texts held out to set the thresholds
            (split conformal); the rest fit the moments.
        cusum_k: CUSUM slack, in standard deviations.
        z_clip: |z| is clipped to this before the CUSUM (heavy-tailed surprisal).
        batch_size: texts per forward pass, or ``auto``: as ``measure``'s
            (:mod:`ppmech.engine.batching`: 50 on the CPU, larger on an accelerator, halved on
            out-of-memory).
    """

    seed: int = setting(0, role=Role.PROTOCOL, help="seed (0 to 2**32-1) of the text choice and random init")
    tokens: int = setting(64, role=Role.PROTOCOL, help="tokens per normal text")
    positions: str = setting(
        "anywhere",
        role=Role.PROTOCOL,
        help="where calibration windows start: anywhere (openings and later sentence starts), "
        "openings or later",
        choices=POSITIONS,
    )
    alpha: float = setting(0.05, role=Role.PROTOCOL, help="false-alarm rate of the thresholds")
    holdout_fraction: float = setting(
        0.5, role=Role.PROTOCOL, help="share of the calibration texts held out to set the thresholds"
    )
    cusum_k: float = setting(0.5, role=Role.PROTOCOL, help="CUSUM slack (standard deviations)")
    z_clip: float = setting(5.0, role=Role.PROTOCOL, help="clip |z| to this before the CUSUM")
    batch_size: int | str = setting(
        "auto",
        role=Role.EXECUTION,
        help="texts per forward batch, or auto: the largest that fits, halved on out-of-memory (CPU: 50)",
    )

    def __post_init__(self) -> None:
        from ppmech.engine.batching import parse_batch_size

        check_seed(self.seed)
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
        if self.positions not in POSITIONS:
            raise PPMechError(f"unknown positions '{self.positions}'", f"use {', '.join(POSITIONS)}")
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))


@dataclass(frozen=True)
class MonitorConfig(ModelSpec, MonitorSettings):
    """Configuration of a calibration (the CLI's ``ppmech monitor calibrate`` flags).

    Model fields from :class:`~ppmech.settings.ModelSpec`, the monitor's from
    :class:`MonitorSettings`, and where the normal text comes from:

    Attributes:
        corpus: normal text: ``wiki-en`` (default) or any :func:`ppmech.corpus.load_documents` source.
        split: ``heldout`` (default: documents never used as prompts elsewhere), ``prompts`` or ``all``.
        sequences: number of calibration texts.
    """

    corpus: str = setting(
        "wiki-en", role=Role.PROTOCOL, help="normal text: wiki-en, wiki-es, wiki-fr or a path"
    )
    split: str = setting(
        "heldout",
        role=Role.PROTOCOL,
        help="which part of the corpus (heldout: never used as measure/steer prompts)",
        choices=("heldout", "prompts", "all"),
    )
    sequences: int = setting(200, role=Role.PROTOCOL, help="calibration texts")

    def __post_init__(self) -> None:
        ModelSpec.__post_init__(self)
        MonitorSettings.__post_init__(self)
        if self.sequences < 4:
            raise PPMechError(
                f"`sequences` must be at least 4 (got {self.sequences}): 3 to fit, 1 held out", "use e.g. 200"
            )
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
        combined_anomaly_threshold, combined_cusum_threshold: the thresholds of the combined
            alarm (anomaly *or* CUSUM on ``z_H``, what a user watching the console sees), set
            together so that the combination alarms on at most ``alpha`` of normal texts
            (:func:`combined_thresholds`); higher than the separate ones.
        normal_text: what the normal texts were (:class:`~ppmech.monitor.windows.NormalText`),
            ``None`` when the calibration was given id sequences rather than a corpus.
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
    combined_anomaly_threshold: float = float("inf")
    combined_cusum_threshold: float = float("inf")
    normal_text: NormalText | None = None
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
            "combined_anomaly_threshold": _inf_as_null(self.combined_anomaly_threshold),
            "combined_cusum_threshold": _inf_as_null(self.combined_cusum_threshold),
            "normal_text": self.normal_text.to_dict() if self.normal_text else None,
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
            combined = (
                _null_as_inf(data["combined_anomaly_threshold"]),
                _null_as_inf(data["combined_cusum_threshold"]),
            )
            normal = None if data["normal_text"] is None else NormalText.from_dict(data["normal_text"])
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
        if any(math.isnan(t) or t < 0 for t in (threshold, *combined)) or n_fit + n_holdout != n:
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
            combined_anomaly_threshold=combined[0],
            combined_cusum_threshold=combined[1],
            normal_text=normal,
            versions=dict(data.get("versions", {})),
            created=str(data.get("created", "")),
        )

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the calibration as JSON, atomically, under the output rule (:mod:`ppmech.artifacts`).

        An existing file is replaced only when ppmech wrote it and ``overwrite`` is given.
        """
        from ppmech.artifacts import write_output_file

        write_output_file(
            path, self.to_dict(), kind="json", replace=overwrite, flag="`path`", replace_flag="`overwrite`"
        )
        return Path(path)

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
    normal_text: NormalText | None = None,
) -> Calibration:
    """Learn a :class:`Calibration` from teacher-forced traces of normal text (pure statistics).

    The first :func:`calibration_split` traces fit the moments; the rest, scored
    against that fit, set the thresholds (split conformal).

    Args:
        in_sample: fit *and* threshold on all traces, the pre-conformal method
            (its alarm rate on fresh text exceeds ``alpha``); for comparison only.
        normal_text: the record of what the traces' texts were, kept in the file.
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
        normal_text=normal_text,
        versions=dict(versions or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    ref = sorted(float(x) for x in (cal.anomaly(t.H) for t in held) if math.isfinite(x))
    if not ref:
        raise PPMechError("no held-out calibration sequence has a finite energy", "use longer texts")
    cal.anomaly_reference = ref
    cal.anomaly_threshold = conformal_threshold(ref, config.alpha)
    cal.combined_anomaly_threshold, cal.combined_cusum_threshold = combined_thresholds(cal, fit, held)
    return cal


def cusum_max(cal: Calibration, trace: TokenTrace) -> float:
    """The largest CUSUM statistic on ``z_H`` along a trace."""
    z = cal.signals["H"].z(trace.H)
    return float(cusum_path(z, cal.cusum_k, cal.z_clip).max(initial=0.0))


def combined_thresholds(
    cal: Calibration, fit: Sequence[TokenTrace], held: Sequence[TokenTrace]
) -> tuple[float, float]:
    """Thresholds ``(a*, c*)`` of the combined alarm "anomaly > a* or CUSUM max > c*".

    Each score is put on a common scale by its own ``1 − α`` quantile over the *fit* texts,
    ``q_a`` and ``q_c`` (a fixed function once the moments are fitted, so the held-out texts
    stay exchangeable with new ones); the combined score is ``s = max(a / q_a, c / q_c)`` and
    its split-conformal threshold ``t`` over the held-out texts gives ``P(s > t) ≤ α`` for a new
    normal text. ``s > t`` is exactly ``a > t·q_a`` or ``c > t·q_c``. (Alarming when either
    separate alarm fires would reach up to ``2α``: 7.5% at a nominal 5% in issue #21.)
    """
    alpha = cal.alpha
    fit_a = _finite(np.array([cal.anomaly(t.H) for t in fit], dtype=np.float64))
    fit_c = _finite(np.array([cusum_max(cal, t) for t in fit], dtype=np.float64))
    q_a = float(np.quantile(fit_a, 1 - alpha)) if len(fit_a) else 1.0
    q_c = float(np.quantile(fit_c, 1 - alpha)) if len(fit_c) else 1.0
    # A scale of 0 (every fit text below the CUSUM slack) would make every positive score infinite.
    q_a, q_c = (q if q > 0 else 1.0 for q in (q_a, q_c))
    combined = [max(cal.anomaly(t.H) / q_a, cusum_max(cal, t) / q_c) for t in held]
    t = conformal_threshold(combined, alpha)
    return t * q_a, t * q_c


def _inf_as_null(obj: Any) -> Any:
    """JSON has no infinity: an infinite threshold (alarm off) is stored as ``null``."""
    if isinstance(obj, dict):
        return {k: _inf_as_null(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isinf(obj) else obj


def _null_as_inf(value: Any) -> float:
    return float("inf") if value is None else float(value)
