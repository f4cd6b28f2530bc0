"""``ppmech verify``: run the protocol on the embedded models and write the claims ledger.

For each model, the core runs are the paper's protocol (§D.3.1: 100 Wikipedia
prompts of 50 tokens, 100 greedy tokens), pretrained and random-weight, with
hidden states saved; beside them, the same weights teacher-forced on articles'
own continuations (hidden states saved), for the curvature of natural text. The
core runs also get the null models and confounder controls of
:mod:`ppmech.nulls` ("beyond the paper"). The open-question runs vary one thing at a time
(language, horizon, decoding, context length, compute precision) and use fewer
prompts where they are expensive; :func:`plan_runs` is the list, and the
ledger states each run's size.

Every run directory lives under ``OUT/runs/`` and is reused when it is complete
and was made with the same settings (a second ``ppmech verify`` only recomputes
what changed); a directory made with other settings is an error, not silently
overwritten. Analyses are cached under ``OUT/analyses/``, keyed by the run and
the analysis settings.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ppmech import nulls as N
from ppmech.claims import analyses as A
from ppmech.claims.ledger import evaluate
from ppmech.claims.render import ledger_json, render_markdown, verdict_counts
from ppmech.claims.scaling import scaling_from_runs
from ppmech.errors import PPMechError, check_seed
from ppmech.measure import EXECUTION_KEYS, MeasureConfig, measure
from ppmech.models.identity import LoadedModel
from ppmech.models.loading import EMBEDDED_MODELS, load_model
from ppmech.provenance import versions
from ppmech.runs import Run, load_run, write_json
from ppmech.statistics import Estimate, require_trajectories, trajectory_bootstrap
from ppmech.tables import markdown_table

ANALYSIS_VERSION = 2  # 2: null models and confounder controls
#: Fewest bootstrap replicates that give a 95% percentile CI one replicate in each tail.
MIN_BOOT_FOR_VERDICTS = 40
#: Run settings that change only a run's own summary CIs, not what it recorded:
#: the ledger recomputes every CI with its own ``n_boot``, so these do not block reuse.
SUMMARY_ONLY_KEYS = ("n_boot",)
EMBEDDED = ("smollm2-135m", "gemma3-270m")


@dataclass(frozen=True)
class RunPlan:
    """One run of the verification: its name, settings and why it is there."""

    model: str
    condition: str
    config: MeasureConfig
    purpose: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.condition}"


@dataclass(frozen=True)
class Sizes:
    """How much each kind of run and analysis records.

    Attributes:
        core_prompts, core_tokens: the paper's protocol (100 × 100).
        extra_prompts: prompts of the open-question runs per model.
        long_prompts, long_tokens: the long-horizon run.
        interp_trajectories, interp_pairs: §C.5 paths (trajectories × pairs each).
        el_trajectories: trajectories for the Euler–Lagrange residual.
        layer_trajectories: trajectories for the per-layer logit lens, per model.
        precision_prompts: prompts of the bfloat16 run (compared on the same prompts).
        window: steps per window of the CV-by-position table.
        n_perm: permutations of the pairing-shuffle null.
        teacher_prompts: articles of the teacher-forced (curvature) runs, per weights.
    """

    core_prompts: int = 100
    core_tokens: int = 100
    extra_prompts: dict[str, int] = field(default_factory=lambda: {"smollm2-135m": 50, "gemma3-270m": 30})
    long_prompts: dict[str, int] = field(default_factory=lambda: {"smollm2-135m": 20, "gemma3-270m": 10})
    long_tokens: int = 500
    interp_trajectories: int = 20
    interp_pairs: int = 20
    el_trajectories: int = 20
    layer_trajectories: dict[str, int] = field(default_factory=lambda: {"smollm2-135m": 8, "gemma3-270m": 3})
    precision_prompts: int = 50
    window: int = 100
    n_perm: int = 1000
    teacher_prompts: int = 20


QUICK = Sizes(
    core_prompts=5,
    core_tokens=10,
    extra_prompts={"smollm2-135m": 5, "gemma3-270m": 5},
    long_prompts={"smollm2-135m": 5, "gemma3-270m": 5},
    long_tokens=20,
    interp_trajectories=5,
    interp_pairs=3,
    el_trajectories=5,
    layer_trajectories={"smollm2-135m": 2, "gemma3-270m": 2},
    precision_prompts=5,
    window=10,
    n_perm=200,
    teacher_prompts=5,
)


@dataclass(frozen=True)
class VerifyConfig:
    """Settings of ``ppmech verify``.

    Attributes:
        out: output directory (runs, analyses, claims.md, claims.json).
        models: embedded models to verify.
        quick: tiny runs (a smoke test; the verdicts are not meaningful).
        extras: also run the open-question conditions.
        n_boot: bootstrap replicates of every CI.
        seed: prompt choice, random init, sampling, bootstrap.
        custom_sizes: override the run and analysis sizes (for tests).
        sweep: a ``ppmech sweep`` study directory whose families of 3 or more
            sizes give the Table 5 row a measured verdict (see :mod:`ppmech.sweep.ledger`).
        device: where every run and analysis runs (``auto``: CUDA when available); an
            execution setting, so runs recorded elsewhere are reused.
    """

    out: str = "runs/verify"
    models: tuple[str, ...] = EMBEDDED
    quick: bool = False
    extras: bool = True
    n_boot: int = 1000
    seed: int = 0
    custom_sizes: Sizes | None = None
    sweep: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.n_boot < MIN_BOOT_FOR_VERDICTS:
            raise PPMechError(
                f"`n_boot` must be at least {MIN_BOOT_FOR_VERDICTS} for the ledger (got {self.n_boot}): "
                "every verdict reads a 95% CI, whose 2.5% tails need one replicate each",
                "use the default 1000",
            )
        unknown = [m for m in self.models if m not in EMBEDDED_MODELS]
        if unknown or not self.models:
            raise PPMechError(
                f"ppmech verify checks the embedded models only (got {', '.join(unknown) or 'none'})",
                f"use `models` with {' and/or '.join(EMBEDDED)}",
            )

    @property
    def sizes(self) -> Sizes:
        """``custom_sizes`` if given (tests), else the quick or the full sizes."""
        if self.custom_sizes is not None:
            return self.custom_sizes
        return QUICK if self.quick else Sizes()


def plan_runs(config: VerifyConfig) -> list[RunPlan]:
    """Every run the verification needs, in the order they are recorded (model by model)."""
    s = config.sizes
    plans: list[RunPlan] = []

    def base_for(model: str, prompts: int, **more: Any) -> MeasureConfig:
        return MeasureConfig(
            model=model,
            prompts=prompts,
            new_tokens=s.core_tokens,
            seed=config.seed,
            n_boot=config.n_boot,
            device=config.device,
            **more,
        )

    for model in config.models:
        base = base_for(model, s.core_prompts, save_hidden=True)
        plans.append(RunPlan(model, "pretrained", base, "paper protocol (§D.3.1)"))
        plans.append(
            RunPlan(model, "random", replace(base, weights="random"), "paper protocol, random weights")
        )
        # Teacher-forced runs need one forward pass, but Gemma's 262k-token readout over every
        # position is not free, and the 30-minute budget is tight: the curvature's CI is already
        # narrow (±0.3°) at 20 articles.
        teacher = replace(base, decoding="teacher", prompts=s.teacher_prompts)
        plans.append(
            RunPlan(model, "pretrained-teacher", teacher, "curvature on natural text (teacher-forced)")
        )
        plans.append(
            RunPlan(
                model,
                "random-teacher",
                replace(teacher, weights="random"),
                "curvature on natural text, random weights",
            )
        )
    if not config.extras:
        return plans
    for model in config.models:
        base = base_for(model, s.extra_prompts[model])
        plans.append(RunPlan(model, "pretrained-wiki-es", replace(base, corpus="wiki-es"), "multilingual"))
        plans.append(RunPlan(model, "pretrained-wiki-fr", replace(base, corpus="wiki-fr"), "multilingual"))
        plans.append(
            RunPlan(
                model,
                "pretrained-long",
                replace(base, prompts=s.long_prompts[model], new_tokens=s.long_tokens, batch_size=10),
                "long horizon",
            )
        )
        plans.append(
            RunPlan(
                model, "pretrained-sample", replace(base, decoding="sample", temperature=1.0), "temperature"
            )
        )
    # Context length and precision on the cheaper model only (budget: 30 min on 2 cores).
    model = "smollm2-135m" if "smollm2-135m" in config.models else config.models[0]
    base = base_for(model, s.extra_prompts[model])
    plans.append(RunPlan(model, "pretrained-ctx25", replace(base, context_tokens=25), "context length"))
    plans.append(RunPlan(model, "pretrained-ctx100", replace(base, context_tokens=100), "context length"))
    plans.append(
        RunPlan(
            model,
            "pretrained-bf16",
            replace(base, prompts=s.precision_prompts, dtype="bfloat16"),
            "precision: bfloat16 compute of the same weights",
        )
    )
    # One model at a time, cheapest first: a partial ledger is possible early.
    order = {m: i for i, m in enumerate(config.models)}
    return sorted(plans, key=lambda p: order[p.model])


def ensure_run(plan: RunPlan, root: Path, progress: bool = True) -> Run:
    """The run directory for ``plan``: reused when complete and identical, else recorded.

    Raises:
        PPMechError: the directory holds a run made with other settings (or an
            older schema, via :func:`~ppmech.runs.load_run`).
    """
    path = root / plan.name
    expected = plan.config.to_dict()
    if (path / "summary.json").is_file():
        run = load_run(path)
        keys = (set(run.config) | set(expected)) - set(SUMMARY_ONLY_KEYS) - set(EXECUTION_KEYS)
        diff = sorted(k for k in keys if run.config.get(k) != expected.get(k))
        if diff:
            raise PPMechError(
                f"{path} holds a run of {run.config.get('model')} ({run.config.get('weights')}) made with "
                f"different settings ({', '.join(diff)})",
                "delete that directory or pass another `out`",
            )
        return run
    resume = (path / "parts" / "config.json").is_file()
    measure(plan.config, path, overwrite=not resume and path.exists(), resume=resume, progress=progress)
    return load_run(path)


def check_model(run: Run, lm: LoadedModel) -> None:
    """Refuse to analyse a run's hidden states with a model other than the one that recorded them."""
    recorded = run.model
    if (
        recorded.get("source_hash") != lm.identity.source_hash
        or recorded.get("weights") != lm.identity.weights
    ):
        raise PPMechError(
            f"{run.path} was recorded with {recorded.get('spec')} ({recorded.get('weights')}, "
            f"{str(recorded.get('source_hash'))[:12]}), not {lm.identity.spec} ({lm.identity.weights}, "
            f"{lm.identity.source_hash[:12]})",
            "analyse it with the model that recorded it",
        )


