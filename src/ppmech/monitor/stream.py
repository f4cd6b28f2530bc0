"""The model-facing monitor: teacher-forced traces, the streaming API and :class:`EnergyMonitor`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from ppmech.engine.decoder import Engine, Session
from ppmech.engine.hooks import FINAL_NORM
from ppmech.engine.sampling import Decoding, TokenChooser
from ppmech.errors import PPMechError
from ppmech.mechanics import log_energy, log_kinetic, speed_squared, step_speed_squared, step_terms
from ppmech.models.identity import LoadedModel
from ppmech.monitor.calibration import Calibration, MonitorConfig, fit_calibration
from ppmech.monitor.results import MonitorScore, score_trace
from ppmech.monitor.scoring import F64, MIN_TOKENS, TokenTrace, cusum_step
from ppmech.monitor.windows import NormalText, Window, select_windows


def distribution_terms(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, F64]:
    """``V``, ``entropy``, ``msp`` and ``neg_lse`` from logits predicting ``targets``.

    ``V`` and the entropy come from :func:`ppmech.mechanics.step_terms` (the one home of the
    per-step terms: float32 log-softmax, chosen token's surprisal, entropy); ``msp`` and
    ``neg_lse`` are the benchmark's baseline signals, from the same log-probabilities and logits.

    Args:
        logits: ``[n, V]`` logits (any float dtype; computed in float32).
        targets: ``[n]`` int64 token ids.

    Returns:
        dict of ``[n]`` float64 arrays.
    """
    terms = step_terms(logits, targets)
    lse = torch.logsumexp(logits.float(), dim=-1)
    msp = terms.logprobs.max(-1).values.exp()
    return {
        "V": terms.surprisal.double().cpu().numpy(),
        "entropy": terms.entropy.double().cpu().numpy(),
        "msp": msp.double().cpu().numpy(),
        "neg_lse": (-lse).double().cpu().numpy(),
    }


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
            f"the text has only {len(ids)} token(s) (special prefix included); the monitor needs "
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
    from ppmech.models.architectures import readout

    for ids in sequences:
        check_ids(lm, ids)
    read = readout(lm.model)
    with Engine(lm).start(sequences) as session:
        states = session.run_pending().states[FINAL_NORM]
    width = states.shape[1]
    out = []
    for row, seq in enumerate(sequences):
        n = len(seq)
        h = states[row, width - n :]  # [n, d], position i predicts u_{i+1}
        targets = torch.tensor(list(seq[1:]), dtype=torch.long, device=h.device)
        terms = distribution_terms(read.logits(h[:-1]), targets)
        k = log_kinetic(speed_squared(h[:-1]).cpu().numpy())
        out.append(
            TokenTrace(
                token_ids=np.asarray(seq[1:], dtype=np.int64),
                V=terms["V"],
                K=k,
                H=log_energy(k, terms["V"]),
                entropy=terms["entropy"],
                msp=terms["msp"],
                neg_lse=terms["neg_lse"],
                final_state=h[-1].double().cpu().numpy(),
            )
        )
    return out


def trace_many(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    batch_size: int | str = "auto",
    progress: str | None = None,
) -> list[TokenTrace]:
    """:func:`trace_batch` over many sequences; ``progress`` names a tqdm bar on stderr.

    ``batch_size`` means what it means for ``measure`` (:class:`ppmech.engine.batching.BatchSizer`):
    a number of texts per forward pass, or ``auto`` (50 on the CPU, more on an accelerator), halved
    when a batch runs out of memory.
    """
    from tqdm.auto import tqdm

    from ppmech.engine.batching import BatchSizer

    bar = tqdm(total=len(sequences), desc=progress, disable=progress is None, unit="text", leave=False)

    def run(batch: list[Sequence[int]]) -> list[TokenTrace]:
        traces = trace_batch(lm, batch)
        _release_freed_memory()
        bar.update(len(batch))
        return traces

    with bar:
        batches = BatchSizer(batch_size, lm.device).map(list(sequences), run)
    return [t for batch in batches for t in batch]


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
        self.engine = monitor.engine
        self.session: Session | None = None
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
        self._check_room(len(ids))
        if self.session is None:
            self.session = self.engine.start([ids])
        else:
            self.session.feed(torch.tensor([ids], dtype=torch.long, device=self.engine.device))
        # The model's own logits at every fed position: no second unembedding pass.
        out = self.session.run_pending(logits_to_keep=len(ids))
        logits = out.logits[0].float()
        states = out.states[FINAL_NORM][0]  # [len, d]
        scored = []
        for i, tok in enumerate(ids):
            row = self._score(tok)
            if row is not None:
                scored.append(row)
            self._advance(logits[i], states[i])
        return scored

    def _check_room(self, extra: int) -> None:
        if len(self.ids) + extra > self.lm.max_context:
            raise PPMechError(
                f"the stream would reach {len(self.ids) + extra} tokens, more than the model's "
                f"{self.lm.max_context}-token context",
                "start a new stream (the monitor does not window)",
            )

    def _advance(self, logits: torch.Tensor, h: torch.Tensor) -> None:
        """The model ran one more position: its next-token logits ``[V]`` and state ``[d]``."""
        self.next_logits = logits
        self._h_before, self._h_last = self._h_last, h

    def _score(self, tok: int) -> TokenScore | None:
        """Score token ``tok`` against the current next-token logits and states; it joins :attr:`ids`."""
        self.ids.append(tok)
        if self.next_logits is None or self._h_last is None:
            return None
        cal = self.monitor.calibration
        sig = cal.signals
        terms = distribution_terms(self.next_logits[None, :], torch.tensor([tok]))
        v = float(terms["V"][0])
        k = (
            float(log_kinetic(step_speed_squared(self._h_before, self._h_last)))
            if self._h_before is not None
            else float("nan")
        )
        h = float(log_energy(np.array(k), np.array(v)))
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
            alarm=c > sig["H"].cusum_threshold,
            entropy=float(terms["entropy"][0]),
            msp=float(terms["msp"][0]),
            neg_lse=float(terms["neg_lse"][0]),
        )
        self._rows.append(row)
        return row

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
        self.engine = Engine(lm)

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
        from ppmech.provenance import versions

        config = config or MonitorConfig(model=lm.identity.spec)
        normal = None
        if sequences is None:
            windows = calibration_windows(lm, config)
            sequences = [w.ids for w in windows]
            normal = NormalText.describe(
                windows, config.corpus, config.split, config.positions, config.tokens
            )
        traces = trace_many(lm, sequences, config.batch_size, "calibrating" if progress else None)
        return cls(lm, fit_calibration(traces, lm.identity, config, versions(), normal_text=normal))

    @classmethod
    def load(cls, lm: LoadedModel, path: str | Path) -> EnergyMonitor:
        """Read a calibration file; refuse it if it was made for another model or tokenizer."""
        cal = Calibration.load(path)
        cal.check_model(lm.identity, source=f"calibration file {path}")
        return cls(lm, cal)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the calibration JSON atomically (see :meth:`Calibration.save`)."""
        return self.calibration.save(path, overwrite=overwrite)

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

    def score_many(self, texts: Sequence[str], batch_size: int | str = "auto") -> list[MonitorScore]:
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
        stream._check_room(new_tokens)
        session = stream.session
        assert session is not None
        chooser = TokenChooser(Decoding(), 1, self.engine.device)
        last: int | None = None
        try:
            # (No grad-mode context around the yields: it would leak into the caller's frame.)
            for step in self.engine.steps(session, new_tokens, chooser):
                if step.t > 0:  # the engine ran the previous token: the stream moves on
                    stream._advance(step.logits[0], step.states[FINAL_NORM][0])
                last = int(step.tokens[0])
                score = stream._score(last)
                assert score is not None
                yield last, score
        finally:
            if last is not None and session.pending is None and len(stream.ids) > session.length:
                # The last token was scored but not run: run it, as :meth:`MonitorStream.step` would.
                session.feed(torch.tensor([[last]], dtype=torch.long, device=self.engine.device))
                with torch.no_grad():
                    out = session.run_pending()
                stream._advance(out.logits[0, -1].float(), out.states[FINAL_NORM][0, -1])


def calibration_windows(
    lm: LoadedModel, config: MonitorConfig, offset: int = 0, positions: str | None = None
) -> list[Window]:
    """The normal texts a calibration uses: ``config.sequences`` windows of ``config.tokens`` tokens
    from ``config.corpus`` (``config.split`` side), at ``config.positions`` (or ``positions``),
    chosen with ``config.seed`` (:func:`ppmech.monitor.windows.select_windows`).

    ``offset`` skips that many qualifying documents first (the benchmark takes its
    held-out *test* texts after the calibration's).
    """
    from ppmech.corpus import load_documents

    docs = load_documents(config.corpus)
    return select_windows(
        docs,
        lm.tokenizer,
        config.sequences,
        config.tokens,
        positions=positions or config.positions,
        seed=config.seed,
        split=None if config.split == "all" else config.split,
        offset=offset,
    )


def calibration_sequences(lm: LoadedModel, config: MonitorConfig, offset: int = 0) -> list[list[int]]:
    """The id sequences of :func:`calibration_windows`."""
    return [w.ids for w in calibration_windows(lm, config, offset)]
