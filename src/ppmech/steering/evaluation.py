"""The paper's steering-quality evaluation (§E.3.1, Table 3), with pluggable judges.

Protocol (:func:`evaluate_steering`), defaults as in the paper:

1. ``prompts`` (50) Wikipedia prompts of ``context_tokens`` (50) tokens, drawn with
   :func:`ppmech.corpus.select_prompts` from the ``prompts`` side of the corpus split;
   each prompt's ground-truth next token is the article's own next token
   (``Prompt.continuation_ids[0]``).
2. One batched forward gives ``h_t``, the post-final-norm state at the last
   prompt position (and ``h_{t-1}`` for ΔH).
3. Algorithm 1 (:func:`ppmech.steering.algorithm.steer`) moves ``h_t`` toward the target
   (η = 0.5, K = 20).
4. The natural top-10 (from ``h_t``) and the steered top-10 (from ``ĥ_t``) lists
   are rated 1-10 by a judge (default: the offline ``reference-lm`` judge).
5. Table-3 statistics over the pairs where both scores exist
   (:func:`paired_statistics`), plus the share of items whose ground-truth token
   is in the natural / steered top-10, and the baselines table
   (:func:`ppmech.steering.baselines.baseline_comparison`) on the same states.

Everything is written to ``out``: ``items.csv`` (one row per prompt with both
lists, both scores and the steering numbers), ``baselines.csv`` (per state and
method, when baselines were run), ``summary.json`` (config, model, judge,
versions, statistics, tables, and each file's rows and SHA-256; written last).
The output is locked, staged and swapped in whole by :class:`ppmech.artifacts.Output`.
A judge that rates none of the lists is an error; missing ratings otherwise are
counted in ``statistics["judge_failures"]``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from ppmech.artifacts import Output, describe_file, write_csv, write_json
from ppmech.errors import PPMechError, check_seed
from ppmech.provenance import json_safe
from ppmech.steering.judges.base import Judge, JudgeItem, JudgeScore
from ppmech.steering.judges.registry import make_judge

__all__ = [
    "SteeringEvalConfig",
    "SteeringEvalResult",
    "build_judge",
    "evaluate_steering",
    "paired_statistics",
    "table3_frame",
]

TARGET_SOURCES = ("ground-truth", "sampled")


@dataclass(frozen=True)
class SteeringEvalConfig:
    """Everything that determines a steering evaluation.

    Attributes:
        model, weights, dtype, seed, trust_remote_code: the steered model (as ``measure``).
        corpus, text_field: the prompt source (default: embedded English Wikipedia).
        prompts: number of prompts (the paper: 50).
        context_tokens: prompt length in tokens (the paper: 50).
        top_k: length of the rated lists (the paper: 10).
        eta, max_steps: Algorithm 1's η and K.
        targets: ``ground-truth`` (the article's next token, the paper's protocol) or
            ``sampled`` (a token drawn from the model's own next-token distribution,
            seeded per prompt: the open question of model-sampled targets).
        judge: ``reference-lm`` (offline default), ``embedding`` or ``openai``.
        judge_model: reference model for ``reference-lm`` (default: the other
            embedded model), chat model for ``openai``.
        judge_url, judge_key_env, judge_cache, judge_retries: ``openai`` settings.
        baselines: also compare logit bias / random direction / unembedding row.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
            (the steered model and a reference-lm judge run there).
    """

    model: str = "smollm2-135m"
    weights: str = "pretrained"
    dtype: str = "float32"
    seed: int = 0
    trust_remote_code: bool = False
    corpus: str = "wiki-en"
    text_field: str = "text"
    prompts: int = 50
    context_tokens: int = 50
    top_k: int = 10
    eta: float = 0.5
    max_steps: int = 20
    targets: str = "ground-truth"
    judge: str = "reference-lm"
    judge_model: str | None = None
    judge_url: str | None = None
    judge_key_env: str = "OPENAI_API_KEY"
    judge_cache: str | None = None
    judge_retries: int = 5
    baselines: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        from ppmech.steering.algorithm import SteeringConfig

        SteeringConfig(eta=self.eta, max_steps=self.max_steps)  # validates η and K
        if self.targets not in TARGET_SOURCES:
            raise PPMechError(
                f"unknown `targets` {self.targets!r}", f"use one of {', '.join(TARGET_SOURCES)}"
            )
        if self.top_k < 1:
            raise PPMechError(f"`top_k` must be >= 1 (got {self.top_k})", "use e.g. 10")
        check_seed(self.seed)
        if self.prompts < 1:
            raise PPMechError(f"`prompts` must be at least 1 (got {self.prompts})", "use e.g. 50")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SteeringEvalResult:
    """What :func:`evaluate_steering` produced.

    Attributes:
        path: the output directory (or ``None``).
        items: one row per prompt (see ``items.csv``).
        statistics: :func:`paired_statistics` plus top-10 shares and counts.
        table: the Table-3 row(s) as a frame.
        baselines: the baselines summary table (empty if not run).
        summary: everything written to ``summary.json``.
        files: the files written under ``path`` (none when ``path`` is ``None``).
    """

    path: Path | None
    items: pd.DataFrame
    statistics: dict[str, Any]
    table: pd.DataFrame
    baselines: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- statistics


def paired_statistics(natural: ArrayLike, steered: ArrayLike) -> dict[str, Any]:
    """Table-3 statistics of paired scores, in float64.

    Pairs where either score is missing (NaN/None) are excluded and counted.
    With ``n`` complete pairs and ``d_i = steered_i - natural_i``:

    * means and sample standard deviations (``ddof = 1``) of each side;
    * paired t-test: ``t = mean(d) / (sd(d)/√n)``, two-sided ``p`` from Student's t
      with ``n-1`` degrees of freedom (``scipy.stats.ttest_rel``);
    * Cohen's ``d_z = mean(d) / sd(d)`` (the effect size of paired data, the one
      reported as "Cohen's d" here), and for comparison
      ``d_av = mean(d) / √((sd_nat² + sd_steer²)/2)`` (the two-sample form).

    Returns:
        dict with ``n_items, n_pairs, n_missing_pairs, natural_mean, natural_sd,
        steered_mean, steered_sd, mean_diff, t, p_value, cohens_dz, cohens_dav``;
        undefined values (fewer than 2 pairs, zero spread) are NaN.
    """
    from scipy import stats

    nat = np.asarray(pd.to_numeric(pd.Series(natural, dtype=object), errors="coerce"), dtype=np.float64)
    st = np.asarray(pd.to_numeric(pd.Series(steered, dtype=object), errors="coerce"), dtype=np.float64)
    if nat.shape != st.shape:
        raise ValueError("natural and steered scores must pair up")
    ok = ~np.isnan(nat) & ~np.isnan(st)
    nat, st = nat[ok], st[ok]
    n = int(ok.sum())
    nan = float("nan")
    out: dict[str, Any] = {
        "n_items": len(ok),
        "n_pairs": n,
        "n_missing_pairs": int(len(ok) - n),
        "natural_mean": float(nat.mean()) if n else nan,
        "natural_sd": float(nat.std(ddof=1)) if n > 1 else nan,
        "steered_mean": float(st.mean()) if n else nan,
        "steered_sd": float(st.std(ddof=1)) if n > 1 else nan,
        "mean_diff": float((st - nat).mean()) if n else nan,
        "t": nan,
        "p_value": nan,
        "cohens_dz": nan,
        "cohens_dav": nan,
    }
    if n > 1:
        diff = st - nat
        sd_d = float(diff.std(ddof=1))
        if sd_d > 0:
            res = stats.ttest_rel(st, nat)
            out["t"] = float(res.statistic)
            out["p_value"] = float(res.pvalue)
            out["cohens_dz"] = float(diff.mean() / sd_d)
        pooled = math.sqrt((out["natural_sd"] ** 2 + out["steered_sd"] ** 2) / 2)
        if pooled > 0:
            out["cohens_dav"] = float(diff.mean() / pooled)
    return out


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f} ± {sd:.2f}" if not math.isnan(sd) else f"{mean:.2f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table3_frame(model: str, statistics: dict[str, Any]) -> pd.DataFrame:
    """One Table-3-style row: means ± sd, paired-t p, Cohen's d_z (and d_av), top-10 shares."""
    s = statistics
    return pd.DataFrame(
        [
            {
                "model": model,
                "N": s["n_pairs"],
                "natural mean ± sd": _pm(s["natural_mean"], s["natural_sd"]),
                "steered mean ± sd": _pm(s["steered_mean"], s["steered_sd"]),
                "p (paired t)": _p(s["p_value"]),
                "Cohen's d_z": s["cohens_dz"],
                "d_av": s["cohens_dav"],
                "target in natural top-10": f"{s['target_in_natural_topk']}/{s['n_items']}",
                "target in steered top-10": f"{s['target_in_steered_topk']}/{s['n_items']}",
                "missing pairs": s["n_missing_pairs"],
            }
        ]
    )


