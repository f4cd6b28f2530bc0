"""The claims ledger: every quantitative claim of the paper, as data, with its verdict rule.

Each :class:`Claim` names the paper's figure, the measurement that tests it and
a :class:`Rule` decided *before* any measurement and written here as data.
:func:`evaluate` applies the rules to measured :class:`~ppmech.statistics.Estimate`
values; :func:`~ppmech.claims.render.render_markdown` and :func:`~ppmech.claims.render.ledger_json`
write the ledger.

Measurement keys are ``"{model}/{condition}/{metric}"``, e.g.
``smollm2-135m/pretrained/global_cv``; a claim's templates use ``{model}``.

Rule kinds and verdicts: :mod:`ppmech.claims.rules`; the markdown and JSON forms:
:mod:`ppmech.claims.render`.

Claims whose source starts with "beyond the paper" are not the paper's: they are
the null models and confounder controls of :mod:`ppmech.nulls`, with rules fixed
here before measuring, and are rendered under their own heading.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ppmech.claims.rules import Rule, Verdict, apply_rule
from ppmech.claims.scaling import implied_sample_size
from ppmech.provenance import json_safe
from ppmech.statistics import Estimate

# --------------------------------------------------------------------------- the paper's data

# Table 1 as printed: (global CV, avg. traj. CV, avg. energy). The "Gemma-3-1B"
# rows stand in for the embedded gemma3-270m (same family, another size).
TABLE1: dict[tuple[str, str], tuple[float, float, float]] = {
    ("Qwen-2.5-1.5B", "pretrained"): (0.081, 0.017, 9.66),
    ("SmolLM2-135M", "pretrained"): (0.117, 0.022, 7.36),
    ("SmolLM2-360M", "pretrained"): (0.129, 0.025, 7.23),
    ("SmolLM2-1.7B", "pretrained"): (0.103, 0.024, 8.00),
    ("SmolLM3-3B", "pretrained"): (0.092, 0.018, 9.71),
    ("Qwen-2.5-3B", "pretrained"): (0.073, 0.015, 9.74),
    ("Llama-3.2-1B", "pretrained"): (0.085, 0.020, 9.16),
    ("Llama-3.2-3B", "pretrained"): (0.084, 0.022, 8.77),
    ("DeepSeek-R1-1.5B", "pretrained"): (0.110, 0.048, 9.00),
    ("Gemma-3-1B", "pretrained"): (0.208, 0.126, 8.02),
    ("Qwen-2.5-1.5B", "random"): (0.022, 0.007, 15.50),
    ("SmolLM2-135M", "random"): (0.031, 0.010, 12.91),
    ("SmolLM2-360M", "random"): (0.221, 0.047, 9.42),
    ("SmolLM3-3B", "random"): (0.022, 0.004, 14.56),
    ("Qwen-2.5-3B", "random"): (0.017, 0.003, 15.66),
    ("Llama-3.2-1B", "random"): (0.020, 0.004, 15.32),
    ("Llama-3.2-3B", "random"): (0.022, 0.002, 15.21),
    ("DeepSeek-R1-1.5B", "random"): (0.018, 0.005, 15.53),
    ("Gemma-3-1B", "random"): (0.027, 0.004, 15.27),
}
TABLE1_MEDIANS = {"all": (0.077, 0.016), "pretrained": (0.094, 0.023), "random": (0.022, 0.005)}
PAPER_ROW = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-1B"}
TABLE5 = {"Params vs. Energy Drift": (0.9996, 0.0181), "Params vs. Efficiency": (-0.9986, 0.0340)}


def table1_consistency() -> list[str]:
    """Recompute Table 1's own summary lines from its rows; report each mismatch."""
    notes = []
    for group in ("pretrained", "random"):
        rows = [v for (_, w), v in TABLE1.items() if w == group]
        g = float(np.median([r[0] for r in rows]))
        t = float(np.median([r[1] for r in rows]))
        pg, pt = TABLE1_MEDIANS[group]
        if abs(g - pg) > 0.0015 or abs(t - pt) > 0.0015:
            notes.append(
                f"Table 1's median ({group}) line says global CV {pg} / avg. traj. CV {pt}; "
                f"the {len(rows)} {group} rows printed give medians {g:.4f} / {t:.4f}."
            )
    allg = [v[0] for v in TABLE1.values()]
    if len(TABLE1) != 20:
        notes.append(
            f"Table 1 is titled '20 checkpoints' but prints {len(TABLE1)} rows "
            "(SmolLM2-1.7B has no random-weight row); key finding 1's '17/20 below 13%' is "
            f"{sum(g < 0.13 for g in allg)}/{len(TABLE1)} on the printed rows."
        )
    return notes