def model_for_run(run: Run, device: str = "auto") -> LoadedModel:
    """Load the model a run was recorded with (on ``device``), and check it is the same one."""
    cfg = run.config
    lm = load_model(
        cfg["model"],
        weights=cfg.get("weights", "pretrained"),
        seed=cfg.get("seed", 0),
        dtype="float32",
        device=device,
    )
    check_model(run, lm)
    return lm


# --------------------------------------------------------------------------- analyses


def steps_analyses(run: Run, n_boot: int, seed: int) -> dict[str, Estimate]:
    """Everything that needs only ``steps.parquet``."""
    steps = run.steps
    n = steps["trajectory"].nunique()
    require_trajectories(n, f"run {run.path}")
    out: dict[str, Estimate] = {}
    h_parts = [p[:, 0] for p in A.split_by_trajectory(steps, ["H"])]
    cvs = A.trajectory_cvs(h_parts, n_boot, seed)
    out["global_cv"] = cvs["global"]
    out["mean_trajectory_cv"] = cvs["mean_trajectory"]
    out["trajectory_mean_cv"] = cvs["trajectory_mean"]
    out["mean_H"] = cvs["mean_H"]
    kv_parts = A.split_by_trajectory(steps, ["K", "V"])
    kv_valid = [p[np.isfinite(p).all(1)] for p in kv_parts]
    out["mean_K"] = trajectory_bootstrap(
        kv_valid, lambda a: float(a[:, 0].mean()), n_boot, seed, "mean K over valid steps"
    )
    out["mean_V"] = trajectory_bootstrap(
        kv_valid, lambda a: float(a[:, 1].mean()), n_boot, seed, "mean V over valid steps"
    )
    for k, v in A.kv_ratios(kv_parts, n_boot, seed).items():
        out[f"kv_{k}"] = v
    forms = A.energy_form_cvs(A.split_by_trajectory(steps, ["speed_sq", "logp"]), n_boot, seed)
    out["cv_product"] = forms["product"]
    out["cv_classical"] = forms["classical"]
    names = {"mean_d": "mean", "mean_abs_d": "abs", "drift": "drift"}
    for k, v in A.local_conservation(h_parts, n_boot, seed, "H").items():
        out[f"dH_{names[k]}"] = v
    e_parts = [np.exp(p) for p in h_parts]
    for k, v in A.local_conservation(e_parts, n_boot, seed, "E").items():
        out[f"dE_{names[k]}"] = v
    ent = A.entropy_landscape([p[:, 0] for p in A.split_by_trajectory(steps, ["entropy"])], n_boot, seed)
    out["entropy_mean"] = ent["mean"]
    out["entropy_var"] = ent["var"]
    return out