# --------------------------------------------------------------------------- judge


def build_judge(config: SteeringEvalConfig, reference_lm: Any = None) -> Judge:
    """The judge named by ``config.judge`` with its options."""
    if config.judge == "reference-lm":
        from ppmech.steering.judges.reference import default_reference

        options: dict[str, Any] = {
            "model": config.judge_model or default_reference(config.model),
            "device": config.device,
        }
        if reference_lm is not None:
            options["lm"] = reference_lm
        return make_judge("reference-lm", **options)
    if config.judge == "embedding":
        return make_judge("embedding")
    if config.judge == "openai":
        if not config.judge_url:
            raise PPMechError(
                "`judge` openai needs `judge_url`", "pass e.g. `judge_url` http://127.0.0.1:8000/v1"
            )
        if not config.judge_model:
            raise PPMechError("`judge` openai needs `judge_model`", "pass the endpoint's model name")
        return make_judge(
            "openai",
            base_url=config.judge_url,
            model=config.judge_model,
            api_key_env=config.judge_key_env,
            max_retries=config.judge_retries,
            cache_dir=config.judge_cache,
        )
    return make_judge(config.judge)


# --------------------------------------------------------------------------- protocol


def judge_failures(scores: list[tuple[JudgeScore, JudgeScore]], judge_name: str) -> dict[str, Any]:
    """Count the ratings a judge could not give, and refuse a judge that gave none.

    Returns:
        ``{"missing": n, "ratings": 2 * items, "reasons": {error: count}, "first_reply": str,
        "first_error": str}`` (the last two ``None`` when nothing is missing).

    Raises:
        PPMechError: every rating is missing (quoting the first reply).
    """
    flat = [s for pair in scores for s in pair]
    failed = [s for s in flat if s.score is None]
    reasons: dict[str, int] = {}
    for s in failed:
        reasons[s.error or "no score"] = reasons.get(s.error or "no score", 0) + 1
    first = failed[0] if failed else None
    if flat and len(failed) == len(flat):
        assert first is not None
        reply = " ".join(str(first.raw).split())[:200]
        raise PPMechError(
            f"the {judge_name} judge gave no usable rating for any of the {len(flat)} lists "
            f"({first.error or 'no score'}); its first reply was {reply!r}",
            "check the judge's model and endpoint (`judge_model`, `judge_url`), or use another `judge`",
        )
    return {
        "missing": len(failed),
        "ratings": len(flat),
        "reasons": reasons,
        "first_reply": None if first is None else str(first.raw),
        "first_error": None if first is None else first.error,
    }