def table5_sample_size() -> dict[str, int]:
    """The number of models implied by each Table 5 (r, p) pair."""
    return {name: implied_sample_size(r, p) for name, (r, p) in TABLE5.items()}


def inconsistencies() -> list[str]:
    """The paper's ambiguities and internal inconsistencies that the ledger must state."""
    n5 = table5_sample_size()
    return [
        "Energy vs log-energy: §2.1/§3.1/§C.6 define the conserved energy as E_t = ½‖v_t‖²·PPL_t, but "
        "Table 1's header says E_t = K_t + V_t and its 'Avg. Energy' values (7–16) are in the range of "
        "H = ln E (‖v‖² ~ 10³–10⁴ per §B.3 would make E itself ≥ 500). The ledger tests Table 1 on H and "
        "reports the CV of the product E separately.",
        "K/V ratio: Table 2 gives mean K/V = 11.8 (pretrained) and 0.89 (random), undefined beyond "
        "'mean'. With Table 1's pretrained H of 7.2–9.7 and §B.3's 'K ≈ 7, V 0.2–2.5', the ratio of "
        "means would be about 3–35 per model and needs V ≈ 0.6–0.8 to reach 12. A mean of per-step "
        "ratios K_t/V_t is dominated by steps with V_t → 0. The ledger reports three readings: ratio of "
        "means (used by the rule), mean of per-step ratios, and their median.",
        "'Avg. Traj. CV' (§D.3.1) is described as 'for each trajectory compute CV(E), then average over "
        "all token locations' — an average of averages. The rule uses the mean over trajectories of "
        "CV(H_i); the CV of the per-trajectory means is reported beside it.",
        "Table 4's header labels both columns ⟨ΔE_t⟩; the second is read as ⟨|ΔE_t|⟩ (§3.2.1/App. G). "
        "§3.2.1 defines ΔE on E = ½‖v‖²·PPL, while Table 4's magnitudes (0.0002–0.045) suit neither E "
        "(hundreds or more) nor H with Table 1's CVs (σ_H ≈ CV·mean ≈ 0.3–0.9). Both ΔH and ΔE are "
        "measured; the rules use ΔH.",
        "Appendix F says trained models have *larger* energy jumps (ΔE ≈ 0.85 vs 0.33 for random), "
        "Table 4 says pretrained jumps are *smaller* (0.012 vs 0.045). Both are tested on the same "
        "measurement (mean |ΔH|); at most one can be supported.",
        "Euler–Lagrange sign: Prop. C.1 states 2v_{t+1}/‖v_{t+1}‖² − 2v_t/‖v_t‖² = +∇_h ln p_{x_t}(h_t), "
        "but Theorem D.1's bracket vanishes only if that difference equals −∇_h ln p_{x_t}(h_t). The "
        "cosine is reported against +∇ ln p; a strongly negative cosine would favour Thm D.1's sign.",
        "§4.3 calls Gemma the outlier with 'trained CV = 12%, untrained = 0.4%', but Table 1's Gemma-3-1B "
        "global CVs are 0.208 / 0.027; 12% and 0.4% are its Avg. Traj. CV column.",
        "Appendix F's own numbers: 'ΔE ~ 0.022 × 15 ≈ 0.33 (random), 0.094 × 9 ≈ 0.85 (trained)' use "
        "σ ≈ CV·mean of H, i.e. a spread, not a per-step change.",
        f"Table 5: r = 0.9996, p = 0.0181 and r = −0.9986, p = 0.0340 imply n = "
        f"{n5['Params vs. Energy Drift']} and n = {n5['Params vs. Efficiency']} models (one degree of "
        "freedom); 'Efficiency' and 'power efficiency' are never defined, and the text attributes "
        "r = 0.9996 to 'power efficiency' while the table labels it 'Energy Drift'.",
        "The embedded models are SmolLM2-135M-Instruct (Q4_1) and Gemma-3-270M (Q4_K_M), dequantised "
        "to float32; the paper's rows are SmolLM2-135M (variant not stated) and Gemma-3-1B. The Gemma "
        "comparisons are therefore to another size of the family.",
        *table1_consistency(),
    ]


