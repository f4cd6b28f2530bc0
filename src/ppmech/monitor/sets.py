"""The monitor benchmark's configuration and its test sets, built offline and seeded.

Each sequence is the model's special prefix followed by ``tokens`` token ids; sets are built
at the id level (no re-tokenisation):

* ``normal``: openings of held-out English Wikipedia documents
  (:func:`ppmech.corpus.document_split`), disjoint from the calibration's documents.
* ``shuffled``: each normal text with its tokens randomly permuted.
* ``wiki-es``, ``wiki-fr``: the first ``tokens`` tokens of Spanish and French articles.
* ``random-chars``: strings of random printable ASCII characters, tokenised.
* ``repetition``: a random span of 2–12 tokens of each normal text, repeated.
* ``random-model``: greedy continuations (the paper's decoding) by the same
  architecture with random weights (seed 0) of the first 4 tokens of each
  normal text: 4 natural tokens, then ``tokens - 4`` generated ones.
* ``spliced``: the first ``splice_at`` tokens of each normal text, then a
  Spanish or French passage (alternating) to ``tokens`` tokens.

Fresh normal text on which false alarms are counted, three kinds
(:data:`FALSE_ALARM_KINDS`, ``false_alarm_sequences`` texts each, none from a calibration
document): ``openings`` (the ``normal`` set, then more openings), ``later windows`` (the
first sentence start after each held-out document's opening window,
:mod:`ppmech.monitor.windows`) and ``other split`` (windows placed like the calibration's,
from the ``prompts`` documents of English Wikipedia: no other English corpus is embedded).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from ppmech.errors import PPMechError
from ppmech.models.identity import LoadedModel
from ppmech.monitor.calibration import MonitorConfig, MonitorSettings
from ppmech.monitor.windows import NormalText, select_windows
from ppmech.settings import ModelSpec, Role, keys, setting

SETS = ("shuffled", "wiki-es", "wiki-fr", "random-chars", "repetition", "random-model", "spliced")
FALSE_ALARM_KINDS = ("openings", "later windows", "other split")


@dataclass(frozen=True)
class BenchmarkConfig(ModelSpec, MonitorSettings):
    """Configuration of ``ppmech monitor benchmark``.

    Model fields from :class:`~ppmech.settings.ModelSpec` (the pretrained model to monitor),
    the monitor's thresholds and batch size from
    :class:`~ppmech.monitor.calibration.MonitorSettings` (``seed`` also drives every random
    choice of the sets), and:

    Attributes:
        sequences: texts per set (normal and each shifted set).
        calibration_sequences: held-out English texts to calibrate on (disjoint from every test
            text); ``holdout_fraction`` of them set the thresholds (split conformal).
        false_alarm_sequences: fresh normal texts per kind of :data:`FALSE_ALARM_KINDS` on which
            the false-alarm rates are counted.
        splice_at: English tokens before the foreign passage in ``spliced``.
    """

    sequences: int = setting(100, role=Role.PROTOCOL, help="texts per set")
    calibration_sequences: int = setting(
        600,
        role=Role.PROTOCOL,
        help="held-out English texts to calibrate on (up to ~1500 on wiki-en)",
        flag="--calibration-sequences",
    )
    false_alarm_sequences: int = setting(
        200,
        role=Role.PROTOCOL,
        help="fresh normal texts per kind (openings, later windows, other split) for the false-alarm rates",
    )
    splice_at: int = setting(32, role=Role.PROTOCOL, help="token where the spliced set switches text")

    def __post_init__(self) -> None:
        ModelSpec.__post_init__(self)
        MonitorSettings.__post_init__(self)
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
                "use e.g. 200",
            )
        if self.tokens < 16:
            raise PPMechError(f"`tokens` must be at least 16 (got {self.tokens})", "use e.g. 64")
        if not 4 <= self.splice_at <= self.tokens - 4:
            raise PPMechError(
                f"`splice_at` must be between 4 and tokens - 4 = {self.tokens - 4} (got {self.splice_at})",
                "use e.g. half of `tokens`",
            )

    def monitor_config(self, **changes: object) -> MonitorConfig:
        """The calibration's config: every shared field as it is here (no field copied by hand)."""
        shared = {name: getattr(self, name) for name in keys(ModelSpec) + keys(MonitorSettings)}
        return MonitorConfig(**(shared | {"sequences": self.calibration_sequences} | changes))


@dataclass
class BenchmarkSets:
    """The id sequences of every set, and the splice index (into scored tokens) per spliced text.

    ``false_alarm`` holds the fresh normal texts per kind of :data:`FALSE_ALARM_KINDS`;
    ``normal_text`` records what the calibration texts were.
    """

    calibration: list[list[int]]
    normal_text: NormalText
    sets: dict[str, list[list[int]]]
    splice_index: list[int]
    false_alarm: dict[str, list[list[int]]]


def _foreign(lm: LoadedModel, corpus: str, n: int, tokens: int, seed: int) -> list[list[int]]:
    from ppmech.corpus import load_documents, select_prompts

    docs = load_documents(corpus)
    return [list(p.ids) for p in select_prompts(docs, lm.tokenizer, n, context_tokens=tokens, seed=seed)]


def false_alarm_sets(
    lm: LoadedModel, config: BenchmarkConfig, normal: list[list[int]]
) -> dict[str, list[list[int]]]:
    """The fresh normal texts of each kind of :data:`FALSE_ALARM_KINDS` (module docstring)."""
    from ppmech.corpus import load_documents

    n = config.false_alarm_sequences
    if n == 0:
        return {}
    english = load_documents("wiki-en")

    def windows(count: int, offset: int, positions: str, split: str) -> list[list[int]]:
        found = select_windows(
            english,
            lm.tokenizer,
            count,
            config.tokens,
            positions=positions,
            seed=config.seed,
            split=split,
            offset=offset,
        )
        return [w.ids for w in found]

    after = config.calibration_sequences  # qualifying held-out documents the calibration used
    more = n - len(normal)
    openings = normal[:n] + (windows(more, after + len(normal), "openings", "heldout") if more > 0 else [])
    return {
        "openings": openings,
        "later windows": windows(n, after, "later", "heldout"),
        "other split": windows(n, 0, config.positions, "prompts"),
    }


def build_sets(lm: LoadedModel, config: BenchmarkConfig, progress: bool = False) -> BenchmarkSets:
    """Build every set, deterministically from ``config.seed``."""
    from ppmech.corpus import special_prefix
    from ppmech.monitor.stream import calibration_sequences, calibration_windows

    n, tokens = config.sequences, config.tokens
    prefix = special_prefix(lm.tokenizer)
    p = len(prefix)
    mcfg = config.monitor_config()
    windows = calibration_windows(lm, mcfg)
    calibration = [w.ids for w in windows]
    normal = calibration_sequences(
        lm, config.monitor_config(sequences=n, positions="openings"), offset=config.calibration_sequences
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
        normal_text=NormalText.describe(windows, mcfg.corpus, mcfg.split, mcfg.positions, mcfg.tokens),
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
        false_alarm=false_alarm_sets(lm, config, normal),
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