def hidden_analyses(run: Run, lm: LoadedModel, sizes: Sizes, n_boot: int, seed: int) -> dict[str, Estimate]:
    """§C.5 interpolation and the Euler–Lagrange residual, on saved hidden states."""
    from ppmech.models.architectures import readout

    check_model(run, lm)
    read = readout(lm.model)
    hidden = run.hidden()
    steps = run.steps.sort_values(["trajectory", "step"])
    n, t = hidden.shape[0], hidden.shape[1]
    tokens = np.full((n, t), -1, dtype=np.int64)
    tokens[steps["trajectory"].to_numpy(), steps["step"].to_numpy()] = steps["token_id"].to_numpy()
    out: dict[str, Estimate] = {}
    k = min(n, sizes.interp_trajectories)
    require_trajectories(k, "the interpolation test")
    att = A.neighbouring_attractors(
        read, np.asarray(hidden[:k]), tokens[:k], sizes.interp_pairs, n_boot=n_boot, seed=seed
    )
    out["interp_unique"] = att.unique
    out["interp_unique_se"] = Estimate(att.unique_se, n=att.n_paths, note="s.e. over paths")
    out["interp_within"] = att.within_share
    k = min(n, sizes.el_trajectories)
    require_trajectories(k, "the Euler–Lagrange residual")
    hs, fs = [], []
    for i in range(k):
        h = np.asarray(hidden[i], dtype=np.float32)
        ok = np.isfinite(h).all(-1)
        h = h[ok]
        f = A.force(read, torch.from_numpy(h), torch.from_numpy(tokens[i][ok]))
        hs.append(h)
        fs.append(f.numpy())
    for key, est in A.euler_lagrange(hs, fs, n_boot, seed).items():
        out[f"el_{key}"] = est
    return out


