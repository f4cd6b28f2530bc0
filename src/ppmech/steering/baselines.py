"""Baselines for Jacobian steering: the same target probability reached by a logit bias, a random
direction and the target's unembedding row, compared by ‖δh‖, KL and ΔH (as in
:mod:`ppmech.steering.algorithm`).
"""

from __future__ import annotations

import pandas as pd
import torch

from ppmech.models.architectures import Readout
from ppmech.steering.algorithm import (
    SteeringResult,
    analytic_direction,
    autograd_direction,
    energy_change,
    kl_divergence,
    readout_line,
    target_logp,
)

__all__ = ["baseline_comparison", "baseline_table"]


def _reach_along(
    readout: Readout,
    h: torch.Tensor,
    u: torch.Tensor,
    targets: torch.Tensor,
    goal_logp: torch.Tensor,
    grid_factor: float = 1.5,
    grid_points: int = 60,
    bisect_iters: int = 40,
) -> torch.Tensor:
    """Smallest step ``s`` on a geometric grid, refined by bisection, with ``ln p_{t*}(h + s u) >= goal``.

    ``u`` is ``[B, d]`` unit directions. The grid starts at ``1e-4 ‖h‖`` and grows by
    ``grid_factor``; the first grid point at or above the goal is bisected against
    the one before it. Rows that never reach the goal on the grid get NaN (along a
    fixed line ``p_{t*}`` can peak below the goal).
    """
    line_logp = readout_line(readout, targets)(h, u)

    base = (h.norm(dim=-1) * 1e-4).clamp_min(1e-8)
    lo = torch.zeros_like(base)
    hi = torch.full_like(base, float("nan"))
    s = base.clone()
    with torch.no_grad():
        for _ in range(grid_points):
            open_rows = torch.isnan(hi)
            if not bool(open_rows.any()):
                break
            lp = line_logp(s)
            hit = open_rows & (lp >= goal_logp)
            hi = torch.where(hit, s, hi)
            lo = torch.where(open_rows & ~hit, s, lo)
            s = s * grid_factor
        found = ~torch.isnan(hi)
        hi_f = torch.where(found, hi, lo)
        for _ in range(bisect_iters):
            mid = 0.5 * (lo + hi_f)
            lp = line_logp(mid)
            up = lp >= goal_logp
            hi_f = torch.where(found & up, mid, hi_f)
            lo = torch.where(found & ~up, mid, lo)
    return torch.where(found, hi_f, torch.full_like(hi_f, float("nan")))


