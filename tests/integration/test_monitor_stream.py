"""The energy monitor on the real SmolLM2-135M: streaming equals teacher forcing."""

from __future__ import annotations

import numpy as np
import pytest

from ppmech.engine.recorder import Recorder
from ppmech.engine.sampling import Decoding
from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.monitor.calibration import MonitorConfig
from ppmech.monitor.stream import EnergyMonitor, text_ids, trace_batch

pytestmark = pytest.mark.slow

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower."
)


@pytest.fixture(scope="module")
def monitor(smollm2: LoadedModel) -> EnergyMonitor:
    # 40 texts: 20 fit the moments, 20 held out set the thresholds (19 is the fewest for alpha 0.05).
    return EnergyMonitor.calibrate(smollm2, MonitorConfig(sequences=40, tokens=24, batch_size=20))


COLUMNS = ["V", "K", "H", "z_H", "cusum", "entropy", "msp", "neg_lse"]


def test_streaming_scores_equal_teacher_forced_scores(monitor: EnergyMonitor) -> None:
    forced = monitor.score(TEXT)
    stream = monitor.stream()
    results = [stream.step(t) for t in text_ids(monitor.lm, TEXT)]
    assert results[0] is None  # SmolLM2 has no BOS: nothing predicts the first token
    streamed = stream.result()
    assert streamed.tokens["token_id"].tolist() == forced.tokens["token_id"].tolist()
    assert np.isnan(forced.tokens["H"].iloc[0]) and np.isnan(streamed.tokens["H"].iloc[0])
    a = streamed.tokens[COLUMNS].to_numpy()[1:]
    b = forced.tokens[COLUMNS].to_numpy()[1:]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    assert streamed.sequence.anomaly == pytest.approx(forced.sequence.anomaly, rel=1e-3, abs=1e-3)
    assert streamed.sequence.mean_H == pytest.approx(forced.sequence.mean_H, abs=1e-4)
    assert streamed.sequence.alarm_at == forced.sequence.alarm_at


def test_chunked_feed_equals_single_steps(monitor: EnergyMonitor) -> None:
    ids = text_ids(monitor.lm, TEXT)
    chunked = monitor.stream()
    chunked.feed(ids[:7])
    chunked.feed(ids[7:20])
    chunked.feed(ids[20:])
    single = monitor.stream()
    for t in ids:
        single.step(t)
    a = chunked.result().tokens[COLUMNS].to_numpy()[1:]
    b = single.result().tokens[COLUMNS].to_numpy()[1:]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_trace_matches_the_recorder_in_teacher_mode(smollm2: LoadedModel) -> None:
    ids = text_ids(smollm2, TEXT)
    trace = trace_batch(smollm2, [ids])[0]
    rec = Recorder(smollm2, Decoding("teacher")).record([ids[:1]], len(ids) - 1, targets=[ids[1:]])
    np.testing.assert_allclose(trace.V, -rec.logp[0].double().numpy(), atol=1e-4)
    k = np.log(0.5 * rec.speed_sq[0].numpy())
    np.testing.assert_allclose(trace.K[1:], k[1:], atol=1e-4)
    # Left padding in a batch does not change a row.
    short = ids[:15]
    batched = trace_batch(smollm2, [ids, short])[1]
    alone = trace_batch(smollm2, [short])[0]
    np.testing.assert_allclose(batched.H[1:], alone.H[1:], atol=1e-3)


def test_generation_wrapper_streams_scores(monitor: EnergyMonitor) -> None:
    ids = text_ids(monitor.lm, TEXT)[:12]
    out = list(monitor.generate(ids, 6))
    assert len(out) == 6
    tokens = [t for t, _ in out]
    # The wrapper's tokens are the model's greedy choices.
    rec = Recorder(monitor.lm, Decoding("greedy")).record([ids], 6)
    assert tokens == rec.token_ids[0].tolist()
    assert all(np.isfinite(s.H) for _, s in out)
    assert out[-1][1].index == len(ids) - 2 + 6


def test_degenerate_repetition_raises_the_alarm(monitor: EnergyMonitor) -> None:
    normal = monitor.score(TEXT).sequence
    looped = monitor.score(" the end of the" * 12).sequence
    assert looped.alarm_at is not None
    assert looped.anomaly > normal.anomaly


def test_bad_input_is_refused(monitor: EnergyMonitor, smollm2_random: LoadedModel) -> None:
    with pytest.raises(PPMechError, match="empty"):
        monitor.score("   \n")
    with pytest.raises(PPMechError, match="needs at least"):
        monitor.score("Hi")
    long_text = "word " * (monitor.lm.max_context + 10)
    with pytest.raises(PPMechError, match="does not window"):
        monitor.score(long_text)
    with pytest.raises(PPMechError, match="was made for model"):
        EnergyMonitor(smollm2_random, monitor.calibration)


def test_calibration_windows_come_from_anywhere_in_the_documents(smollm2: LoadedModel) -> None:
    from ppmech.corpus import document_split, load_documents
    from ppmech.monitor.stream import calibration_windows

    config = MonitorConfig(sequences=60, tokens=24)
    windows = calibration_windows(smollm2, config)
    assert len(windows) == 60 and len({w.source for w in windows}) == 60
    starts = [w.start_token for w in windows]
    assert 0 in starts and max(starts) > 24  # openings and windows well after them
    docs = {d.source: d.text for d in load_documents("wiki-en")}
    for w in windows:
        text = docs[w.source]
        assert document_split(w.source, text) == "heldout"
        # The window is the text from a sentence start, tokenised afresh, as a user's paragraph.
        assert w.start_char == 0 or text[w.start_char - 1].isspace()
        assert (
            w.ids == list(smollm2.tokenizer(text[w.start_char :], add_special_tokens=False)["input_ids"])[:24]
        )
    # The benchmark's test texts come from documents after the calibration's: none shared.
    later = calibration_windows(smollm2, config, offset=60, positions="later")
    assert not {w.source for w in later} & {w.source for w in windows}
    assert all(w.start_token >= 24 for w in later)
    openings = calibration_windows(smollm2, MonitorConfig(sequences=60, tokens=24, positions="openings"))
    assert all(w.start_token == 0 for w in openings)


def test_calibrate_records_its_normal_text(monitor: EnergyMonitor) -> None:
    normal = monitor.calibration.normal_text
    assert normal is not None
    assert (normal.corpus, normal.split, normal.positions, normal.tokens, normal.count) == (
        "wiki-en",
        "heldout",
        "anywhere",
        24,
        40,
    )
    assert 0 < normal.opening_fraction < 1 and normal.start_token_max > 0