def null_analyses(
    run: Run, n_boot: int, seed: int, n_perm: int = 1000
) -> tuple[dict[str, Estimate], pd.DataFrame]:
    """The null models and confounder controls of :mod:`ppmech.nulls` on one run's steps.

    Returns:
        Estimates keyed ``null_*`` (see :data:`NULL_KEYS`) and the scale table
        (:func:`ppmech.nulls.scale_table`).
    """
    parts = A.split_by_trajectory(run.steps, ["K", "V"])
    out: dict[str, Estimate] = {}
    comp = N.compensation(parts, n_boot, seed)
    out["null_R"] = comp["pooled"]
    out["null_R_per_trajectory"] = comp["per_trajectory"]
    out["null_cov_KV"] = comp["cov_KV"]
    shuffle = N.pairing_shuffle(parts, n_perm, seed)
    out.update(_null_test_estimates("null_shuffle", shuffle))
    scale = N.scale_controls(parts, N.SCALES, n_boot, seed)
    for k, v in scale.items():
        out[f"null_scale_{k}"] = v
    ident = N.identity_controls(N.identity_frame(run.steps), n_boot, n_perm, seed)
    for k, v in ident.r2.items():
        out[f"null_r2_{k}"] = v
    for k, v in ident.residual.items():
        out[f"null_resid_{k}"] = v
    out.update(_null_test_estimates("null_resid_shuffle", ident.residual_null))
    return out, N.scale_table(parts)


