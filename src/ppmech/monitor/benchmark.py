"""How well does the conserved energy detect shifted text, next to standard baselines? (issue #5)

Everything is built offline from the embedded corpora and models, seeded. Each
sequence is the model's special prefix followed by ``tokens`` token ids; sets
are built at the id level (no re-tokenisation):

* ``normal``: held-out English Wikipedia (:func:`ppmech.corpus.document_split`),
  disjoint from the calibration texts.
* ``shuffled``: each normal text with its tokens randomly permuted.
* ``wiki-es``, ``wiki-fr``: the first ``tokens`` tokens of Spanish and French articles.
* ``random-chars``: strings of random printable ASCII characters, tokenised.
* ``repetition``: a random span of 2–12 tokens of each normal text, repeated.
* ``random-model``: greedy continuations (the paper's decoding) by the same
  architecture with random weights (seed 0) of the first 4 tokens of each
  normal text: 4 natural tokens, then ``tokens - 4`` generated ones.
* ``spliced``: the first ``splice_at`` tokens of each normal text, then a
  Spanish or French passage (alternating) to ``tokens`` tokens; the detection
  delay of each per-token alarm is measured from the first foreign token.

Per-sequence scores (higher = more anomalous; see :mod:`ppmech.monitor` for the
definitions): the monitor's anomaly score, ``|z|`` of mean ``H``, the CUSUM
maximum on ``z_H``, ``|z|`` of mean ``K``; the standard baselines mean NLL,
``-`` mean max softmax probability, mean energy score ``-logsumexp(logits)``
(Liu et al. 2020) and mean predictive entropy, used one-sided as in the
literature; and the calibrated two-sided ``|z|`` of the sequence mean of each
baseline signal (against the same calibration texts) and the CUSUM on ``z_NLL``,
which separate what calibration buys from what ``H`` buys.

Two more baselines show what a detector can get without any dynamics: the
calibrated ``|z|`` of the text's length in characters (every text has the same
number of tokens, so the length in characters is what varies; a detector that
only tracks it must not look good), and the Mahalanobis distance of the final
post-final-norm hidden state (last position) from its mean over the calibration's
fit texts, with a Ledoit–Wolf-shrunk covariance (:func:`shrunk_covariance`; the
state has more dimensions than there are calibration texts).

Metrics: AUROC (normal = negative, shifted = positive; ties count ½) and the
TPR at 5% FPR (threshold: the smallest score exceeded by at most 5% of normal
texts).

False alarms: every alarm (the anomaly flag and the CUSUM on each signal) is
counted on fresh normal texts (the ``normal`` set plus ``false_alarm_sequences``
more held-out English texts, none used for calibration), with a Clopper–Pearson
95% interval, for the split-conformal calibration and for the in-sample
thresholds it replaces.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ppmech.errors import PPMechError, check_seed
from ppmech.models.identity import LoadedModel
from ppmech.monitor.calibration import Calibration, MonitorConfig, calibration_split, fit_calibration
from ppmech.monitor.detection import auroc, tpr_at_fpr
from ppmech.monitor.scoring import TokenTrace, cusum_path, first_alarm, mahalanobis
from ppmech.monitor.stream import calibration_sequences, trace_many
from ppmech.statistics import rate_estimate

F64 = Any

SETS = ("shuffled", "wiki-es", "wiki-fr", "random-chars", "repetition", "random-model", "spliced")
DELAY_SIGNALS = {
    "H (energy)": "H",
    "K (kinetic)": "K",
    "NLL": "V",
    "entropy": "entropy",
    "max softmax prob": "msp",
    "energy score -logsumexp": "neg_lse",
}


# --------------------------------------------------------------------------- pure metrics


def delay_stats(
    paths: Sequence[F64], threshold: float, splice: Sequence[int]
) -> tuple[float, float, float, float]:
    """Detection of a splice by a per-token alarm.

    For each CUSUM path, the first alarm (entry above ``threshold``) is a false
    alarm if it comes before the splice index, a detection otherwise, with delay
    ``alarm - splice`` tokens.

    Returns:
        ``(detected fraction, false-alarm fraction, median delay, mean delay)``;
        delays over detected sequences only (NaN if none).
    """
    delays, false = [], 0
    for path, s in zip(paths, splice, strict=True):
        at = first_alarm(np.asarray(path), threshold)
        if at is None:
            continue
        if at < s:
            false += 1
        else:
            delays.append(at - s)
    n = len(splice)
    if not delays:
        return 0.0, false / n, float("nan"), float("nan")
    return len(delays) / n, false / n, float(np.median(delays)), float(np.mean(delays))


def shrunk_covariance(x: F64) -> tuple[F64, float]:
    """Ledoit–Wolf (2004) shrinkage of the sample covariance toward a scaled identity.

    ``Σ = λ μ I + (1 − λ) S`` with ``S`` the covariance (ddof 0) of the rows of ``x``,
    ``μ = tr(S)/p``, ``λ = min(b̄², d²)/d²``, ``d² = ‖S − μI‖²_F / p`` and
    ``b̄² = (Σ_k ‖x_k‖⁴ − n‖S‖²_F) / (n² p)`` on centred rows ``x_k``.

    Args:
        x: ``[n, p]`` samples, ``n >= 2``.

    Returns:
        ``([p, p] covariance, λ)``; positive definite whenever ``λ > 0`` and ``μ > 0``.
    """
    a = np.asarray(x, dtype=np.float64)
    n, p = a.shape
    if n < 2:
        raise PPMechError(f"a covariance needs at least 2 samples (got {n})", "calibrate on more texts")
    xc = a - a.mean(axis=0)
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / p
    d2 = float(np.sum((s - mu * np.eye(p)) ** 2)) / p
    b2 = float(np.sum(np.sum(xc * xc, axis=1) ** 2) - n * np.sum(s * s)) / (n * n * p)
    lam = min(max(b2, 0.0), d2) / d2 if d2 > 0 else 1.0
    return lam * mu * np.eye(p) + (1 - lam) * s, lam


@dataclass
class Baselines:
    """The length and hidden-state baselines, fitted on the calibration's fit texts.

    Attributes:
        length_mean, length_std: mean and std (ddof 1) of the length in characters.
        state_mean: ``[d]`` mean final hidden state.
        state_precision: ``[d, d]`` inverse of its shrunk covariance.
        shrinkage: the Ledoit–Wolf ``λ`` used.
    """

    length_mean: float
    length_std: float
    state_mean: F64
    state_precision: F64
    shrinkage: float

    @classmethod
    def fit(cls, lengths: Sequence[float], states: F64) -> Baselines:
        ln = np.asarray(lengths, dtype=np.float64)
        cov, lam = shrunk_covariance(states)
        sd = float(ln.std(ddof=1)) if len(ln) > 1 else 0.0
        return cls(
            length_mean=float(ln.mean()),
            length_std=sd if sd > 0 else 1.0,
            state_mean=np.asarray(states, dtype=np.float64).mean(axis=0),
            state_precision=np.linalg.inv(cov),
            shrinkage=lam,
        )

    def length_score(self, n_chars: float) -> float:
        """Two-sided ``|z|`` of a text's length in characters."""
        return abs(float(n_chars) - self.length_mean) / self.length_std

    def state_score(self, state: F64) -> float:
        """Mahalanobis distance of a final hidden state from the fit texts' mean."""
        return mahalanobis(state, self.state_mean, self.state_precision)