DEFINITIONS: list[str] = [
    "h_t: output of the final norm (what the unembedding reads) at the position that produced x_t; "
    "step 0 is the token produced from the last prompt position.",
    "v_t = h_t − h_{t−1}; K_t = ln(½‖v_t‖²); V_t = −ln p_{x_t}(h_t) (nats, untempered model "
    "distribution); H_t = K_t + V_t; E_t = e^{H_t} = ½‖v_t‖²·PPL_t. Valid steps: t ≥ 1 with ‖v_t‖ > 0.",
    "Global CV = std(H)/mean(H) over all valid steps pooled (ddof 0). Mean trajectory CV = mean_i "
    "CV(H_i). Local conservation: ΔH_t = H_{t+1} − H_t within a trajectory; drift = ΣΔH/Σ|ΔH|.",
    "Classical forms (Remark D.1): ½‖v‖² − ln p; linear product: ½‖v‖²·PPL. Their global CVs use the "
    "same steps as H.",
    "Entropy: −Σ_j p_j(h_t) ln p_j(h_t) in nats at each recorded h_t; 'variance across space' is the "
    "variance over recorded states. Power: mean |ΔH| (and |ΔE|) per step.",
    "§C.5: h(α) = (1−α)h_t + αh_{t+1}, α ∈ {0, 0.1, …, 1}; per path the number of distinct argmax "
    "tokens, and whether all lie in {x_t, x_{t+1}}; ± is the s.e. over paths.",
    "Euler–Lagrange: LHS_t = 2v_{t+1}/‖v_{t+1}‖² − 2v_t/‖v_t‖², F_t = ∇_h ln p_{x_t}(h_t) (autograd "
    "through the model's readout, soft-capping included); mean cosine, median ‖LHS−F‖/‖LHS‖ and "
    "median ‖F‖/‖LHS‖; baseline: each trajectory's forces rotated in time by a random non-zero offset.",
    "Per layer (logit lens): resid_post of each decoder block → final norm → readout, on the recorded "
    "tokens teacher-forced; K, V, H as above on those states.",
    "CIs: 95% percentile bootstrap over trajectories (1000 replicates, seed 0), at least 5 trajectories.",
    "Beyond the paper (ppmech.nulls), on valid steps: R = Var(H)/(Var(K)+Var(V)) (ddof 0; < 1 iff "
    "Cov(K, V) < 0; unchanged by h → c·h). Pairing null: V permuted within each trajectory (1000 "
    "permutations, seed 0), one-sided p = (1 + #{null ≤ observed})/(1 + B); the pooled mean of H and "
    "Var(K)+Var(V) do not change under it, so the global CV and R share a p-value. Scale null: h → c·h "
    "adds 2 ln c to K and H. Token/position: fixed effects of the produced token x_t, the input "
    "token x_{t−1} and the step t, additive (backfitting), fitted on one half of the trajectories and "
    "evaluated on the other (2-fold cross-fitting; unseen tokens get the mean); H' = (K − K̂) + V + mean K, "
    "K̂ from all three factors, keeps mean H. Curvature: mean "
    "over trajectories of the mean angle between v_t and v_{t+1} (degrees; 90° for independent "
    "directions), at the final norm.",
]


