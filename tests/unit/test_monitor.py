"""Pure parts of the energy monitor, against hand-computed cases."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ppmech.errors import PPMechError
from ppmech.models.identity import ModelIdentity
from ppmech.monitor.calibration import (
    Calibration,
    MonitorConfig,
    calibration_split,
    fit_calibration,
)
from ppmech.monitor.results import score_trace
from ppmech.monitor.scoring import (
    SIGNALS,
    TokenTrace,
    calibrate_signal,
    conformal_threshold,
    cusum_path,
    cusum_step,
    first_alarm,
    mahalanobis,
    sequence_features,
    tail_p_value,
)
from ppmech.monitor.stream import distribution_terms
from ppmech.monitor.windows import (
    NormalText,
    Window,
    input_outside_normal,
    outside_normal,
    select_windows,
    sentence_starts,
)

IDENTITY = ModelIdentity(
    spec="toy",
    source="/nowhere",
    source_hash="ab" * 32,
    weights="pretrained",
    seed=None,
    model_type="llama",
    num_parameters=10,
    num_layers=1,
    hidden_size=2,
    vocab_size=4,
    max_context=128,
    tokenizer_hash="cd" * 32,
    dtype="float32",
)


def _trace(h: list[float], v: list[float] | None = None) -> TokenTrace:
    n = len(h)
    hv = np.array(h, dtype=np.float64)
    vv = np.array(v if v is not None else [1.0] * n, dtype=np.float64)
    return TokenTrace(
        token_ids=np.arange(n, dtype=np.int64),
        V=vv,
        K=hv - vv,
        H=hv,
        entropy=np.full(n, 2.0) + 0.1 * np.arange(n),
        msp=np.full(n, 0.5),
        neg_lse=np.linspace(-20, -19, n),
    )


def _traces(seed: int = 0, n: int = 60, length: int = 20) -> list[TokenTrace]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = list(rng.normal(9.0, 1.0, length))
        h[0] = float("nan")
        out.append(_trace(h, list(rng.normal(3.0, 1.0, length))))
    return out


def test_sequence_features_by_hand() -> None:
    mean, std, drift = sequence_features(np.array([np.nan, 1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)  # ddof 1
    assert drift == pytest.approx(1.0)  # one nat per token
    mean, std, drift = sequence_features(np.array([np.nan, 5.0, -np.inf, 5.0]))
    assert (mean, std, drift) == (pytest.approx(5.0), pytest.approx(0.0), pytest.approx(0.0))
    assert all(math.isnan(x) for x in sequence_features(np.array([np.nan, 1.0])))


def test_cusum_by_hand() -> None:
    # k = 0.5: z = 2 -> S+ = 1.5; z = 2 -> 3.0; z = -1 -> 1.5, S- = 0.5; NaN leaves the state.
    path = cusum_path(np.array([2.0, 2.0, -1.0, np.nan, -10.0]), k=0.5, clip=3.0)
    # last z clipped to -3: S+ = max(0, 1.5 - 3 - 0.5) = 0, S- = 0.5 + 3 - 0.5 = 3.0
    assert path.tolist() == pytest.approx([1.5, 3.0, 1.5, 1.5, 3.0])
    assert cusum_step((0.0, 0.0), float("nan"), 0.5, 5.0) == (0.0, 0.0)
    assert first_alarm(path, 2.0) == 1
    assert first_alarm(path, 3.0) is None


def test_mahalanobis_and_p_value() -> None:
    cov_inv = np.linalg.inv(np.diag([4.0, 1.0, 1.0]))
    assert mahalanobis(np.array([2.0, 0.0, 0.0]), np.zeros(3), cov_inv) == pytest.approx(1.0)
    assert mahalanobis(np.array([0.0, 3.0, 4.0]), np.zeros(3), cov_inv) == pytest.approx(5.0)
    assert math.isnan(mahalanobis(np.array([np.nan, 0, 0]), np.zeros(3), cov_inv))
    ref = [1.0, 2.0, 3.0, 4.0]
    assert tail_p_value(3.5, ref) == pytest.approx(2 / 5)
    assert tail_p_value(10.0, ref) == pytest.approx(1 / 5)
    assert tail_p_value(0.0, ref) == pytest.approx(1.0)


def test_distribution_terms_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]])
    terms = distribution_terms(logits, torch.tensor([2, 1]))
    assert terms["V"].tolist() == pytest.approx([math.log(4), math.log(4)], abs=1e-6)
    assert terms["msp"].tolist() == pytest.approx([0.25, 0.75], abs=1e-6)
    assert terms["neg_lse"].tolist() == pytest.approx([-math.log(4), -math.log(4)], abs=1e-6)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert terms["entropy"].tolist() == pytest.approx([math.log(4), h2], abs=1e-6)


def test_calibrate_signal_by_hand() -> None:
    values = [np.array([np.nan, 1.0, 3.0]), np.array([2.0, 2.0]), np.array([5.0, -np.inf, 7.0])]
    sc = calibrate_signal(values, k=0.5, clip=5.0, alpha=0.05)
    pooled = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 7.0])
    assert sc.token_mean == pytest.approx(pooled.mean())
    assert sc.token_std == pytest.approx(pooled.std(ddof=1))
    assert sc.seq_mean_mean == pytest.approx(np.mean([2.0, 2.0, 6.0]))
    assert sc.seq_mean_std == pytest.approx(np.std([2.0, 2.0, 6.0], ddof=1))
    assert sc.z(np.array([sc.token_mean]))[0] == pytest.approx(0.0)
    # Three sequences are too few for a threshold at alpha 0.05 (⌈4·0.95⌉ = 4 > 3): alarm off.
    assert sc.cusum_threshold == math.inf
    held = [np.array([2.0, 9.0, 9.0]), np.array([2.0, 2.0]), np.array([1.0, 3.0])]
    sc_held = calibrate_signal(values, k=0.5, clip=5.0, alpha=0.5, held_out=held)
    maxima = [cusum_path(sc.z(h), 0.5, 5.0).max() for h in held]
    assert sc_held.token_mean == sc.token_mean  # moments from the fit sequences only
    assert sc_held.cusum_threshold == sorted(maxima)[1]  # ⌈4·0.5⌉ = 2nd smallest held-out maximum


def test_fit_calibration_and_scores() -> None:
    cal = fit_calibration(_traces(), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20))
    assert set(cal.signals) == set(SIGNALS)
    assert cal.signals["H"].token_mean == pytest.approx(9.0, abs=0.2)
    assert (cal.n_fit, cal.n_holdout, len(cal.anomaly_reference)) == (30, 30, 30)
    assert cal.anomaly_threshold == sorted(cal.anomaly_reference)[29]  # ⌈31·0.95⌉ = 30th of 30
    # The calibration's own sequences are flagged at about the alpha rate.
    flagged = [tail_p_value(a, cal.anomaly_reference) <= cal.alpha for a in cal.anomaly_reference]
    assert sum(flagged) <= 3

    normal = score_trace(_traces(seed=1, n=1)[0], cal)
    shifted_h = [float("nan")] + [14.0 + 0.2 * i for i in range(19)]
    shifted = score_trace(_trace(shifted_h), cal)
    assert shifted.sequence.anomaly > normal.sequence.anomaly
    assert shifted.sequence.flagged
    assert shifted.sequence.alarm_at is not None and shifted.sequence.alarm_at <= 3
    assert shifted.sequence.z_mean_H > 5
    assert list(shifted.tokens.columns[:6]) == ["index", "token_id", "token", "V", "K", "H"]
    assert shifted.tokens["alarm"].iloc[-1]


def test_calibration_round_trip_and_identity(tmp_path: Path) -> None:
    cal = fit_calibration(_traces(), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20))
    path = cal.save(tmp_path / "cal.json")
    back = Calibration.load(path)
    stored = json.loads(path.read_text())
    assert stored.pop("generator").startswith("ppmech ")  # the output rule's mark (ppmech.artifacts)
    assert back.to_dict() == stored
    assert back.signals["V"] == cal.signals["V"]
    back.check_model(IDENTITY)
    with pytest.raises(PPMechError, match="was made for model"):
        back.check_model(replace(IDENTITY, weights="random", seed=0))
    with pytest.raises(PPMechError, match="different tokenizer"):
        back.check_model(replace(IDENTITY, tokenizer_hash="ee" * 32))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("signals"),
        lambda d: d.__setitem__("kind", "something-else"),
        lambda d: d["signals"]["H"].pop("token_std"),
        lambda d: d.__setitem__("feature_cov", [[1.0, 2.0]]),
        lambda d: d.__setitem__("anomaly_reference", []),
        lambda d: d["model"].pop("key"),
        lambda d: d.__setitem__("schema_version", 99),
    ],
)
def test_corrupt_calibration_is_refused(tmp_path: Path, mutate: object) -> None:
    cal = fit_calibration(_traces(), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20))
    data = cal.to_dict()
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PPMechError, match="not a valid ppmech monitor calibration"):
        Calibration.load(path)


def _set_signal(name: str, field_name: str, value: float) -> object:
    return lambda d: d["signals"][name].__setitem__(field_name, value)


@pytest.mark.parametrize(
    ("mutate", "field_name"),
    [
        (_set_signal("H", "token_std", 0.0), "signals.H.token_std is 0.0"),
        (_set_signal("V", "token_std", -1.0), "signals.V.token_std is -1.0"),
        (_set_signal("K", "token_std", float("nan")), "signals.K.token_std is nan"),
        (_set_signal("H", "seq_mean_std", 0.0), "signals.H.seq_mean_std is 0.0"),
        (_set_signal("H", "cusum_threshold", float("nan")), "signals.H.cusum_threshold"),
        (lambda d: d.__setitem__("feature_cov", [[0.0] * 3] * 3), "feature_cov has no positive variance"),
        (
            lambda d: d.__setitem__("feature_cov", [[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            "feature_cov is not positive semi-definite",
        ),
        (
            lambda d: d.__setitem__("feature_cov", [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            "feature_cov is not symmetric",
        ),
    ],
)
def test_calibrations_with_unusable_spreads_are_refused_naming_the_field(
    tmp_path: Path, mutate: object, field_name: str
) -> None:
    """Issue 9: zero, negative or NaN spreads, or an all-zero covariance, were accepted."""
    cal = fit_calibration(_traces(), IDENTITY, MonitorConfig(model="toy", sequences=30, tokens=20))
    data = cal.to_dict()
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))  # NaN and inf as JSON's NaN/Infinity, as a careless writer would
    with pytest.raises(PPMechError, match="not a valid ppmech monitor calibration") as exc:
        Calibration.load(path)
    assert field_name in exc.value.problem
    assert len(exc.value.one_line().splitlines()) == 1


def test_truncated_json_is_refused(tmp_path: Path) -> None:
    cal = fit_calibration(_traces(), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20))
    path = cal.save(tmp_path / "cal.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(PPMechError, match="invalid JSON"):
        Calibration.load(path)
    with pytest.raises(PPMechError, match="not found"):
        Calibration.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequences": 3},
        {"tokens": 3},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"batch_size": 0},
        {"split": "x"},
        {"holdout_fraction": 0.0},
        {"holdout_fraction": 1.0},
    ],
)
def test_monitor_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(PPMechError):
        MonitorConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- split conformal


def test_moments_come_from_the_fit_texts_and_thresholds_from_the_held_out_ones() -> None:
    traces = _traces(n=40)
    cal = fit_calibration(traces, IDENTITY, MonitorConfig(model="toy", sequences=40, tokens=20))
    fit = np.concatenate([t.H[np.isfinite(t.H)] for t in traces[:20]])
    assert cal.signals["H"].token_mean == pytest.approx(fit.mean())
    ref = sorted(cal.anomaly(t.H) for t in traces[20:])
    np.testing.assert_allclose(cal.anomaly_reference, ref)
    assert cal.anomaly_threshold == pytest.approx(conformal_threshold(ref, 0.05))
    # The flag and the conformal p-value agree.
    for t in _traces(seed=3, n=200):
        s = score_trace(t, cal).sequence
        assert s.flagged == (s.p_value <= cal.alpha)
    with pytest.raises(PPMechError, match="at least 4"):
        calibration_split(3, 0.5)
    assert calibration_split(4, 0.9) == 3  # at least 3 fit
    assert calibration_split(100, 0.01) == 99  # at least 1 held out


def test_too_few_held_out_texts_switch_the_alarm_off_and_survive_a_round_trip(tmp_path: Path) -> None:
    cal = fit_calibration(_traces(n=10), IDENTITY, MonitorConfig(model="toy", sequences=10, tokens=20))
    assert cal.anomaly_threshold == math.inf and cal.signals["H"].cusum_threshold == math.inf
    shifted = score_trace(_trace([float("nan")] + [30.0] * 19), cal).sequence
    assert not shifted.flagged and shifted.alarm_at is None
    path = cal.save(tmp_path / "cal.json")
    assert json.loads(path.read_text())["anomaly_threshold"] is None
    back = Calibration.load(path)
    assert back.anomaly_threshold == math.inf and back.signals["H"].cusum_threshold == math.inf


def test_split_conformal_false_alarm_rate_holds_on_exchangeable_texts() -> None:
    # Normal texts all drawn alike; the held-out thresholds keep the rate at or below alpha,
    # the in-sample ones (fitted and thresholded on the same texts) exceed it.
    config = MonitorConfig(model="toy", sequences=60, tokens=20)
    split_rates, naive_rates = [], []
    for rep in range(60):
        cal_traces = _traces(seed=100 + rep, n=60, length=12)
        fresh = _traces(seed=10_000 + rep, n=60, length=12)
        for out, cal in (
            (split_rates, fit_calibration(cal_traces, IDENTITY, config)),
            (naive_rates, fit_calibration(cal_traces, IDENTITY, config, in_sample=True)),
        ):
            out.append(np.mean([cal.anomaly(t.H) > cal.anomaly_threshold for t in fresh]))
    # Conformal, 30 held out: the rate is 1 − ⌈31·0.95⌉/31 = 1/31 in expectation (at most alpha);
    # a calibration's own rate varies as Beta(1, 30) (sd 0.031), so 60 of them give ± 0.004.
    assert np.mean(split_rates) == pytest.approx(1 / 31, abs=0.014)
    assert np.mean(split_rates) <= 0.05
    assert np.mean(naive_rates) > np.mean(split_rates) + 0.01


# ----------------------------------------------------------------------------- split-conformal threshold


def test_conformal_threshold_by_hand() -> None:
    scores = np.arange(1.0, 20.0)  # n = 19
    assert conformal_threshold(scores, 0.10) == 18.0  # ⌈20·0.9⌉ = 18
    assert conformal_threshold(scores, 0.05) == 19.0  # ⌈20·0.95⌉ = 19
    assert conformal_threshold(scores, 0.01) == math.inf  # ⌈20·0.99⌉ = 20 > n
    assert conformal_threshold(np.array([3.0, np.nan, 1.0, 2.0]), 0.5) == 2.0  # ⌈4·0.5⌉ = 2 of 3 finite
    with pytest.raises(PPMechError, match="alpha"):
        conformal_threshold(scores, 1.0)
    with pytest.raises(PPMechError, match="finite"):
        conformal_threshold([np.nan], 0.1)


@pytest.mark.parametrize("n", [19, 50, 200])
def test_conformal_threshold_covers_exchangeable_data(n: int) -> None:
    # Exact finite-sample rate: 1 − ⌈(n+1)(1−α)⌉/(n+1), between α − 1/(n+1) and α.
    rng = np.random.default_rng(n)
    alpha, reps = 0.05, 20000
    cal = rng.standard_t(3, size=(reps, n))
    new = rng.standard_t(3, size=reps)
    thresholds = np.array([conformal_threshold(c, alpha) for c in cal])
    rate = float(np.mean(new > thresholds))
    exact = 1 - math.ceil((n + 1) * (1 - alpha)) / (n + 1)
    se = math.sqrt(exact * (1 - exact) / reps) + 1e-3
    assert abs(rate - exact) < 4 * se
    assert rate <= alpha + 4 * se
    # The naive in-sample (1 − α) quantile of the same scores alarms more often for small n.
    naive = float(np.mean(new > np.quantile(cal, 1 - alpha, axis=1)))
    assert naive >= rate


# --------------------------------------------------------------------------- normal text (issue #21)


class WordTokenizer:
    """A toy tokenizer (one token per space-separated word) for the window rule's bookkeeping."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        words = text.split()
        if add_special_tokens:  # no special prefix, like SmolLM2
            return {"input_ids": [len(w) for w in words]}
        return {"input_ids": [len(w) for w in words]}

    def decode(self, ids: list[int]) -> str:
        return " ".join("x" * i for i in ids)