# --------------------------------------------------------------------------- scores


def _mean(x: F64) -> float:
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def _cusum_max(cal: Calibration, signal: str) -> Callable[[TokenTrace], float]:
    def score(t: TokenTrace) -> float:
        z = cal.signals[signal].z(t.signal(signal))
        return float(cusum_path(z, cal.cusum_k, cal.z_clip).max(initial=0.0))

    return score


def methods(cal: Calibration) -> dict[str, tuple[str, Callable[[TokenTrace], float]]]:
    """Name -> (family, per-sequence score; higher = more anomalous)."""
    s = cal.signals
    return {
        "anomaly (mean, std, drift of H)": ("energy", lambda t: cal.anomaly(t.H)),
        "|z| mean H": ("energy", lambda t: abs(s["H"].seq_z(t.H))),
        "CUSUM max z_H": ("energy", _cusum_max(cal, "H")),
        "|z| mean K": ("energy", lambda t: abs(s["K"].seq_z(t.K))),
        "mean NLL": ("baseline", lambda t: _mean(t.V)),
        "max softmax prob (-MSP)": ("baseline", lambda t: -_mean(t.msp)),
        "energy score -logsumexp": ("baseline", lambda t: _mean(t.neg_lse)),
        "predictive entropy": ("baseline", lambda t: _mean(t.entropy)),
        "|z| mean NLL": ("calibrated baseline", lambda t: abs(s["V"].seq_z(t.V))),
        "|z| mean MSP": ("calibrated baseline", lambda t: abs(s["msp"].seq_z(t.msp))),
        "|z| mean energy score": ("calibrated baseline", lambda t: abs(s["neg_lse"].seq_z(t.neg_lse))),
        "|z| mean entropy": ("calibrated baseline", lambda t: abs(s["entropy"].seq_z(t.entropy))),
        "CUSUM max z_NLL": ("calibrated baseline", _cusum_max(cal, "V")),
    }


