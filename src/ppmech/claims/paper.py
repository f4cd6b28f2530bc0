"""The paper's own figures and words that the ledger needs: Table 1 and Table 5 as printed, its
internal inconsistencies, and the definitions the ledger uses. Data, no measurement."""

from __future__ import annotations

import numpy as np

from ppmech.claims.scaling import implied_sample_size

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