def evaluate_steering(
    config: SteeringEvalConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    lm: Any = None,
    judge: Judge | None = None,
) -> SteeringEvalResult:
    """Run the E.3.1 protocol (module docstring) and write ``out``.

    Args:
        config: the evaluation settings.
        out: output directory (nothing is written when ``None``).
        overwrite: replace an evaluation ppmech wrote at ``out`` (once the new one is complete).
        progress: tqdm bars on stderr.
        lm: an already loaded steered model (else loaded from ``config``).
        judge: a judge to use instead of the one ``config`` names.

    Raises:
        PPMechError: bad settings, a taken ``out`` (see :class:`~ppmech.artifacts.Output`),
            or a judge that rated none of the lists.
    """
    from ppmech.steering.algorithm import SteeringConfig

    steering_config = SteeringConfig(eta=config.eta, max_steps=config.max_steps)
    out_path = Path(out) if out is not None else None
    if out_path is None:
        return _evaluate(config, steering_config, None, progress, lm, judge)
    # The output is locked (and staged) for the whole evaluation: a second writer is refused
    # at once, and an existing evaluation is replaced only when the new one is complete.
    with Output(out_path, "steering-evaluation", overwrite=overwrite) as output:
        result = _evaluate(config, steering_config, output, progress, lm, judge)
    result.path = out_path
    return result