# --------------------------------------------------------------------------- sets


@dataclass
class BenchmarkConfig:
    """Configuration of ``ppmech monitor benchmark``.

    Attributes:
        model, dtype, seed, trust_remote_code: the (pretrained) model to monitor; ``seed``
            drives every random choice.
        sequences: texts per set (normal and each shifted set).
        calibration_sequences: held-out English texts to calibrate on (disjoint from ``normal``);
            ``holdout_fraction`` of them set the thresholds (split conformal).
        false_alarm_sequences: more fresh normal texts, beyond ``normal``, on which
            the false-alarm rates are counted.
        tokens: tokens per text (after the special prefix).
        splice_at: English tokens before the foreign passage in ``spliced``.
        alpha, holdout_fraction, cusum_k, z_clip: the monitor's thresholds
            (see :class:`ppmech.monitor.calibration.MonitorConfig`).
        batch_size: texts per forward pass.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    """

    model: str = "smollm2-135m"
    dtype: str = "float32"
    seed: int = 0
    trust_remote_code: bool = False
    sequences: int = 100
    calibration_sequences: int = 600
    false_alarm_sequences: int = 400
    tokens: int = 64
    splice_at: int = 32
    alpha: float = 0.05
    holdout_fraction: float = 0.5
    cusum_k: float = 0.5
    z_clip: float = 5.0
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.sequences < 10:
            raise PPMechError(f"`sequences` must be at least 10 (got {self.sequences})", "use e.g. 100")
        if self.calibration_sequences < 4:
            raise PPMechError(
                f"`calibration_sequences` must be at least 4 (got {self.calibration_sequences})",
                "use e.g. 600",
            )
        if self.false_alarm_sequences < 0:
            raise PPMechError(
                f"`false_alarm_sequences` must be 0 or more (got {self.false_alarm_sequences})",
                "use e.g. 400",
            )
        if self.tokens < 16:
            raise PPMechError(f"`tokens` must be at least 16 (got {self.tokens})", "use e.g. 64")
        if not 4 <= self.splice_at <= self.tokens - 4:
            raise PPMechError(
                f"`splice_at` must be between 4 and tokens - 4 = {self.tokens - 4} (got {self.splice_at})",
                "use e.g. half of `tokens`",
            )

    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(
            model=self.model,
            dtype=self.dtype,
            device=self.device,
            seed=self.seed,
            sequences=self.calibration_sequences,
            tokens=self.tokens,
            alpha=self.alpha,
            holdout_fraction=self.holdout_fraction,
            cusum_k=self.cusum_k,
            z_clip=self.z_clip,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
        )


@dataclass
class BenchmarkSets:
    """The id sequences of every set, and the splice index (into scored tokens) per spliced text.

    ``fresh`` holds the extra normal texts on which false alarms are counted.
    """

    calibration: list[list[int]]
    sets: dict[str, list[list[int]]]
    splice_index: list[int]
    fresh: list[list[int]]


def _foreign(lm: LoadedModel, corpus: str, n: int, tokens: int, seed: int) -> list[list[int]]:
    from ppmech.corpus import load_documents, select_prompts

    docs = load_documents(corpus)
    return [list(p.ids) for p in select_prompts(docs, lm.tokenizer, n, context_tokens=tokens, seed=seed)]


