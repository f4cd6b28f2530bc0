"""The analyses of ``ppmech verify`` that need the run's model: §C.5 interpolation, Euler–Lagrange
and the per-layer logit lens, on saved hidden states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ppmech import nulls as N
from ppmech.claims import analyses as A
from ppmech.claims.verify.plan import Sizes
from ppmech.claims.verify.store import check_model
from ppmech.mechanics import log_kinetic
from ppmech.models.identity import LoadedModel
from ppmech.runs import Run
from ppmech.statistics import MIN_TRAJECTORIES_FOR_CI, Estimate, require_trajectories


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


def layer_analysis(
    run: Run, lm: LoadedModel, trajectories: int, n_perm: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per-layer K, V, H statistics on the first ``trajectories`` trajectories of a run,
    with each layer's conservation controls (:func:`layer_controls`)."""
    from ppmech.claims.layers import record_layers

    check_model(run, lm)
    traj = run.trajectories.sort_values("trajectory").head(trajectories)
    rec = record_layers(lm, [list(p) for p in traj["prompt_ids"]], [list(g) for g in traj["generated_ids"]])
    table = A.layer_energy_table(rec.logp, rec.speed_sq)
    controls = layer_controls(rec.logp, rec.speed_sq, n_perm, seed)
    table = pd.concat([table, controls], axis=1)
    hidden_dir = run.path / "hidden"
    if hidden_dir.is_dir():
        saved = np.asarray(run.hidden()[: len(traj)], dtype=np.float32)
        table.attrs["last_layer_max_abs_diff"] = float(np.nanmax(np.abs(saved - rec.last_layer_state)))
    return table


def layer_controls(logp: np.ndarray, speed_sq: np.ndarray, n_perm: int, seed: int) -> pd.DataFrame:
    """Per layer: pooled ``R``, its pairing-shuffle band and null CV, and the smallest ``c`` with CV < 13%.

    The shuffle needs :data:`~ppmech.statistics.MIN_TRAJECTORIES_FOR_CI` trajectories; with
    fewer its columns are NaN (the core run's own controls cover the last layer).
    """
    lp = np.asarray(logp, dtype=np.float64)
    k_all = log_kinetic(np.asarray(speed_sq, dtype=np.float64))
    rows = []
    for layer in range(lp.shape[0]):
        parts = [np.column_stack([k_all[layer, i], -lp[layer, i]]) for i in range(lp.shape[1])]
        vp = N.valid_pairs(parts)
        pooled = np.concatenate(vp) if vp else np.empty((0, 2))
        row = {
            "R": N.compensation_ratio(pooled),
            "null R low": float("nan"),
            "null R high": float("nan"),
            "null CV": float("nan"),
            "13% holds for c >": N.threshold_scale(pooled),
        }
        if sum(len(p) > 0 for p in vp) >= MIN_TRAJECTORIES_FOR_CI:
            tests = N.pairing_shuffle(parts, n_perm, seed)
            row["null R low"] = tests["R"].null_low
            row["null R high"] = tests["R"].null_high
            row["null CV"] = tests["global_cv"].null_mean
        rows.append(row)
    return pd.DataFrame(rows)


def layer_estimates(layers: pd.DataFrame, n: int) -> dict[str, Estimate]:
    """The per-layer table's figures the ledger reads (keys ``layers_*``): last layer's CV and
    controls, and the smallest CV of the other layers."""
    last = layers.iloc[-1]
    out = {
        "layers_final_cv": Estimate(float(last["global_cv"]), n=n),
        "layers_min_other_cv": Estimate(float(layers["global_cv"].iloc[:-1].min()), n=n),
    }
    mean, cv = layers["mean_H"].to_numpy(np.float64), layers["global_cv"].to_numpy(np.float64)
    for c in N.UNIT_RANGE:
        # h → c·h adds 2 ln c to each layer's H: its std stays, its mean moves.
        scaled = cv * mean / (mean + 2.0 * np.log(c))
        out[f"layers_final_cv_c{c:g}"] = Estimate(float(scaled[-1]), n=n, note=f"last layer, h → {c:g}·h")
        out[f"layers_min_other_cv_c{c:g}"] = Estimate(float(np.nanmin(scaled[:-1])), n=n)
    if "R" in layers:
        out["layers_final_R"] = Estimate(float(last["R"]), n=n, note="pooled R at the last layer")
        out["layers_final_null_R"] = Estimate(
            float("nan"), float(last["null R low"]), float(last["null R high"]), n, "shuffle band"
        )
        out["layers_final_null_cv"] = Estimate(float(last["null CV"]), n=n)
        out["layers_final_c_min"] = Estimate(float(last["13% holds for c >"]), n=n)
    diff = layers.attrs.get("last_layer_max_abs_diff")
    if diff is not None:
        out["layers_last_layer_max_abs_diff"] = Estimate(float(diff), note="vs recorded h_t")
    return out