def _evaluate(
    config: SteeringEvalConfig,
    steering_config: Any,
    output: Output | None,
    progress: bool,
    lm: Any,
    judge: Judge | None,
) -> SteeringEvalResult:
    """:func:`evaluate_steering` once its output (if any) is open."""
    from ppmech.corpus import load_documents, select_prompts
    from ppmech.engine.decoder import Engine
    from ppmech.engine.hooks import FINAL_NORM
    from ppmech.models.architectures import readout
    from ppmech.models.device import device_record
    from ppmech.models.loading import load_configured
    from ppmech.provenance import versions
    from ppmech.steering.algorithm import steer
    from ppmech.steering.baselines import baseline_comparison, baseline_table

    started = time.time()
    if lm is None:
        lm = load_configured(config)
    judge = judge if judge is not None else build_judge(config)
    tok = lm.tokenizer
    docs = load_documents(config.corpus, text_field=config.text_field)
    prompts = select_prompts(
        docs,
        tok,
        config.prompts,
        config.context_tokens,
        continuation_tokens=1,
        seed=config.seed,
        split="prompts",
    )
    engine = Engine(lm)
    with torch.no_grad(), engine.start([p.ids for p in prompts]) as session:
        states = session.run_pending().states[FINAL_NORM].float()
    h = states[:, -1, :]
    h_prev = states[:, -2, :]
    read = readout(lm.model)
    lp_nat = read.log_probs(h)
    if config.targets == "ground-truth":
        targets = torch.tensor([p.continuation_ids[0] for p in prompts], dtype=torch.long)
    else:
        gens = [torch.Generator().manual_seed(config.seed * 100_003 + p.index) for p in prompts]
        probs = lp_nat.exp().cpu()
        targets = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])
    result = steer(read, h, targets.to(lm.device), steering_config, h_prev=h_prev)
    lp_st = read.log_probs(result.hidden)
    top_nat = lp_nat.topk(config.top_k, dim=-1).indices.cpu()
    top_st = lp_st.topk(config.top_k, dim=-1).indices.cpu()

    def decode(row: torch.Tensor) -> list[str]:
        return [tok.decode([int(i)]) for i in row.tolist()]

    judge_items: list[tuple[JudgeItem, JudgeItem]] = []
    for i, p in enumerate(prompts):
        judge_items.append((JudgeItem(p.text, decode(top_nat[i])), JudgeItem(p.text, decode(top_st[i]))))
    scores: list[tuple[JudgeScore, JudgeScore]] = []
    for nat_item, st_item in tqdm(judge_items, desc=f"judge ({judge.name})", disable=not progress):
        a, b = judge.score([nat_item, st_item])
        scores.append((a, b))
    failures = judge_failures(scores, judge.name)

    frame = result.frame()
    rows = []
    for i, p in enumerate(prompts):
        tgt = int(targets[i])
        nat_ids, st_ids = top_nat[i].tolist(), top_st[i].tolist()
        sn, ss = scores[i]
        rows.append(
            {
                "item": i,
                "source": p.source,
                "context": p.text,
                "target_id": tgt,
                "target_token": tok.decode([tgt]),
                "p_before": float(frame.loc[i, "p_before"]),
                "p_after": float(frame.loc[i, "p_after"]),
                "steps": int(frame.loc[i, "steps"]),
                "delta_norm": float(frame.loc[i, "delta_norm"]),
                "reached": bool(frame.loc[i, "reached"]),
                "delta_H": float(frame.loc[i, "delta_H"]),
                "target_in_natural_topk": tgt in nat_ids,
                "target_in_steered_topk": tgt in st_ids,
                "natural_topk": json.dumps(judge_items[i][0].tokens, ensure_ascii=False),
                "steered_topk": json.dumps(judge_items[i][1].tokens, ensure_ascii=False),
                "natural_score": sn.score if sn.score is not None else float("nan"),
                "steered_score": ss.score if ss.score is not None else float("nan"),
                "natural_raw": sn.raw,
                "steered_raw": ss.raw,
                "natural_error": sn.error,
                "steered_error": ss.error,
            }
        )
    items = pd.DataFrame(rows)
    statistics = paired_statistics(items["natural_score"], items["steered_score"])
    statistics["target_in_natural_topk"] = int(items["target_in_natural_topk"].sum())
    statistics["target_in_steered_topk"] = int(items["target_in_steered_topk"].sum())
    statistics["judge_failures"] = failures
    statistics["n_reached"] = int(items["reached"].sum())
    statistics["n_steered"] = int((items["steps"] > 0).sum())
    statistics["mean_steps"] = float(items["steps"].mean())
    statistics["mean_delta_H_steered_rows"] = (
        float(items.loc[items["steps"] > 0, "delta_H"].mean()) if (items["steps"] > 0).any() else float("nan")
    )
    # States already at η are not moved, so their two lists are identical; the
    # comparison restricted to the moved states is reported beside the full one.
    moved = items["steps"] > 0
    statistics["moved_only"] = paired_statistics(
        items.loc[moved, "natural_score"], items.loc[moved, "steered_score"]
    )
    table = table3_frame(config.model, statistics)
    baselines = pd.DataFrame()
    long = pd.DataFrame()
    if config.baselines:
        long = baseline_comparison(read, h, targets.to(lm.device), result, h_prev=h_prev, seed=config.seed)
        baselines = baseline_table(long) if len(long) else pd.DataFrame()
    summary = {
        "kind": "steering-evaluation",
        "config": config.to_dict(),
        "steering": steering_config.to_dict(),
        "model": lm.identity.to_dict(),
        "judge": judge.describe(),
        "versions": versions(),
        "execution": device_record(lm.device),
        "statistics": statistics,
        "table3": table.to_dict(orient="records"),
        "baselines": baselines.to_dict(orient="records"),
        "seconds": time.time() - started,
    }
    files: list[str] = []
    if output is not None:
        tables = {"items.csv": items, **({"baselines.csv": long} if len(long) else {})}
        for name, frame in tables.items():
            write_csv(output.path / name, frame)
        summary["files"] = {name: describe_file(output.path, name, rows=len(f)) for name, f in tables.items()}
        write_json(output.path / "summary.json", json_safe(summary))
        files = output.commit()
    return SteeringEvalResult(
        path=None,
        items=items,
        statistics=statistics,
        table=table,
        baselines=baselines,
        summary=summary,
        files=files,
    )