def test_sentence_starts_by_hand() -> None:
    text = 'One two. Three four! "Five" six? seven. 8 nine.  Ten'
    starts = sentence_starts(text)
    assert [text[s : s + 5] for s in starts] == ["Three", '"Five', "8 nin", "Ten"]  # not "seven" (lower case)


def test_windows_openings_later_and_anywhere() -> None:
    from ppmech.corpus import Document

    body = " ".join(f"Word{i} is here." for i in range(12))  # 12 sentences of 3 words
    docs = [Document(f"d{i}", body) for i in range(6)] + [Document("short", "Too short.")]
    tok = WordTokenizer()
    openings = select_windows(docs, tok, 6, 6, positions="openings")
    assert all(w.start_char == 0 and w.start_token == 0 and len(w.ids) == 6 for w in openings)
    later = select_windows(docs, tok, 6, 6, positions="later")
    # The first sentence start at or after the opening window's text (6 words = 2 sentences).
    assert all(w.start_token == 6 and w.ids == openings[0].ids for w in later)
    anywhere = select_windows(docs, tok, 6, 6, positions="anywhere", seed=3)
    assert all(w.start_token % 3 == 0 and w.start_token <= 36 - 6 for w in anywhere)
    assert len({w.start_token for w in anywhere}) > 1  # not all at one position
    assert select_windows(docs, tok, 6, 6, positions="anywhere", seed=3) == anywhere  # seeded
    # offset skips qualifying documents (the short one never qualifies).
    assert [w.source for w in select_windows(docs, tok, 2, 6, positions="openings", offset=4)] == [
        w.source for w in openings[4:6]
    ]
    with pytest.raises(PPMechError, match="only 6 documents"):
        select_windows(docs, tok, 7, 6, positions="openings")