def _null_test_estimates(prefix: str, tests: dict[str, N.NullTest]) -> dict[str, Estimate]:
    """``{prefix}_p`` (on pooled R; the global CV has the same p), the effect sizes and null means."""
    r = tests["R"]
    out = {
        f"{prefix}_p": r.p_estimate(),
        f"{prefix}_null_R": Estimate(
            r.null_mean, r.null_low, r.null_high, r.n_trajectories, "pooled R, V shuffled (2.5–97.5%)"
        ),
        f"{prefix}_effect": Estimate(r.effect_size, n=r.n_trajectories, note="(R − null mean) / null sd"),
    }
    traj = tests["mean_trajectory_cv"]
    out[f"{prefix}_p_trajectory_cv"] = traj.p_estimate()
    out[f"{prefix}_effect_trajectory_cv"] = Estimate(
        traj.effect_size, n=traj.n_trajectories, note="(mean CV(H_i) − null mean) / null sd"
    )
    return out


def curvature_analysis(run: Run, n_boot: int, seed: int) -> dict[str, Estimate]:
    """Mean angle between consecutive velocities (degrees) on a run's saved hidden states."""
    return {"curvature_deg": N.curvature(np.asarray(run.hidden()), n_boot, seed)["mean_deg"]}


def layer_analysis(run: Run, lm: LoadedModel, trajectories: int) -> pd.DataFrame:
    """Per-layer K, V, H statistics on the first ``trajectories`` trajectories of a run."""
    from ppmech.claims.layers import record_layers

    check_model(run, lm)
    traj = run.trajectories.sort_values("trajectory").head(trajectories)
    rec = record_layers(lm, [list(p) for p in traj["prompt_ids"]], [list(g) for g in traj["generated_ids"]])
    table = A.layer_energy_table(rec.logp, rec.speed_sq)
    hidden_dir = run.path / "hidden"
    if hidden_dir.is_dir():
        saved = np.asarray(run.hidden()[: len(traj)], dtype=np.float32)
        table.attrs["last_layer_max_abs_diff"] = float(np.nanmax(np.abs(saved - rec.last_layer_state)))
    return table


