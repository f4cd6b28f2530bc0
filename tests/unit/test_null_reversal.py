"""The time-reversal null (``ppmech.nulls.reversal``): hand-computed cases, synthetic series with known
answers, and its place in the registry and the ledger (added as one module and this test)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ppmech import nulls as N
from ppmech.claims.catalogue import CLAIMS
from ppmech.nulls.reversal import reverse_v


def _steps(parts: list[np.ndarray]) -> pd.DataFrame:
    rows = [
        {"trajectory": i, "step": t, "K": k, "V": v}
        for i, p in enumerate(parts)
        for t, (k, v) in enumerate(p)
    ]
    return pd.DataFrame(rows)


def test_reverse_v_by_hand() -> None:
    kv = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    np.testing.assert_array_equal(reverse_v(kv), [[1.0, 30.0], [2.0, 20.0], [3.0, 10.0]])
    # K = 1, 2, 3 against V = 3, 2, 1: H is constant, R = 0; reversed, H = 2, 4, 6 and R = 2.
    kv = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert N.compensation_ratio(kv) == 0.0
    assert N.compensation_ratio(reverse_v(kv)) == pytest.approx(2.0)


def test_step_by_step_compensation_beats_reversal_and_independence_does_not() -> None:
    rng = np.random.default_rng(0)
    paired, independent = [], []
    for _ in range(20):
        v = rng.gamma(2.0, 1.0, size=60)
        paired.append(np.column_stack([7.0 - (v - 2.0) + 0.1 * rng.normal(size=60), v]))
        independent.append(np.column_stack([7.0 + rng.normal(size=60), rng.gamma(2.0, 1.0, size=60)]))
    (model,) = [m for m in N.registry() if m.name == "reversal"]
    for parts, compensates in ((paired, True), (independent, False)):
        steps = _steps(parts)
        est = {**model.compute(steps, n_boot=200, seed=0, n_perm=1).estimates}
        r = N.compensation(parts, n_boot=200)["pooled"]
        if compensates:
            assert r.high < est["null_reversal_R"].low  # the recorded pairing is far flatter
        else:
            assert est["null_reversal_R"].low < 1.0 < est["null_reversal_R"].high
            assert not r.high < est["null_reversal_R"].low


def test_registered_once_with_its_column_and_ledger_rows() -> None:
    names = [m.name for m in N.registry()]
    assert names.count("reversal") == 1 and names[-1] == "reversal"  # order 50: after the others
    assert ("R, V reversed", "null_reversal_R") in [(c.header, c.key) for c in N.columns()]
    ids = [c.id for c in CLAIMS]
    assert "N-reversal-pre" in ids and "N-reversal-rand" in ids
    claim = next(c for c in CLAIMS if c.id == "N-reversal-pre")
    assert claim.metric == "{model}/pretrained/null_R" and claim.other == "{model}/pretrained/null_reversal_R"
