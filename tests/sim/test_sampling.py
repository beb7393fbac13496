from __future__ import annotations

import numpy as np
import pytest

from finsecure.sim.sampling import AliasTable, sorted_times, stable_order


def test_alias_table__draws_follow_weights() -> None:
    weights = np.array([5.0, 0.0, 1.0, 4.0, 10.0])
    draws = AliasTable.build(weights).sample(np.random.default_rng(1), 200_000)
    shares = np.bincount(draws, minlength=5) / len(draws)
    assert np.allclose(shares, weights / weights.sum(), atol=0.005)
    assert shares[1] == 0.0


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [1.0, -1.0], [1.0, np.inf]])
def test_alias_table__rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        AliasTable.build(np.array(weights))


def test_stable_order__equals_stable_argsort() -> None:
    rng = np.random.default_rng(2)
    ts = np.concatenate([np.sort(rng.integers(0, 1_000, 500)), np.sort(rng.integers(0, 1_000, 300))])
    assert np.array_equal(stable_order(ts), np.argsort(ts, kind="stable"))
    assert stable_order(np.zeros(0, dtype=np.int64)).tolist() == []


def test_sorted_times__in_range_and_sorted() -> None:
    ts = sorted_times(np.random.default_rng(3), 10_000, 1_000, 2_000)
    assert (np.diff(ts) >= 0).all()
    assert ts.min() >= 1_000
    assert ts.max() < 2_000