# --------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """One testable statement of the paper.

    Attributes:
        id: stable identifier.
        source: where in the paper.
        statement: the claim in words.
        paper: the paper's figure, as printed (``{row}`` becomes the Table 1 row name).
        metric: measurement key template (``{model}`` is substituted).
        rule: the verdict rule.
        other: comparison measurement key template, for comparative rules.
        paper_values: per-model paper figure overriding ``rule.value`` (Table 1 rows).
        per_model: expand once per model (else the claim is model-free).
    """

    id: str
    source: str
    statement: str
    paper: str
    metric: str
    rule: Rule
    other: str | None = None
    paper_values: dict[str, float] = field(default_factory=dict)
    per_model: bool = True


def _t1(col: int, weights: str) -> dict[str, float]:
    return {m: TABLE1[(row, weights)][col] for m, row in PAPER_ROW.items()}


NEAR_TOL = 0.25
"""Relative band around a paper figure for "matches the paper" claims (decided in advance)."""

CLAIMS: list[Claim] = [
    Claim(
        "T1-cv-pre",
        "Table 1",
        "Global CV of the log-energy, pretrained, matches the table row",
        "{row}: {value}",
        "{model}/pretrained/global_cv",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(0, "pretrained"),
    ),
    Claim(
        "T1-cv-rand",
        "Table 1",
        "Global CV of the log-energy, random weights, matches the table row",
        "{row}: {value}",
        "{model}/random/global_cv",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(0, "random"),
    ),
    Claim(
        "T1-trajcv-pre",
        "Table 1",
        "Avg. trajectory CV, pretrained, matches the table row",
        "{row}: {value}",
        "{model}/pretrained/mean_trajectory_cv",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(1, "pretrained"),
    ),
    Claim(
        "T1-trajcv-rand",
        "Table 1",
        "Avg. trajectory CV, random weights, matches the table row",
        "{row}: {value}",
        "{model}/random/mean_trajectory_cv",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(1, "random"),
    ),
    Claim(
        "T1-energy-pre",
        "Table 1",
        "Avg. energy (mean H), pretrained, matches the table row",
        "{row}: {value}",
        "{model}/pretrained/mean_H",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(2, "pretrained"),
    ),
    Claim(
        "T1-energy-rand",
        "Table 1",
        "Avg. energy (mean H), random weights, matches the table row",
        "{row}: {value}",
        "{model}/random/mean_H",
        Rule("near", tol=NEAR_TOL),
        paper_values=_t1(2, "random"),
    ),
    Claim(
        "KF1-pre",
        "§D.3.2 key finding 1",
        "Energy conservation holds: global CV < 13% (pretrained)",
        "17/20 checkpoints < 0.13",
        "{model}/pretrained/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "KF1-rand",
        "§D.3.2 key finding 1",
        "Energy conservation holds: global CV < 13% (random)",
        "17/20 checkpoints < 0.13",
        "{model}/random/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "KF2",
        "§3.1, §D.3.2 key finding 2",
        "Random-weight models conserve more tightly than pretrained",
        "median global CV 2.2% vs 9.4%",
        "{model}/random/global_cv",
        Rule("less_than"),
        other="{model}/pretrained/global_cv",
    ),
    Claim(
        "S31-traj",
        "§3.1",
        "Per-trajectory CVs are lower than the global CV (pretrained)",
        "e.g. 0.022 vs 0.117",
        "{model}/pretrained/mean_trajectory_cv",
        Rule("less_than"),
        other="{model}/pretrained/global_cv",
    ),
    Claim(
        "KF4-pre",
        "§D.3.2 key finding 4",
        "Trained models cluster near 8–10 energy",
        "8–10",
        "{model}/pretrained/mean_H",
        Rule("between", 8.0, 10.0),
    ),
    Claim(
        "KF4-rand",
        "§D.3.2 key finding 4",
        "Untrained models cluster at 12–16 energy",
        "12–16",
        "{model}/random/mean_H",
        Rule("between", 12.0, 16.0),
    ),
    Claim(
        "CV-E",
        "§2.1, §3.1, §C.6",
        "The product E = ½‖v‖²·PPL itself is conserved: CV(E) < 13% (pretrained)",
        "CV(E) 9.4% median",
        "{model}/pretrained/cv_product",
        Rule("below", 0.13),
    ),
    Claim(
        "T2-pre",
        "Table 2, §3.2",
        "Pretrained models are kinetic-dominated: K/V ≈ 11.8",
        "11.8",
        "{model}/pretrained/kv_ratio_of_means",
        Rule("near", 11.8, tol=NEAR_TOL),
    ),
    Claim(
        "T2-rand",
        "Table 2, §3.2",
        "Random models are balanced: K/V ≈ 0.89",
        "0.89",
        "{model}/random/kv_ratio_of_means",
        Rule("near", 0.89, tol=NEAR_TOL),
    ),
    Claim(
        "T2-pre-steps",
        "Table 2 (other reading)",
        "K/V ≈ 11.8 read as the mean of per-step ratios K_t/V_t (pretrained)",
        "11.8",
        "{model}/pretrained/kv_mean_of_ratios",
        Rule("near", 11.8, tol=NEAR_TOL),
    ),
    Claim(
        "T2-rand-steps",
        "Table 2 (other reading)",
        "K/V ≈ 0.89 read as the mean of per-step ratios K_t/V_t (random)",
        "0.89",
        "{model}/random/kv_mean_of_ratios",
        Rule("near", 0.89, tol=NEAR_TOL),
    ),
    Claim(
        "T2-pre-median",
        "Table 2 (third reading)",
        "K/V ≈ 11.8 read as the median of per-step ratios K_t/V_t (pretrained)",
        "11.8",
        "{model}/pretrained/kv_median_of_ratios",
        Rule("near", 11.8, tol=NEAR_TOL),
    ),
    Claim(
        "T2-rand-median",
        "Table 2 (third reading)",
        "K/V ≈ 0.89 read as the median of per-step ratios K_t/V_t (random)",
        "0.89",
        "{model}/random/kv_median_of_ratios",
        Rule("near", 0.89, tol=NEAR_TOL),
    ),
    Claim(
        "B3-K",
        "§B.3",
        "On trained models K ≈ 7",
        "≈ 7",
        "{model}/pretrained/mean_K",
        Rule("near", 7.0, tol=0.15),
    ),
    Claim(
        "B3-V",
        "§B.3",
        "On trained models V is typically 0.2–2.5",
        "0.2–2.5",
        "{model}/pretrained/mean_V",
        Rule("between", 0.2, 2.5),
    ),
    Claim(
        "B3-Vrand",
        "§B.3",
        "On untrained models V reaches 6–8",
        "6–8",
        "{model}/random/mean_V",
        Rule("between", 6.0, 8.0),
    ),
    Claim(
        "T4-drift0",
        "Table 4, §3.2.1",
        "Pretrained models have near-zero mean drift ⟨ΔH⟩",
        "0.0002",
        "{model}/pretrained/dH_mean",
        Rule("between", -0.01, 0.01),
    ),
    Claim(
        "T4-jump-pre",
        "Table 4",
        "Pretrained mean absolute jump ⟨|ΔH|⟩ ≈ 0.012",
        "0.012",
        "{model}/pretrained/dH_abs",
        Rule("near", 0.012, tol=NEAR_TOL),
    ),
    Claim(
        "T4-jump-rand",
        "Table 4",
        "Random mean absolute jump ⟨|ΔH|⟩ ≈ 0.045",
        "0.045",
        "{model}/random/dH_abs",
        Rule("near", 0.045, tol=NEAR_TOL),
    ),
    Claim(
        "T4-factor3",
        "§G.0.1",
        "Pretrained per-step jumps are over 3× smaller than random",
        "0.012 vs 0.045",
        "{model}/pretrained/dH_abs",
        Rule("less_than", factor=1 / 3),
        other="{model}/random/dH_abs",
    ),
    Claim(
        "T4-driftratio-pre",
        "Table 4",
        "Pretrained energy drift ΣΔH/Σ|ΔH| ≈ 0.016",
        "0.016",
        "{model}/pretrained/dH_drift",
        Rule("near", 0.016, tol=NEAR_TOL),
    ),
    Claim(
        "T4-driftratio-rand",
        "Table 4",
        "Random energy drift ΣΔH/Σ|ΔH| ≈ 0.041",
        "0.041",
        "{model}/random/dH_drift",
        Rule("near", 0.041, tol=NEAR_TOL),
    ),
    Claim(
        "T4-jump-pre-E",
        "Table 4 (on E)",
        "Pretrained ⟨|ΔE|⟩ ≈ 0.012 with E = ½‖v‖²·PPL (§3.2.1's definition)",
        "0.012",
        "{model}/pretrained/dE_abs",
        Rule("near", 0.012, tol=NEAR_TOL),
    ),
    Claim(
        "T4-jump-rand-E",
        "Table 4 (on E)",
        "Random ⟨|ΔE|⟩ ≈ 0.045 with E = ½‖v‖²·PPL",
        "0.045",
        "{model}/random/dE_abs",
        Rule("near", 0.045, tol=NEAR_TOL),
    ),
    Claim(
        "F-power",
        "Appendix F.3",
        "Trained models have larger energy jumps (power) than random",
        "ΔE ≈ 0.85 vs 0.33",
        "{model}/pretrained/dH_abs",
        Rule("greater_than"),
        other="{model}/random/dH_abs",
    ),
    Claim(
        "F-entropy-mean",
        "Appendix F.1",
        "Pretrained models have lower mean entropy than random",
        "lower",
        "{model}/pretrained/entropy_mean",
        Rule("less_than"),
        other="{model}/random/entropy_mean",
    ),
    Claim(
        "F-power-pre",
        "Appendix F.3",
        "Trained models: ΔE per step ≈ 0.85 (read as mean |ΔH|)",
        "≈ 0.85",
        "{model}/pretrained/dH_abs",
        Rule("near", 0.85, tol=NEAR_TOL),
    ),
    Claim(
        "F-power-rand",
        "Appendix F.3",
        "Random models: ΔE per step ≈ 0.33 (read as mean |ΔH|)",
        "≈ 0.33",
        "{model}/random/dH_abs",
        Rule("near", 0.33, tol=NEAR_TOL),
    ),
    Claim(
        "F-entropy-var",
        "Appendix F.1",
        "Pretrained models have higher entropy variance than random",
        "higher",
        "{model}/pretrained/entropy_var",
        Rule("greater_than"),
        other="{model}/random/entropy_var",
    ),
    Claim(
        "C5-pre",
        "§C.5",
        "Pretrained: 2.9 ± 0.11 unique tokens along interpolation paths",
        "2.9 ± 0.11",
        "{model}/pretrained/interp_unique",
        Rule("near", 2.9, tol=NEAR_TOL),
    ),
    Claim(
        "C5-rand",
        "§C.5",
        "Random: 3.6 ± 0.14 unique tokens along interpolation paths",
        "3.6 ± 0.14",
        "{model}/random/interp_unique",
        Rule("near", 3.6, tol=NEAR_TOL),
    ),
    Claim(
        "C5-order",
        "§C.5, §3.3",
        "Pretrained paths visit fewer unique tokens than random ones",
        "2.9 < 3.6",
        "{model}/pretrained/interp_unique",
        Rule("less_than"),
        other="{model}/random/interp_unique",
    ),
    Claim(
        "C5-adjacent",
        "§C.5",
        "Most interpolation paths stay within {x_t, x_{t+1}} (pretrained)",
        "'most points'",
        "{model}/pretrained/interp_within",
        Rule("above", 0.5),
    ),
    Claim(
        "C1-EL",
        "Prop. C.1 / Thm D.1",
        "Hidden states follow the log-Euler–Lagrange equation: Δ(2v/‖v‖²) points along ∇ ln p (pretrained)",
        "equality",
        "{model}/pretrained/el_cos",
        Rule("between", 0.5, 1.0),
    ),
    Claim(
        "C1-EL-sign",
        "Thm D.1 (sign)",
        "… or against it, per Theorem D.1's sign (pretrained)",
        "equality with −F",
        "{model}/pretrained/el_cos",
        Rule("between", -1.0, -0.5),
    ),
    Claim(
        "C1-EL-beats-shuffle",
        "Prop. C.1",
        "Alignment beats a shuffled-time baseline (pretrained)",
        "—",
        "{model}/pretrained/el_cos",
        Rule("greater_than"),
        other="{model}/pretrained/el_shuffled_cos",
    ),
    Claim(
        "C1-EL-residual",
        "Prop. C.1",
        "The residual of the equation is small: median ‖LHS−F‖/‖LHS‖ < 0.5 (pretrained)",
        "0 (exact)",
        "{model}/pretrained/el_rel_residual",
        Rule("below", 0.5),
    ),
    Claim(
        "C1-EL-scale",
        "Prop. C.1",
        "Both sides have the same size: median ‖F‖/‖LHS‖ ≈ 1 (pretrained)",
        "1 (exact)",
        "{model}/pretrained/el_force_over_lhs",
        Rule("near", 1.0, tol=NEAR_TOL),
    ),
    Claim(
        "C1-EL-rand",
        "Prop. C.1",
        "Euler–Lagrange alignment, random weights",
        "equality",
        "{model}/random/el_cos",
        Rule("between", 0.5, 1.0),
    ),
    Claim(
        "D1-classical",
        "Remark D.1, §C.6",
        "A classical Hamiltonian ½‖v‖² − ln p has CV > 50%",
        "> 50%",
        "{model}/pretrained/cv_classical",
        Rule("above", 0.5),
    ),
    Claim(
        "D1-classical-rand",
        "Remark D.1",
        "… and for random weights",
        "> 50%",
        "{model}/random/cv_classical",
        Rule("above", 0.5),
    ),
    Claim(
        "S43-gemma",
        "§4.3",
        "Gemma is an outlier: its pretrained CV exceeds SmolLM2's",
        "Gemma-3-1B 0.208 vs SmolLM2-135M 0.117",
        "gemma3-270m/pretrained/global_cv",
        Rule("greater_than"),
        other="smollm2-135m/pretrained/global_cv",
        per_model=False,
    ),
    Claim(
        "T5",
        "Table 5",
        "Energy drift and 'efficiency' correlate with parameter count within a family (r = 0.9996, −0.9986)",
        "r = 0.9996, p = 0.018",
        "-",
        Rule(
            "untestable",
            reason="needs ≥ 3 sizes of one family; the embedded models are one size each of "
            "two families (add `--sweep DIR` with a `ppmech sweep` of 3+ sizes, or use "
            "`ppmech analyze --correlate` on your own runs)",
        ),
        per_model=False,
    ),
    Claim(
        "T3",
        "Table 3, §E.3",
        "Jacobian steering raises judged quality (d = 0.99 / 0.39)",
        "4.84 → 7.61",
        "-",
        Rule("untestable", reason="steering is not part of this protocol"),
        per_model=False,
    ),
    Claim(
        "CD1",
        "Corollary D.1, §3.1",
        "The empirical CV 'closely matches theoretical expectations'",
        "—",
        "-",
        Rule("untestable", reason="the paper gives no numeric prediction to compare with"),
        per_model=False,
    ),
    # Open questions (§4.3 and the summary's next checks), framed as "does KF1 still hold?"
    Claim(
        "OQ-es",
        "§4.3 open question",
        "Conservation (CV < 13%) holds on Spanish Wikipedia",
        "untested",
        "{model}/pretrained-wiki-es/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-fr",
        "§4.3 open question",
        "Conservation (CV < 13%) holds on French Wikipedia",
        "untested",
        "{model}/pretrained-wiki-fr/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-long",
        "summary: long horizons",
        "Conservation (CV < 13%) holds over 500 new tokens",
        "untested",
        "{model}/pretrained-long/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-long-window",
        "summary: long horizons",
        "CV in the last 100-token window stays < 13%",
        "untested",
        "{model}/pretrained-long/last_window_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-sample",
        "open question: temperature",
        "Conservation (CV < 13%) holds when sampling (T = 1)",
        "greedy only",
        "{model}/pretrained-sample/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-ctx25",
        "open question: context",
        "Conservation (CV < 13%) holds with 25-token contexts",
        "50 tokens only",
        "{model}/pretrained-ctx25/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-ctx100",
        "open question: context",
        "Conservation (CV < 13%) holds with 100-token contexts",
        "50 tokens only",
        "{model}/pretrained-ctx100/global_cv",
        Rule("below", 0.13),
    ),
    Claim(
        "OQ-bf16",
        "open question: precision",
        "bfloat16 compute keeps the float32 global CV (same prompts)",
        "—",
        "{model}/pretrained-bf16/global_cv",
        Rule("near", tol=0.10),
        other="{model}/pretrained-f32-same/global_cv",
    ),
    *[
        claim
        for weights, tag in (("pretrained", "pre"), ("random", "rand"))
        for claim in (
            Claim(
                f"N-compensate-{tag}",
                "beyond the paper: compensation",
                f"K and V compensate: R = Var(H)/(Var(K)+Var(V)) < 1, pooled ({weights}; scale-free)",
                "implied by 'conservation'",
                f"{{model}}/{weights}/null_R",
                Rule("below", 1.0),
            ),
            Claim(
                f"N-shuffle-{tag}",
                "beyond the paper: pairing null",
                f"H is flatter than the same K and V unpaired: V permuted within trajectories, one-sided "
                f"p on pooled R (= p on the global CV) ({weights})",
                "implied by 'conservation'",
                f"{{model}}/{weights}/null_shuffle_p",
                Rule("p_below", 0.05),
            ),
            Claim(
                f"N-scale-{tag}",
                "beyond the paper: scale null",
                f"Conservation (global CV < 13%) survives expressing h in other units, h → c·h for every "
                f"c in {{0.5, 1, 2, 10}} (largest CV) ({weights})",
                "CV < 13%",
                f"{{model}}/{weights}/null_scale_max_cv",
                Rule("below", 0.13),
            ),
            Claim(
                f"N-tokpos-{tag}",
                "beyond the paper: token/position control",
                f"K and V still compensate once produced-token, input-token and position effects are "
                f"removed from K (cross-fitted): R' < 1 ({weights})",
                "—",
                f"{{model}}/{weights}/null_resid_R",
                Rule("below", 1.0),
            ),
            Claim(
                f"N-tokpos-shuffle-{tag}",
                "beyond the paper: token/position control",
                f"… and H' = K_resid + V + mean K is flatter than its unpaired null (p on R') ({weights})",
                "—",
                f"{{model}}/{weights}/null_resid_shuffle_p",
                Rule("p_below", 0.05),
            ),
            Claim(
                f"N-token-r2-{tag}",
                "beyond the paper: token/position control",
                f"The critique: the produced token's identity explains most of K's variance "
                f"(held-out R² > 0.5) ({weights})",
                "public critique",
                f"{{model}}/{weights}/null_r2_token",
                Rule("above", 0.5),
            ),
            Claim(
                f"N-input-r2-{tag}",
                "beyond the paper: token/position control",
                f"The input token x_(t−1), whose position moves h_(t−1) to h_t, explains most of K's "
                f"variance (held-out R² > 0.5) ({weights})",
                "public critique",
                f"{{model}}/{weights}/null_r2_input_token",
                Rule("above", 0.5),
            ),
            Claim(
                f"N-position-r2-{tag}",
                "beyond the paper: token/position control",
                f"Position explains most of K's variance (held-out R² > 0.5) ({weights})",
                "public critique",
                f"{{model}}/{weights}/null_r2_position",
                Rule("above", 0.5),
            ),
        )
    ],
    Claim(
        "N-curvature-gen",
        "beyond the paper: curvature",
        "Trained models straighten trajectories: mean angle between consecutive velocities, "
        "pretrained < random (own greedy generations)",
        "Hosseini & Fedorenko 2023",
        "{model}/pretrained/curvature_deg",
        Rule("less_than"),
        other="{model}/random/curvature_deg",
    ),
    Claim(
        "N-curvature-text",
        "beyond the paper: curvature",
        "Trained models straighten trajectories: pretrained < random on the same article text, "
        "teacher-forced",
        "Hosseini & Fedorenko 2023",
        "{model}/pretrained-teacher/curvature_deg",
        Rule("less_than"),
        other="{model}/random-teacher/curvature_deg",
    ),
    Claim(
        "X-layers",
        "beyond the paper",
        "Conservation is tightest at the last layer (where the paper measures)",
        "—",
        "{model}/pretrained-layers/final_cv",
        Rule("point_less_than"),
        other="{model}/pretrained-layers/min_other_cv",
    ),
]


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class LedgerRow:
    """One evaluated claim."""

    id: str
    model: str
    source: str
    claim: str
    paper: str
    measured: str
    value: float | None
    low: float | None
    high: float | None
    n: int
    verdict: Verdict
    rule: str
    why: str
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_est(m: Estimate | None) -> str:
    if m is None or not math.isfinite(m.value):
        return "not measured"
    if not m.has_ci:
        return f"{m.value:.4g}"
    return f"{m.value:.4g} [{m.low:.4g}, {m.high:.4g}]"


def evaluate(
    measurements: dict[str, Estimate], models: list[str], claims: list[Claim] | None = None
) -> list[LedgerRow]:
    """Apply every claim's rule to the measurements.

    Per-model claims are expanded for each of ``models``; claims whose measurement
    is absent for a model (a condition that was not run) are left out rather than
    reported as failures. Untestable claims always appear.
    """
    rows: list[LedgerRow] = []
    for claim in claims or CLAIMS:
        targets = models if claim.per_model else [""]
        for model in targets:
            key = claim.metric.format(model=model)
            m = measurements.get(key)
            if claim.rule.kind != "untestable" and m is None:
                continue
            if not claim.per_model and any(
                (k.split("/")[0] not in models) for k in [key, claim.other or key] if k != "-"
            ):
                continue
            rule = claim.rule
            paper = claim.paper
            if model in claim.paper_values:
                value = claim.paper_values[model]
                rule = Rule(rule.kind, value, rule.high, rule.tol, rule.factor, rule.reason)
                paper = paper.format(row=PAPER_ROW.get(model, model), value=value)
            other = measurements.get(claim.other.format(model=model)) if claim.other else None
            if rule.kind == "near" and rule.value is None:
                if other is None or not math.isfinite(other.value):
                    continue
                # "keeps the comparison's value": the band is centred on the comparison.
                rule = Rule("near", other.value, None, rule.tol)
            verdict, why = apply_rule(rule, m, other)
            describe = rule.describe()
            if claim.other:
                describe += f"; comparison: {claim.other.format(model=model)} = {_fmt_est(other)}"
            rows.append(
                LedgerRow(
                    id=claim.id,
                    model=model or "—",
                    source=claim.source,
                    claim=claim.statement,
                    paper=paper,
                    measured=_fmt_est(m) if claim.rule.kind != "untestable" else "—",
                    value=json_safe(m.value) if m else None,
                    low=json_safe(m.low) if m else None,
                    high=json_safe(m.high) if m else None,
                    n=m.n if m else 0,
                    verdict=verdict,
                    rule=describe,
                    why=why,
                    metric=key,
                )
            )
    return rows