def _cache_key(run: Run, what: str, settings: dict[str, Any]) -> str:
    payload = json.dumps(
        {"v": ANALYSIS_VERSION, "what": what, "created": run.summary.get("created"), "s": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _cached(path: Path, key: str) -> dict[str, Any] | None:
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if data.get("key") == key:
            return dict(data)
    return None


# --------------------------------------------------------------------------- orchestration


@dataclass
class VerifyResult:
    """What :func:`verify` returns."""

    out: Path
    ledger: pd.DataFrame
    measurements: dict[str, Estimate]
    tables: dict[str, pd.DataFrame]
    wall_seconds: float


def _run_row(name: str, run: Run, plan: RunPlan) -> dict[str, Any]:
    s = run.summary["statistics"]
    c = run.config
    return {
        "run": name,
        "purpose": plan.purpose,
        "corpus": c["corpus"],
        "decoding": c["decoding"],
        "dtype": c["dtype"],
        "context": c["context_tokens"],
        "prompts x tokens": f"{c['prompts']} x {c['new_tokens']}",
        "global CV": s["global_cv"],
        "mean traj CV": s["mean_trajectory_cv"],
        "mean H": s["mean_energy"],
        "K/V": s["kv_ratio"],
        "mean |dH|": s["mean_abs_dH"],
        "v=0 steps": s["n_zero_velocity"],
        "record s": run.summary.get("timing", {}).get("recording_seconds_this_session"),
    }


def verify(config: VerifyConfig, progress: bool = True, command: str = "ppmech verify") -> VerifyResult:
    """Run (or reuse) every run, analyse them, and write ``claims.md`` and ``claims.json``."""
    started = time.perf_counter()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise PPMechError(
            f"`out` {out} is a file, not a directory", "pass a directory (it is created if missing)"
        )
    table5: dict[str, A.Estimate] = {}
    if config.sweep:  # read first: a bad --sweep fails before any run is recorded
        from ppmech.sweep.ledger import table5_measurements

        table5 = table5_measurements(config.sweep, config.n_boot, config.seed)
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
        run = runs[plan.name]
        core = plan.condition in ("pretrained", "random")
        teacher = plan.condition.endswith("-teacher")
        settings = {
            "n_boot": config.n_boot,
            "seed": config.seed,
            "sizes": asdict(sizes),
            "core": core,
            "teacher": teacher,
        }
        key = _cache_key(run, "run", settings)
        cache_file = cache_root / f"{plan.name}.json"
        cached = _cached(cache_file, key)
        if cached is not None:
            est = {k: Estimate.from_dict(v) for k, v in cached["estimates"].items()}
            extra_tables = {k: pd.DataFrame(v) for k, v in cached["tables"].items()}
        else:
            est = steps_analyses(run, config.n_boot, config.seed)
            extra_tables = {}
            if plan.condition == "pretrained-long":
                h_parts = [p[:, 0] for p in A.split_by_trajectory(run.steps, ["H"])]
                windows = A.cv_by_position(h_parts, sizes.window, config.n_boot, config.seed)
                extra_tables["cv_by_position"] = windows
                if len(windows):
                    last = windows.iloc[-1]
                    est["last_window_cv"] = Estimate(
                        float(last["cv"]),
                        float(last["cv_low"]),
                        float(last["cv_high"]),
                        len(h_parts),
                        f"global CV of H at steps {last['start']}–{last['stop'] - 1}",
                    )
            if core or teacher:
                nulls, scale = null_analyses(run, config.n_boot, config.seed, sizes.n_perm)
                est.update(nulls)
                extra_tables["scale"] = scale
                est.update(curvature_analysis(run, config.n_boot, config.seed))
            if core:
                lm = model_for_run(run, config.device)
                est.update(hidden_analyses(run, lm, sizes, config.n_boot, config.seed))
                layers = layer_analysis(run, lm, sizes.layer_trajectories[plan.model])
                diff = layers.attrs.get("last_layer_max_abs_diff")
                extra_tables["layers"] = layers
                final_cv = float(layers["global_cv"].iloc[-1])
                est["layers_final_cv"] = Estimate(final_cv, n=sizes.layer_trajectories[plan.model])
                est["layers_min_other_cv"] = Estimate(
                    float(layers["global_cv"].iloc[:-1].min()), n=sizes.layer_trajectories[plan.model]
                )
                if diff is not None:
                    est["layers_last_layer_max_abs_diff"] = Estimate(float(diff), note="vs recorded h_t")
                del lm
            write_json(
                cache_file,
                {
                    "key": key,
                    "estimates": {k: v.to_dict() for k, v in est.items()},
                    "tables": {k: json.loads(v.to_json(orient="records")) for k, v in extra_tables.items()},
                },
            )
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
            same = f32.steps[f32.steps["trajectory"] < n]
            h = [p[:, 0] for p in A.split_by_trajectory(same, ["H"])]
            measurements[f"{plan.model}/pretrained-f32-same/global_cv"] = trajectory_bootstrap(
                h, A.pooled_cv, config.n_boot, config.seed, "float32 core run, same prompts"
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
    sections = _sections(plans, runs, tables, sizes, config, measurements)
    text = render_markdown(rows, meta, sections)
    tmp = out / ".claims.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "claims.md")
    payload = ledger_json(rows, meta, measurements)
    payload["tables"] = {k: json.loads(v.to_json(orient="records")) for k, v in tables.items()}
    write_json(out / "claims.json", payload)
    return VerifyResult(out=out, ledger=ledger, measurements=measurements, tables=tables, wall_seconds=wall)


def _sections(
    plans: list[RunPlan],
    runs: dict[str, Run],
    tables: dict[str, pd.DataFrame],
    sizes: Sizes,
    config: VerifyConfig,
    measurements: dict[str, Estimate],
) -> list[tuple[str, str]]:
    runs_frame = pd.DataFrame([_run_row(p.name, runs[p.name], p) for p in plans])
    out = [
        (
            "Runs (Table 1 style; point estimates from each run's summary.json)",
            markdown_table(runs_frame) + "\n\nAnalysis sizes: §C.5 interpolation on the first "
            f"{sizes.interp_trajectories} trajectories × {sizes.interp_pairs} random consecutive pairs each; "
            f"Euler–Lagrange on the first {sizes.el_trajectories} trajectories (all steps); per-layer on the "
            f"first {sizes.layer_trajectories} trajectories. Open-question runs use fewer prompts than the "
            "core runs (see the table); context length and precision run on SmolLM2 only. 'Precision' is "
            "bfloat16 versus float32 *compute* of the same dequantised Q4 weights — the embedded models ship "
            "in one quantisation only."
            + (" QUICK MODE: tiny runs, verdicts are not meaningful." if config.quick else ""),
        )
    ]
    nulls = null_frame([f"{p.model}/{p.condition}" for p in plans], measurements)
    if len(nulls):
        out.append(
            (
                "Null models and confounder controls, per run",
                markdown_table(nulls)
                + f"\n\nR: Var(H)/(Var(K)+Var(V)) pooled [95% CI]; null R: mean of R with V permuted within "
                f"trajectories ({sizes.n_perm} permutations) [2.5–97.5%]; p: one-sided permutation p; "
                "CV at c: global CV of H with h → c·h; R², held out: of K on the produced token, "
                "the input token, the step, token + step, and all three; R', p': on K with all three "
                "effects removed (cross-fitted); curvature: mean angle between consecutive velocities (°).",
            )
        )
    for name, table in tables.items():
        if name.endswith("/cv_by_position"):
            out.append((f"CV of H by position: {name.split('/')[0]}", markdown_table(table)))
    for name, table in tables.items():
        if name.endswith("/layers"):
            out.append((f"Per-layer mechanics (logit lens): {name.split('/')[0]}", markdown_table(table)))
    return out


#: Columns of :func:`null_frame`: (header, measurement key, show the CI).
NULL_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("R", "null_R", True),
    ("null R", "null_shuffle_null_R", True),
    ("p", "null_shuffle_p", False),
    ("effect (sd)", "null_shuffle_effect", False),
    ("mean R_i", "null_R_per_trajectory", True),
    ("std H", "null_scale_std_H", False),
    ("CV c=0.5", "null_scale_cv_c0.5", False),
    ("CV c=1", "null_scale_cv_c1", False),
    ("CV c=2", "null_scale_cv_c2", False),
    ("CV c=10", "null_scale_cv_c10", False),
    ("R² token", "null_r2_token", True),
    ("R² input token", "null_r2_input_token", True),
    ("R² step", "null_r2_position", True),
    ("R² token+step", "null_r2_token+position", True),
    ("R² all three", "null_r2_all", True),
    ("R'", "null_resid_R", True),
    ("p'", "null_resid_shuffle_p", False),
    ("curvature (°)", "curvature_deg", True),
)


def null_frame(keys: list[str], measurements: dict[str, Estimate]) -> pd.DataFrame:
    """The null models and controls of every ``model/condition`` in ``keys`` that has them, as text cells."""

    def cell(est: Estimate | None, ci: bool) -> str:
        if est is None or not np.isfinite(est.value):
            return "—"
        if ci and est.has_ci:
            return f"{est.value:.3g} [{est.low:.3g}, {est.high:.3g}]"
        return f"{est.value:.3g}"

    rows = []
    for key in keys:
        if f"{key}/null_R" not in measurements:
            continue
        row = {"run": key}
        for header, metric, ci in NULL_COLUMNS:
            row[header] = cell(measurements.get(f"{key}/{metric}"), ci)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(result: VerifyResult) -> pd.DataFrame:
    """The short table printed at the end of ``ppmech verify``."""
    cols = ["id", "model", "paper", "measured", "verdict"]
    return result.ledger[cols] if len(result.ledger) else pd.DataFrame(columns=cols)


__all__ = [
    "QUICK",
    "RunPlan",
    "Sizes",
    "VerifyConfig",
    "VerifyResult",
    "ensure_run",
    "plan_runs",
    "scaling_from_runs",
    "summary_frame",
    "verdict_counts",
    "verify",
]
