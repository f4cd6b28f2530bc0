"""``ppmech verify``: run the protocol on the embedded models and write the claims ledger.

The orchestrator: :mod:`.plan` lists the runs, :mod:`.store` records or reuses
them and caches analyses, :mod:`ppmech.claims.run_analyses` and
:mod:`.model_analyses` measure, :mod:`ppmech.claims.ledger` judges and
:mod:`ppmech.claims.render` / :mod:`ppmech.claims.sections` write ``claims.md``
and ``claims.json``. The core runs also get every null model of
:func:`ppmech.nulls.registry` ("beyond the paper").
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ppmech import nulls as N
from ppmech.artifacts import check_output_dir, open_output_dir, write_output_file
from ppmech.claims import analyses as A
from ppmech.claims.ledger import evaluate
from ppmech.claims.render import ledger_json, render_markdown
from ppmech.claims.run_analyses import (
    curvature_analysis,
    last_window,
    null_analyses,
    same_prompts_cv,
    steps_analyses,
)
from ppmech.claims.sections import sections
from ppmech.claims.verify.model_analyses import hidden_analyses, layer_analysis, layer_estimates
from ppmech.claims.verify.plan import RunPlan, VerifyConfig, plan_runs
from ppmech.claims.verify.store import cache_key, cached, ensure_run, model_for_run
from ppmech.provenance import versions
from ppmech.runs import Run, write_json
from ppmech.statistics import MIN_TRAJECTORIES_FOR_CI, Estimate


@dataclass
class VerifyResult:
    """What :func:`verify` returns."""

    out: Path
    ledger: pd.DataFrame
    measurements: dict[str, Estimate]
    tables: dict[str, pd.DataFrame]
    wall_seconds: float


def analyse_plan(
    plan: RunPlan, run: Run, config: VerifyConfig, cache_root: Path
) -> tuple[dict[str, Estimate], dict[str, pd.DataFrame]]:
    """Every analysis of one run (from the cache when the run and settings are unchanged).

    All runs get the paper's step statistics and every registered null model (so each
    conserved-type ledger row has its controls); runs with hidden states get the curvature;
    the core runs also get the model-facing analyses (interpolation, Euler–Lagrange, layers).
    """
    sizes = config.sizes
    core = plan.condition in ("pretrained", "random")
    teacher = plan.condition.endswith("-teacher")
    settings = {
        "n_boot": config.n_boot,
        "seed": config.seed,
        "sizes": asdict(sizes),
        "core": core,
        "teacher": teacher,
        "nulls": [m.name for m in N.registry()],
    }
    key = cache_key(run, "run", settings)
    cache_file = cache_root / f"{plan.name}.json"
    hit = cached(cache_file, key)
    if hit is not None:
        est = {k: Estimate.from_dict(v) for k, v in hit["estimates"].items()}
        return est, {k: pd.DataFrame(v) for k, v in hit["tables"].items()}
    est = steps_analyses(run, config.n_boot, config.seed)
    tables: dict[str, pd.DataFrame] = {}
    if plan.condition == "pretrained-long":
        h_parts = [p[:, 0] for p in A.split_by_trajectory(run.steps, ["H"])]
        windows, last = last_window(h_parts, sizes.window, config.n_boot, config.seed)
        tables["cv_by_position"] = windows
        if last is not None:
            est["last_window_cv"] = last
    # The core runs always get the null models (a run too small for them is an error there); the
    # others get them when they have enough trajectories for a CI (else their controls read
    # "not measured" and a passing conserved-type claim stays inconclusive).
    if core or teacher or run.steps["trajectory"].nunique() >= MIN_TRAJECTORIES_FOR_CI:
        nulls, scale = null_analyses(run, config.n_boot, config.seed, sizes.n_perm)
        est.update(nulls)
        tables["scale"] = scale
    if core or teacher:
        est.update(curvature_analysis(run, config.n_boot, config.seed))
    if core:
        lm = model_for_run(run, config.device)
        est.update(hidden_analyses(run, lm, sizes, config.n_boot, config.seed))
        n_layer = sizes.layer_trajectories[plan.model]
        layers = layer_analysis(run, lm, n_layer, sizes.n_perm, config.seed)
        tables["layers"] = layers
        est.update(layer_estimates(layers, n_layer))
        del lm
    write_json(
        cache_file,
        {
            "key": key,
            "estimates": {k: v.to_dict() for k, v in est.items()},
            "tables": {k: json.loads(v.to_json(orient="records")) for k, v in tables.items()},
        },
    )
    return est, tables


def verify(config: VerifyConfig, progress: bool = True, command: str = "ppmech verify") -> VerifyResult:
    """Run (or reuse) every run, analyse them, and write ``claims.md`` and ``claims.json``."""
    started = time.perf_counter()
    # The output rule (ppmech.artifacts): a new directory or one an earlier verify made (its runs
    # are reused), never a user's directory or a measure run; checked before anything is read.
    out = check_output_dir(config.out, kind="verify", replace=True, flag="`out`")
    table5: dict[str, Estimate] = {}
    if config.sweep:  # read first: a bad --sweep fails before any run is recorded
        from ppmech.sweep.ledger import table5_measurements

        table5 = table5_measurements(config.sweep, config.n_boot, config.seed)
    open_output_dir(out, kind="verify", flag="`out`")
    runs_root = out / "runs"
    cache_root = out / "analyses"
    runs_root.mkdir(parents=True, exist_ok=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    sizes = config.sizes
    plans = plan_runs(config)
    runs: dict[str, Run] = {}
    for plan in tqdm(plans, desc="runs", unit="run", disable=not progress, file=sys.stderr):
        runs[plan.name] = ensure_run(plan, runs_root, progress)

    measurements: dict[str, Estimate] = {}
    tables: dict[str, pd.DataFrame] = {}
    for plan in tqdm(plans, desc="analyses", unit="run", disable=not progress, file=sys.stderr):
        est, extra_tables = analyse_plan(plan, runs[plan.name], config, cache_root)
        for k, v in est.items():
            if k.startswith("layers_"):
                measurements[f"{plan.model}/{plan.condition}-layers/{k.removeprefix('layers_')}"] = v
            else:
                measurements[f"{plan.model}/{plan.condition}/{k}"] = v
        for k, v in extra_tables.items():
            tables[f"{plan.name}/{k}"] = v

    # Precision: compare bfloat16 with float32 on the same prompts (prompt i is the same
    # document in both, since prompt selection is a seeded prefix).
    for plan in plans:
        if plan.condition != "pretrained-bf16":
            continue
        f32 = runs[f"{plan.model}-pretrained"]
        n = plan.config.prompts
        if f32.config["prompts"] >= n:
            measurements[f"{plan.model}/pretrained-f32-same/global_cv"] = same_prompts_cv(
                f32.steps, n, config.n_boot, config.seed
            )

    claims = None
    models = list(config.models)
    if table5:
        from ppmech.claims.ledger import CLAIMS
        from ppmech.sweep.ledger import T5_SWEEP, ledger_models

        measurements.update(table5)
        models += ledger_models(table5)
        claims = [T5_SWEEP if c.id == "T5" else c for c in CLAIMS]
    rows = evaluate(measurements, models, claims)
    ledger = pd.DataFrame([r.to_dict() for r in rows])
    wall = time.perf_counter() - started
    meta = {
        "command": command,
        "models": list(config.models),
        "quick": config.quick,
        "sizes": asdict(sizes),
        "n_boot": config.n_boot,
        "seed": config.seed,
        "versions": versions(),
        "wall_seconds": round(wall, 1),
        "runs": {
            p.name: {"purpose": p.purpose, "config": p.config.to_dict(), "path": str(runs[p.name].path)}
            for p in plans
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    extra = sections(
        [(p.name, f"{p.model}/{p.condition}", runs[p.name], p.purpose) for p in plans],
        tables,
        sizes,
        config.quick,
        measurements,
    )
    text = render_markdown(rows, meta, extra)
    write_output_file(out / "claims.md", text, kind="markdown", replace=True, flag="`out`")
    payload = ledger_json(rows, meta, measurements)
    payload["tables"] = {k: json.loads(v.to_json(orient="records")) for k, v in tables.items()}
    write_output_file(out / "claims.json", payload, kind="json", replace=True, flag="`out`")
    return VerifyResult(out=out, ledger=ledger, measurements=measurements, tables=tables, wall_seconds=wall)


def summary_frame(result: VerifyResult) -> pd.DataFrame:
    """The short table printed at the end of ``ppmech verify``."""
    cols = ["id", "model", "paper", "measured", "verdict"]
    return result.ledger[cols] if len(result.ledger) else pd.DataFrame(columns=cols)