def baseline_comparison(
    readout: Readout,
    h: torch.Tensor,
    targets: torch.Tensor,
    result: SteeringResult,
    h_prev: torch.Tensor | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare Jacobian steering with three baselines at the same target probability.

    For every row, each method is tuned to reach the ``p_{t*}`` that Algorithm 1
    reached (``result.p_after``) from the same state ``h``:

    * ``jacobian``: Algorithm 1 itself (``result``);
    * ``logit bias``: add ``b`` to the target's logit, ``b = ln(p*(1-p)/(p(1-p*)))``
      (closed form; ``h`` does not move, so ‖δh‖ is undefined);
    * ``random direction``: ``h + s u`` with ``u`` a seeded Gaussian unit vector, its
      sign chosen so that ``u·g > 0``;
    * ``unembedding row``: ``h + s W_{t*}/‖W_{t*}‖``.

    ``s`` comes from :func:`_reach_along`. Rows Algorithm 1 did not steer (already
    at η, or a negative target) are dropped.

    Returns:
        long frame: ``row, method, reached, delta_norm, kl, delta_H, p_after``;
        ``kl`` is KL(natural‖steered) over the whole vocabulary (nats), ``delta_H``
        as in :mod:`ppmech.steering.algorithm` (NaN without ``h_prev``).
    """
    h = h.detach().float()
    keep = (result.steps > 0).cpu()
    rows = torch.nonzero(keep)[:, 0]
    if rows.numel() == 0:
        return pd.DataFrame(columns=["row", "method", "reached", "delta_norm", "kl", "delta_H", "p_after"])
    dev = h.device
    rows_d = rows.to(dev)
    hb = h[rows_d]
    tb = targets.to(dev)[rows_d]
    goal_logp = result.p_after.to(dev)[rows_d].log().float()
    # A hair below the goal so that float32 round-off does not make a row unreachable.
    goal_logp = goal_logp - 1e-6
    lp_nat = readout.log_probs(hb)
    x_nat = lp_nat.argmax(-1)
    prev = h_prev.detach().float().to(dev)[rows_d] if h_prev is not None else None

    def summarise(
        method: str, lp_new: torch.Tensor, h_new: torch.Tensor | None, reached: torch.Tensor
    ) -> dict:
        x_new = lp_new.argmax(-1)
        kl = kl_divergence(lp_nat, lp_new)
        if prev is not None:
            dh = energy_change(
                prev,
                hb,
                h_new if h_new is not None else hb,
                lp_nat.gather(-1, x_nat[:, None])[:, 0],
                lp_new.gather(-1, x_new[:, None])[:, 0],
            )
        else:
            dh = torch.full((len(rows),), float("nan"), dtype=torch.float64)
        norm = (
            (h_new.double() - hb.double()).norm(dim=-1)
            if h_new is not None
            else torch.full((len(rows),), float("nan"), dtype=torch.float64)
        )
        nan = torch.full_like(kl, float("nan"))
        return {
            "row": rows.numpy(),
            "method": method,
            "reached": reached.cpu().numpy(),
            "delta_norm": torch.where(reached.cpu(), norm.cpu(), nan.cpu()).numpy(),
            "kl": torch.where(reached, kl, nan).cpu().numpy(),
            "delta_H": torch.where(reached, dh.to(dev), nan).cpu().numpy(),
            "p_after": torch.where(reached, target_logp(lp_new, tb).double().exp(), nan).cpu().numpy(),
        }

    frames = []
    h_jac = result.hidden.to(dev)[rows_d]
    frames.append(
        summarise("jacobian", readout.log_probs(h_jac), h_jac, torch.ones_like(tb, dtype=torch.bool))
    )

    # Logit bias: closed form in the target's logit, whatever the readout.
    p0 = target_logp(lp_nat, tb).double().exp()
    p_star = result.p_after.to(dev)[rows_d]
    bias = torch.log(p_star * (1 - p0) / (p0 * (1 - p_star))).float()
    logits = readout.logits(hb).clone()
    logits[torch.arange(len(rows), device=dev), tb] += bias
    frames.append(
        summarise("logit bias", torch.log_softmax(logits, -1), None, torch.ones_like(tb, dtype=torch.bool))
    )

    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(hb.shape, generator=gen).to(dev)
    g = (
        analytic_direction(readout, hb, tb)
        if readout.is_affine
        else autograd_direction(readout.log_probs, hb, tb)
    )
    u = u * torch.sign((u * g).sum(-1, keepdim=True)).clamp(min=-1, max=1)
    u = u / u.norm(dim=-1, keepdim=True)
    w = readout.weight[tb]
    w = w / w.norm(dim=-1, keepdim=True)
    for name, direction in (("random direction", u), ("unembedding row", w)):
        s = _reach_along(readout, hb, direction, tb, goal_logp)
        reached = ~torch.isnan(s)
        h_new = hb + torch.nan_to_num(s)[:, None] * direction
        frames.append(summarise(name, readout.log_probs(h_new), h_new, reached))
    return pd.concat([pd.DataFrame(f) for f in frames], ignore_index=True)


def baseline_table(long: pd.DataFrame) -> pd.DataFrame:
    """Summarise :func:`baseline_comparison` in one table.

    Columns: method; ``reached`` (rows that reached the target probability / rows);
    means over each method's reached rows of ‖δh‖, KL(natural‖steered) and ΔH; and
    the median over rows of ``‖δh‖ / ‖δh_jacobian‖`` on the same rows.
    """
    out = []
    jac = long[long["method"] == "jacobian"].set_index("row")["delta_norm"]
    for method, part in long.groupby("method", sort=False):
        ok = part[part["reached"].astype(bool)]
        ratio = (ok.set_index("row")["delta_norm"] / jac.reindex(ok["row"])).dropna()
        out.append(
            {
                "method": method,
                "reached": f"{len(ok)}/{len(part)}",
                "mean ‖δh‖": float(ok["delta_norm"].mean())
                if ok["delta_norm"].notna().any()
                else float("nan"),
                "median ‖δh‖/jacobian": float(ratio.median()) if len(ratio) else float("nan"),
                "mean KL(nat‖steered)": float(ok["kl"].mean()) if len(ok) else float("nan"),
                "mean ΔH": float(ok["delta_H"].mean()) if len(ok) else float("nan"),
            }
        )
    return pd.DataFrame(out)
