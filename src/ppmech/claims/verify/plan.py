"""The runs of ``ppmech verify``: their sizes, the verify settings and the plan.

For each model, the core runs are the paper's protocol (§D.3.1: 100 Wikipedia
prompts of 50 tokens, 100 greedy tokens), pretrained and random-weight, with
hidden states saved; beside them, the same weights teacher-forced on articles'
own continuations (hidden states saved), for the curvature of natural text. The
open-question runs vary one thing at a time (language, horizon, decoding,
context length, compute precision) and use fewer prompts where they are
expensive; :func:`plan_runs` is the list, and the ledger states each run's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ppmech.errors import PPMechError, check_seed
from ppmech.measure import MeasureConfig
from ppmech.models.loading import EMBEDDED_MODELS

#: Fewest bootstrap replicates that give a 95% percentile CI one replicate in each tail.
MIN_BOOT_FOR_VERDICTS = 40
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
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise PPMechError(
                f"`models` names {', '.join(repeated)} more than once (each model is verified once)",
                "list each model once, e.g. --models " + " ".join(dict.fromkeys(self.models)),
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