def build_sets(lm: LoadedModel, config: BenchmarkConfig, progress: bool = False) -> BenchmarkSets:
    """Build every set, deterministically from ``config.seed``."""
    from ppmech.corpus import special_prefix

    n, tokens = config.sequences, config.tokens
    prefix = special_prefix(lm.tokenizer)
    p = len(prefix)
    mcfg = config.monitor_config()
    calibration = calibration_sequences(lm, mcfg)
    normal = calibration_sequences(
        lm, MonitorConfig(**{**asdict(mcfg), "sequences": n}), offset=config.calibration_sequences
    )
    fresh = (
        calibration_sequences(
            lm,
            MonitorConfig(**{**asdict(mcfg), "sequences": max(config.false_alarm_sequences, 4)}),
            offset=config.calibration_sequences + n,
        )[: config.false_alarm_sequences]
        if config.false_alarm_sequences
        else []
    )
    rng = random.Random(config.seed)
    body = [s[p:] for s in normal]

    shuffled = []
    for b in body:
        perm = list(b)
        rng.shuffle(perm)
        shuffled.append(prefix + perm)

    es = _foreign(lm, "wiki-es", n, tokens, config.seed)
    fr = _foreign(lm, "wiki-fr", n, tokens, config.seed)

    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 10
    chars = []
    for _ in range(n):
        ids: list[int] = []
        while len(ids) < tokens:
            text = "".join(rng.choice(alphabet) for _ in range(4 * tokens))
            ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        chars.append(prefix + ids[:tokens])

    repetition = []
    for b in body:
        period = rng.randint(2, 12)
        start = rng.randint(0, len(b) - period)
        span = b[start : start + period]
        repetition.append(prefix + (span * (tokens // period + 1))[:tokens])

    random_model = _random_model_texts(lm, config, [s[: p + 4] for s in normal], progress)

    # Foreign passages for the splice: other articles than the es/fr sets (another seed).
    half = n // 2 + 1
    foreign = _foreign(lm, "wiki-es", half, tokens, config.seed + 1)
    foreign_fr = _foreign(lm, "wiki-fr", half, tokens, config.seed + 1)
    spliced, splice_index = [], []
    for i, b in enumerate(body):
        passage = (foreign if i % 2 == 0 else foreign_fr)[i // 2][p:]
        spliced.append(prefix + b[: config.splice_at] + passage[: tokens - config.splice_at])
        # The first foreign token sits at id position p + splice_at, i.e. scored index p + splice_at - 1.
        splice_index.append(p + config.splice_at - 1)

    return BenchmarkSets(
        calibration=calibration,
        sets={
            "normal": normal,
            "shuffled": shuffled,
            "wiki-es": es,
            "wiki-fr": fr,
            "random-chars": chars,
            "repetition": repetition,
            "random-model": random_model,
            "spliced": spliced,
        },
        splice_index=splice_index,
        fresh=fresh,
    )


def _random_model_texts(
    lm: LoadedModel, config: BenchmarkConfig, prompts: list[list[int]], progress: bool
) -> list[list[int]]:
    """Greedy continuations by the random-weight model (seed 0) of ``prompts``."""
    from ppmech.engine.recorder import Recorder
    from ppmech.engine.sampling import Decoding
    from ppmech.models.loading import load_model

    rand = load_model(
        lm.identity.spec,
        weights="random",
        seed=0,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        device=lm.device,
    )
    new = config.tokens - 4
    recorder = Recorder(rand, Decoding("greedy"))
    out = []
    for i in range(0, len(prompts), 50):
        batch = prompts[i : i + 50]
        rec = recorder.record(batch, new)
        for prompt, row in zip(batch, rec.token_ids, strict=True):
            out.append(list(prompt) + [int(x) for x in row.tolist()])
    del rand
    return out


# --------------------------------------------------------------------------- run


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` measured.

    Attributes:
        config: the :class:`BenchmarkConfig`.
        model: the monitored model's identity (dict).
        sizes: texts per set (``calibration`` included).
        scores: long frame ``set, method, family, auroc, tpr_at_5fpr``.
        delays: frame ``signal, detected, false_alarm, median_delay, mean_delay``
            for the spliced set, one row per per-token CUSUM alarm.
        false_alarms: :func:`false_alarm_table` on the fresh normal texts.
        text_scores: ``{method: {set: [score per text]}}``, ``normal`` included: what the
            ROC curves (:func:`roc_curve`) and every figure in ``scores`` are computed from.
        seconds: wall time of the whole benchmark.
        versions: software versions.
    """

    config: dict[str, Any]
    model: dict[str, Any]
    sizes: dict[str, int]
    scores: pd.DataFrame
    delays: pd.DataFrame
    false_alarms: pd.DataFrame
    seconds: float
    versions: dict[str, str]
    text_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def table(self, metric: str = "both") -> pd.DataFrame:
        """Methods as rows, shifted sets as columns; cells ``AUROC / TPR@5%FPR`` (or one metric)."""
        rows = []
        for method, group in self.scores.groupby("method", sort=False):
            row: dict[str, Any] = {"method": method, "family": group["family"].iloc[0]}
            for _, r in group.iterrows():
                if metric == "auroc":
                    row[r["set"]] = r["auroc"]
                elif metric == "tpr":
                    row[r["set"]] = r["tpr_at_5fpr"]
                else:
                    row[r["set"]] = f"{r['auroc']:.2f} / {r['tpr_at_5fpr']:.2f}"
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "model": self.model,
            "sizes": self.sizes,
            "scores": self.scores.to_dict(orient="records"),
            "delays": self.delays.to_dict(orient="records"),
            "false_alarms": self.false_alarms.to_dict(orient="records"),
            "seconds": self.seconds,
            "versions": self.versions,
            "text_scores": self.text_scores,
        }


ExtraScores = dict[str, tuple[str, dict[str, list[float]]]]
"""Method name -> (family, set name -> per-text scores), for scores that need more than a trace."""


def text_scores(
    cal: Calibration, traces: dict[str, list[TokenTrace]], extra: ExtraScores | None = None
) -> ExtraScores:
    """Every method's score of every text: method -> (family, set -> scores); ``extra`` appended."""
    scored: ExtraScores = {
        name: (family, {k: [fn(t) for t in v] for k, v in traces.items()})
        for name, (family, fn) in methods(cal).items()
    }
    return scored | (extra or {})


def evaluate(
    cal: Calibration,
    traces: dict[str, list[TokenTrace]],
    splice_index: Sequence[int],
    fpr: float = 0.05,
    extra: ExtraScores | None = None,
    scored: ExtraScores | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every set with every method (pure given traces); returns ``(scores, delays)``.

    ``scored`` is :func:`text_scores` of the same inputs, when the caller already has it.
    """
    rows = []
    if scored is None:
        scored = text_scores(cal, traces, extra)
    for name, (family, by_set) in scored.items():
        normal = by_set["normal"]
        for set_name in SETS:
            if set_name not in traces or set_name not in by_set:
                continue
            shifted = by_set[set_name]
            rows.append(
                {
                    "set": set_name,
                    "method": name,
                    "family": family,
                    "auroc": auroc(normal, shifted),
                    "tpr_at_5fpr": tpr_at_fpr(normal, shifted, fpr),
                }
            )
    delay_rows = []
    if "spliced" in traces:
        for label, signal in DELAY_SIGNALS.items():
            sc = cal.signals[signal]
            paths = [cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip) for t in traces["spliced"]]
            normal_paths = [
                cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip) for t in traces["normal"]
            ]
            normal_alarm = np.mean([first_alarm(q, sc.cusum_threshold) is not None for q in normal_paths])
            det, false, med, mean = delay_stats(paths, sc.cusum_threshold, splice_index)
            delay_rows.append(
                {
                    "CUSUM on z of": label,
                    "alarm on normal": float(normal_alarm),
                    "false alarm before splice": false,
                    "detected after splice": det,
                    "median delay (tokens)": med,
                    "mean delay (tokens)": mean,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(delay_rows)


def false_alarm_table(calibrations: dict[str, Calibration], normal: Sequence[TokenTrace]) -> pd.DataFrame:
    """Alarm rates on fresh normal texts, with Clopper–Pearson 95% intervals.

    Args:
        calibrations: label -> calibration (e.g. split conformal and in-sample).
        normal: fresh normal traces, none used by any calibration.

    Returns:
        One row per calibration and alarm (the anomaly flag, the CUSUM on each
        signal of :data:`DELAY_SIGNALS`): ``calibration``, ``alarm``, ``alarms``,
        ``texts``, ``rate``, ``CI low``, ``CI high``, ``nominal``, ``nominal in CI``.
    """
    rows = []
    for label, cal in calibrations.items():
        alarms = {
            "anomaly flag (mean, std, drift of H)": [cal.anomaly(t.H) > cal.anomaly_threshold for t in normal]
        }
        for name, signal in DELAY_SIGNALS.items():
            sc = cal.signals[signal]
            alarms[f"CUSUM on z of {name}"] = [
                first_alarm(cusum_path(sc.z(t.signal(signal)), cal.cusum_k, cal.z_clip), sc.cusum_threshold)
                is not None
                for t in normal
            ]
        for alarm, hits in alarms.items():
            est = rate_estimate(int(sum(hits)), len(hits))
            rows.append(
                {
                    "calibration": label,
                    "alarm": alarm,
                    "alarms": int(sum(hits)),
                    "texts": len(hits),
                    "rate": est.value,
                    "CI low": est.low,
                    "CI high": est.high,
                    "nominal": cal.alpha,
                    "nominal in CI": bool(est.low <= cal.alpha <= est.high),
                }
            )
    return pd.DataFrame(rows)


def text_lengths(lm: LoadedModel, sequences: Sequence[Sequence[int]]) -> list[float]:
    """Length in characters of each text (the special prefix left out)."""
    from ppmech.corpus import special_prefix

    p = len(special_prefix(lm.tokenizer))
    return [float(len(lm.tokenizer.decode(list(ids[p:])))) for ids in sequences]


def baseline_scores(
    base: Baselines, lengths: dict[str, list[float]], traces: dict[str, list[TokenTrace]]
) -> ExtraScores:
    """The length and hidden-state baselines' scores per set."""

    def state(t: TokenTrace) -> float:
        return base.state_score(t.final_state) if t.final_state is not None else float("nan")

    return {
        "|z| text length (characters)": (
            "length baseline",
            {k: [base.length_score(x) for x in v] for k, v in lengths.items()},
        ),
        "Mahalanobis final hidden state": (
            "hidden-state baseline",
            {k: [state(t) for t in v] for k, v in traces.items()},
        ),
    }


def run_benchmark(
    config: BenchmarkConfig, lm: LoadedModel | None = None, progress: bool = True
) -> BenchmarkResult:
    """Build the sets, calibrate on held-out English, score everything, and tabulate."""
    from ppmech.models.loading import load_model
    from ppmech.provenance import versions

    start = time.perf_counter()
    if lm is None:
        lm = load_model(
            config.model,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            device=config.device,
        )
    sets = build_sets(lm, config, progress)
    cal_traces = trace_many(lm, sets.calibration, config.batch_size, "calibration" if progress else None)
    mcfg = config.monitor_config()
    cal = fit_calibration(cal_traces, lm.identity, mcfg, versions())
    traces = {
        name: trace_many(lm, seqs, config.batch_size, name if progress else None)
        for name, seqs in sets.sets.items()
    }
    fresh = trace_many(lm, sets.fresh, config.batch_size, "fresh normal" if progress else None)
    n_fit = calibration_split(len(cal_traces), mcfg.holdout_fraction)
    fit_states = np.stack([t.final_state for t in cal_traces[:n_fit] if t.final_state is not None])
    base = Baselines.fit(text_lengths(lm, sets.calibration[:n_fit]), fit_states)
    lengths = {name: text_lengths(lm, seqs) for name, seqs in sets.sets.items()}
    scored = text_scores(cal, traces, baseline_scores(base, lengths, traces))
    scores, delays = evaluate(cal, traces, sets.splice_index, scored=scored)
    in_sample = fit_calibration(cal_traces, lm.identity, mcfg, versions(), in_sample=True)
    false_alarms = false_alarm_table(
        {
            f"split conformal ({cal.n_fit} fit + {cal.n_holdout} held out)": cal,
            f"in-sample ({in_sample.n_fit} texts, previous method)": in_sample,
        },
        traces["normal"] + fresh,
    )
    sizes = (
        {"calibration": len(sets.calibration)}
        | {k: len(v) for k, v in sets.sets.items()}
        | {"fresh normal": len(sets.fresh)}
    )
    return BenchmarkResult(
        config=asdict(config),
        model=lm.identity.to_dict() | {"key": lm.identity.key},
        sizes=sizes,
        scores=scores,
        delays=delays,
        false_alarms=false_alarms,
        seconds=time.perf_counter() - start,
        versions=versions(),
        text_scores={name: by_set for name, (_, by_set) in scored.items()},
    )
