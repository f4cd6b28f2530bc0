"""Shared pieces of the null models: valid (K, V) pairs, the flatness statistics of ``H = K + V``
under any pairing, the permutation-test result, and the null-model protocol and registry.

Pure math (float64, numpy); no model is loaded anywhere in :mod:`ppmech.nulls`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ppmech.statistics import Estimate

F64 = NDArray[np.float64]

MIN_STEPS = 3
"""A per-trajectory variance ratio needs at least this many valid steps."""

#: Relative tolerance under which a permuted statistic counts as equal to the observed one
#: (summation order differs between permutations; equal values must count as "as extreme").
TIE_RTOL = 1e-10


# --------------------------------------------------------------------------- inputs


def split_by_trajectory(steps: pd.DataFrame, columns: Sequence[str]) -> list[np.ndarray]:
    """Per-trajectory ``[n_i, len(columns)]`` float64 arrays in step order.

    Nulls read as NaN. Trajectories appear in ascending id.
    """
    ordered = steps.sort_values(["trajectory", "step"], kind="stable")
    values = np.column_stack([ordered[c].astype("float64").to_numpy(na_value=np.nan) for c in columns])
    traj = ordered["trajectory"].to_numpy()
    cuts = np.flatnonzero(np.diff(traj)) + 1
    return list(np.split(values, cuts))


def kv_parts(steps: pd.DataFrame) -> list[np.ndarray]:
    """Per trajectory ``[n_i, 2]`` (``K``, ``V``) of a ``steps.parquet`` frame, in step order."""
    return split_by_trajectory(steps, ["K", "V"])


def valid_pairs(parts: Sequence[np.ndarray]) -> list[F64]:
    """Per trajectory, the ``[n_i, 2]`` rows of (``K``, ``V``) where both are finite.

    Args:
        parts: per trajectory ``[n_i, 2]`` arrays of (``K``, ``V``) in step order
            (e.g. :func:`ppmech.claims.analyses.split_by_trajectory` of ``["K", "V"]``).
    """
    out = []
    for p in parts:
        a = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        out.append(a[np.isfinite(a).all(axis=1)])
    return out


def mean_of_parts(a: np.ndarray) -> float:
    """Mean of one-value-per-trajectory parts (already finite by construction)."""
    return float(np.mean(a)) if np.size(a) else float("nan")


def compensation_ratio(kv: np.ndarray) -> float:
    """``Var(K + V) / (Var(K) + Var(V))`` over the rows of ``[n, 2]`` (K, V), ddof 0.

    NaN with fewer than 2 rows or when ``K`` and ``V`` are both constant.
    """
    a = np.asarray(kv, dtype=np.float64).reshape(-1, 2)
    if a.shape[0] < 2:
        return float("nan")
    den = float(a[:, 0].var() + a[:, 1].var())
    return float((a[:, 0] + a[:, 1]).var() / den) if den > 0 else float("nan")


def per_trajectory_ratios(parts: Sequence[np.ndarray]) -> F64:
    """``R_i`` of every trajectory with at least :data:`MIN_STEPS` valid steps (others NaN)."""
    return np.array(
        [compensation_ratio(p) if len(p) >= MIN_STEPS else float("nan") for p in valid_pairs(parts)],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class NullTest:
    """An observed statistic against its permutation distribution.

    Attributes:
        statistic: what was compared, in words.
        observed: the statistic on the recorded pairing.
        null_mean, null_sd: mean and standard deviation (ddof 1) of the permuted statistics.
        null_low, null_high: their 2.5% and 97.5% quantiles.
        p_value: one-sided ``(1 + #{null ≤ observed}) / (1 + B)`` (small = flatter than chance).
        effect_size: ``(observed − null_mean) / null_sd`` (negative = flatter; NaN if sd is 0).
        n_permutations: ``B``.
        n_trajectories: trajectories that entered.
        seed: the permutation seed.
    """

    statistic: str
    observed: float
    null_mean: float
    null_sd: float
    null_low: float
    null_high: float
    p_value: float
    effect_size: float
    n_permutations: int
    n_trajectories: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }

    def p_estimate(self) -> Estimate:
        """The p-value as an :class:`Estimate` without a CI (its error is Monte Carlo only)."""
        return Estimate(self.p_value, n=self.n_trajectories, note=f"permutation p of {self.statistic}")


def padded_pairs(parts: Sequence[np.ndarray]) -> tuple[F64, F64, NDArray[np.bool_]]:
    """Valid (``K``, ``V``) steps packed to the left of ``[N, T]`` arrays (NaN after).

    Returns:
        ``K``, ``V`` and ``mask`` (True on valid steps), each ``[N, T]`` with ``T``
        the most valid steps of any trajectory.
    """
    vp = valid_pairs(parts)
    width = max((len(p) for p in vp), default=0)
    k = np.full((len(vp), width), np.nan)
    v = np.full((len(vp), width), np.nan)
    for i, p in enumerate(vp):
        k[i, : len(p)] = p[:, 0]
        v[i, : len(p)] = p[:, 1]
    return k, v, np.isfinite(k)


def flatness(k: F64, v: F64, mask: NDArray[np.bool_]) -> dict[str, F64]:
    """Pooled and per-trajectory flatness statistics of ``H = K + V`` for ``[B, N, T]`` pairings.

    Every pairing ``b`` must hold the same values per trajectory (``v[b]`` a
    within-row permutation of ``v[0]``); ``k``/``v`` hold zeros where ``mask`` is
    False. Returns ``[B]`` arrays:
    ``global_cv``, ``R``, ``mean_trajectory_cv``, ``mean_trajectory_R``.
    """
    m = mask.astype(np.float64)
    n_i = m.sum(-1)  # [N]
    n = n_i.sum()
    # Centre by the pooled means (unchanged by any within-trajectory permutation) so that
    # the variances below do not cancel large squares. Pooled means and variances of K
    # and V are the same for every pairing: read them off the first.
    mk = float((k[0] * m).sum() / n)
    mv = float((v[0] * m).sum() / n)
    kc, vc = (k - mk) * m, (v - mv) * m
    hc = kc + vc
    var_h = (hc * hc).sum((-1, -2)) / n - (hc.sum((-1, -2)) / n) ** 2
    var_k = float((kc[0] * kc[0]).sum() / n - (kc[0].sum() / n) ** 2)
    var_v = float((vc[0] * vc[0]).sum() / n - (vc[0].sum() / n) ** 2)
    mean_h = mk + mv
    den = var_k + var_v
    # Per trajectory (identical for every pairing: sums of K and V per row are fixed).
    ok = n_i >= MIN_STEPS
    safe = np.where(n_i > 0, n_i, 1.0)
    row_h = hc.sum(-1) / safe  # [B, N] centred means
    row_var_h = (hc * hc).sum(-1) / safe - row_h**2
    row_mean_h = row_h + mean_h
    row_kc = kc.sum(-1) / safe
    row_vc = vc.sum(-1) / safe
    row_var_k = (kc * kc).sum(-1) / safe - row_kc**2
    row_var_v = (vc * vc).sum(-1) / safe - row_vc**2
    row_den = row_var_k + row_var_v
    cv_ok = ok & (row_mean_h != 0)
    r_ok = ok & (row_den > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_cv = np.sqrt(np.maximum(row_var_h, 0.0)) / row_mean_h
        row_r = np.maximum(row_var_h, 0.0) / row_den
    nan = np.full(var_h.shape, np.nan)

    def mean_over(ok_b: NDArray[np.bool_], values: F64) -> F64:
        count = ok_b.sum(-1)  # [B]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.where(ok_b, values, 0.0).sum(-1) / np.maximum(count, 1), np.nan)

    return {
        "global_cv": np.sqrt(np.maximum(var_h, 0.0)) / mean_h if mean_h != 0 else nan,
        "R": np.maximum(var_h, 0.0) / den if den > 0 else nan,
        "mean_trajectory_cv": mean_over(np.broadcast_to(cv_ok, row_cv.shape), row_cv),
        "mean_trajectory_R": mean_over(np.broadcast_to(r_ok, row_r.shape), row_r),
    }


STATISTIC_NAMES = {
    "global_cv": "global CV of H (pooled)",
    "R": "pooled compensation ratio R",
    "mean_trajectory_cv": "mean over trajectories of CV(H_i)",
    "mean_trajectory_R": "mean over trajectories of R_i",
}


def null_test(what: str, observed: float, dist: F64, n_traj: int, seed: int) -> NullTest:
    if not math.isfinite(observed):
        nan = float("nan")
        return NullTest(what, nan, nan, nan, nan, nan, nan, nan, len(dist), n_traj, seed)
    d = dist[np.isfinite(dist)]
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    mean = float(d.mean()) if d.size else float("nan")
    tol = TIE_RTOL * max(abs(observed), 1e-300)
    p = (1 + int(np.sum(d <= observed + tol))) / (1 + d.size)
    effect = (observed - mean) / sd if sd > 0 else float("nan")
    lo, hi = (float(q) for q in np.percentile(d, [2.5, 97.5])) if d.size else (math.nan, math.nan)
    return NullTest(what, observed, mean, sd, lo, hi, float(p), effect, len(dist), n_traj, seed)


# --------------------------------------------------------------------------- protocol and registry


@dataclass(frozen=True)
class Column:
    """One column of the per-run null-model table: header, measurement key (after ``model/condition/``),
    and whether the cell shows the CI."""

    header: str
    key: str
    ci: bool = True


@dataclass(frozen=True)
class ClaimSpec:
    """A ledger row a null model contributes, as plain data (the claims catalogue builds its ``Claim``).

    Every text field may use ``{weights}`` (``pretrained``/``random``) and ``{tag}``
    (``pre``/``rand``); ``metric`` and ``other`` also keep ``{model}`` for the ledger.
    ``rule`` is a :mod:`ppmech.claims.rules` kind with its ``value``.
    """

    id: str
    source: str
    statement: str
    paper: str
    metric: str
    rule: str
    value: float | None = None
    other: str | None = None


@dataclass
class NullResult:
    """What a null model computed on one run: estimates keyed ``null_*`` and optional tables."""

    estimates: dict[str, Estimate]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


class NullModel(Protocol):
    """A null model or confounder control over one run's stored steps.

    Attributes:
        name: short identifier (``pairing``, ``scale``, ...).
        alters: what it permutes, rescales or removes, in words.
        order: position in the registry (tables, ledger rows); lower first.
        columns: its columns of the per-run null-model table.
        claims: its ledger rows (rules fixed before measuring).
    """

    name: str
    alters: str
    order: int
    columns: tuple[Column, ...]
    claims: tuple[ClaimSpec, ...]

    def compute(self, steps: pd.DataFrame, *, n_boot: int, seed: int, n_perm: int) -> NullResult:
        """Estimates (keys start with ``null_``) from a ``steps.parquet`` frame."""
        ...


_REGISTRY: dict[str, NullModel] = {}


T = TypeVar("T")


def register(cls: type[T]) -> type[T]:
    """Class decorator: add one instance of a :class:`NullModel` to the registry (by ``name``)."""
    model = cast(NullModel, cls())
    if model.name in _REGISTRY and type(_REGISTRY[model.name]) is not cls:
        raise ValueError(f"two null models are named {model.name!r}")
    _REGISTRY[model.name] = model
    return cls


def registered() -> Mapping[str, NullModel]:
    """The null models registered so far (see :func:`ppmech.nulls.registry`, which imports them all)."""
    return _REGISTRY