def test_normal_text_record_and_the_outside_check() -> None:
    windows = [
        Window("a", 0, 0, [1] * 10, 40),
        Window("b", 30, 8, [1] * 10, 50),
        Window("c", 9, 3, [1] * 10, 45),
    ]
    normal = NormalText.describe(windows, "wiki-en", "heldout", "anywhere", 10)
    assert normal.opening_fraction == pytest.approx(1 / 3) and normal.start_token_max == 8
    assert normal.chars_per_token_mean == pytest.approx(4.5)
    assert normal.chars_per_token_std == pytest.approx(0.5)
    assert NormalText.from_dict(normal.to_dict()) == normal
    assert outside_normal(normal, 10, 45) is None
    assert "30 tokens" in str(outside_normal(normal, 30, 135))  # 3x longer
    assert "4 tokens" in str(outside_normal(normal, 4, 18))  # 2.5x shorter
    assert "characters per token" in str(outside_normal(normal, 10, 20))  # 2.0 per token: 5 std away
    # One text 2 std away is not far outside; eight of them together are (8 standard errors).
    assert outside_normal(normal, 10, 35) is None
    assert input_outside_normal(normal, [10], [35]) is None
    assert "8 texts average 3.50" in str(input_outside_normal(normal, [10] * 8, [35] * 8))
    assert input_outside_normal(normal, [10] * 8, [45] * 8) is None


def test_calibration_keeps_its_normal_text_and_combined_thresholds(tmp_path: Path) -> None:
    windows = [Window(str(i), 0, 0, [1] * 20, 90) for i in range(3)]
    normal = NormalText.describe(windows, "wiki-en", "heldout", "anywhere", 20)
    cal = fit_calibration(
        _traces(n=60), IDENTITY, MonitorConfig(model="toy", sequences=60, tokens=20), normal_text=normal
    )
    assert math.isfinite(cal.combined_anomaly_threshold) and math.isfinite(cal.combined_cusum_threshold)
    back = Calibration.load(cal.save(tmp_path / "cal.json"))
    assert back.normal_text == normal
    assert back.combined_anomaly_threshold == cal.combined_anomaly_threshold
    assert back.combined_cusum_threshold == cal.combined_cusum_threshold
    data = json.loads((tmp_path / "cal.json").read_text())
    data["schema_version"] = 2  # a file from before the combined alarm and the normal-text record
    with pytest.raises(PPMechError, match="schema version 2, expected 3"):
        Calibration.from_dict(data)
